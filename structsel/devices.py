"""`--devices all|N`: its validation and the 1-D mesh over the local devices, written once
for `structsel sweep` (the run axis "runs") and `structsel search` (the data axis "data")."""
from __future__ import annotations

import numpy as np


def check_devices(devices, *, error: type[Exception] = ValueError):
    """None, "all" or an int >= 1 (also its text, e.g. from the command line); `error`
    naming the allowed values otherwise."""
    if devices is None or devices == "all":
        return devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 1:
        raise error(f"devices must be 'all' or an int >= 1, got {devices!r}")
    return int(devices)


def local_mesh(devices, axis: str, *, error: type[Exception] = ValueError):
    """The 1-D mesh `axis` over `devices` local devices ("all" or an int; None: no mesh),
    with Auto axis types (jit partitions around sharding constraints)."""
    import jax
    from jax.sharding import AxisType

    if devices is None:
        return None
    local = jax.local_devices()
    n = len(local) if devices == "all" else devices
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(local):
        raise error(f"devices must be 'all' or an int in 1..{len(local)} (local devices), "
                    f"got {devices!r}")
    return jax.make_mesh((int(n),), (axis,), axis_types=(AxisType.Auto,), devices=local[:n])


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; os.cpu_count off Linux)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_cpu_cores() -> int | None:
    """One jax CPU device per usable core (`jax_num_cpu_devices`), set before jax starts its
    backends: independent trainings (a search's restarts, the retraining of its candidates)
    then run side by side, one device each (`run_mesh`), instead of one after the other on
    a single device whose small kernels keep one core busy. Entry points call it (the CLI,
    the benchmarks); a library import never does. Returns the count set, or None when
    nothing was changed: one usable core, the count already set in XLA_FLAGS, or jax's
    backends already initialised. Accelerators are unaffected (only the CPU client's
    device count changes)."""
    import os

    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    cores = usable_cores()
    if cores < 2:
        return None
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return None
    jax.config.update("jax_num_cpu_devices", cores)
    return cores


def run_mesh(num_runs: int):
    """The 1-D mesh "runs" over d local devices of the default backend, d the largest
    count <= the local devices that divides `num_runs` (each device gets num_runs / d
    runs); None when d is 1 (one device, or a prime number of runs above the devices)."""
    import jax
    from jax.sharding import AxisType

    local = jax.local_devices()
    d = max(k for k in range(1, min(len(local), num_runs) + 1) if num_runs % k == 0) \
        if num_runs >= 1 else 1
    if d < 2:
        return None
    return jax.make_mesh((d,), ("runs",), axis_types=(AxisType.Auto,), devices=local[:d])


def balance(costs, devices: int) -> np.ndarray:
    """Assignment of len(costs) jobs to `devices` equal slots (len(costs) a multiple of
    `devices`): the longest-processing-time rule, each job (by decreasing cost) to the
    device with the least load and a free slot. Returns the job order, device-major:
    positions [i * m, (i + 1) * m) (m = len(costs) / devices) are device i's jobs."""
    costs = np.asarray(costs, float)
    n = len(costs)
    if devices < 1 or n % devices:
        raise ValueError(f"the jobs ({n}) must split evenly over devices ({devices})")
    m = n // devices
    load, slots = np.zeros(devices), [[] for _ in range(devices)]
    for j in np.argsort(-costs, kind="stable"):
        free = [i for i in range(devices) if len(slots[i]) < m]
        i = min(free, key=lambda i: (load[i], i))
        slots[i].append(int(j))
        load[i] += costs[j]
    return np.asarray([j for s in slots for j in s], dtype=np.int64)
