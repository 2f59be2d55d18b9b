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
