"""Run parallelism over local devices (`structsel.devices`) and its use by the Evaluator."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from structsel import devices
from structsel.search import enumeration, runner


def test_balance_is_the_longest_processing_time_rule():
    # by hand: 12 -> d0, 9 -> d1, 8 -> d1 (17), 5.5 -> d0 (17.5), 4 -> d1 (21), the zeros
    # fill the free slots; device-major order, m = 4 slots each
    order = devices.balance([4, 5.5, 9, 8, 12, 0, 0, 0], 2)
    np.testing.assert_array_equal(order, [4, 1, 5, 6, 2, 3, 0, 7])
    assert sorted(order) == list(range(8))
    np.testing.assert_array_equal(devices.balance([3, 1, 2], 1), [0, 2, 1])
    with pytest.raises(ValueError, match="split evenly"):
        devices.balance([1, 2, 3], 2)


def test_run_mesh_takes_the_largest_device_count_that_divides_the_runs():
    if jax.local_device_count() < 4:
        pytest.skip("needs 4 devices (conftest emulates them)")
    assert devices.run_mesh(8).size == 4 and devices.run_mesh(6).size == 3
    assert devices.run_mesh(2).size == 2 and devices.run_mesh(2).axis_names == ("runs",)
    assert devices.run_mesh(1) is None and devices.run_mesh(7) is None  # 7 is prime


def test_use_cpu_cores_gives_one_device_per_core_before_jax_starts():
    # a fresh process without XLA_FLAGS: as many CPU devices as usable cores (none added
    # on one core); with the count already in XLA_FLAGS (as here, conftest) nothing changes
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = ("from structsel import devices; n = devices.use_cpu_cores(); import jax; "
            "print(n, jax.device_count(), len(__import__('os').sched_getaffinity(0)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    n, count, cores = out
    assert int(count) == int(cores) and n == (cores if int(cores) > 1 else "None")
    assert devices.use_cpu_cores() is None  # XLA_FLAGS sets the count in the test session


def test_the_evaluator_split_over_devices_gives_the_numbers_of_one_device(monkeypatch):
    # Oracle: the unsharded program (train_structures under jit on one device, the
    # structures in the caller's order). The Evaluator reorders the structures by cost
    # (devices.balance) over 4 devices and puts the rows back: equal to float32
    # reassociation (rtol 1e-6; measured bit-identical on this CPU).
    if jax.local_device_count() < 4:
        pytest.skip("needs 4 devices (conftest emulates them)")
    from structsel.data import make_dataset

    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 4))
    y = (x[:, 0] - x[:, 2] > 0).astype(np.int64)
    budget = runner.parse_budget("tabular,train_steps=20,warmup_steps=2,eval_every=5,width=4,"
                                 "retrain_width=0,dropout=0.1")
    problem = runner.make_problem(make_dataset(x, y, name="t"), "tabular", budget)
    keys = jax.random.split(jax.random.key(3), 2)
    choices = np.array([[0, 0, 0], [3, 3, 3], [1, 0, 2], [4, 2, 0], [2, 2, 2]], np.int32)
    got = runner.Evaluator(problem)(choices, keys, outputs=True)
    space, task = problem.space, problem.task
    padded = np.concatenate([choices, choices[-1:].repeat(3, 0)])
    want = jax.jit(lambda s, k, d: enumeration.train_structures(
        space.family, task, budget.train, s, d, keys=k, outputs=True,
        valid=np.arange(8) < 5))(space.vertex(padded), keys, problem.data)
    for k in ("val_metric", "test_metric", "train_loss", "val_out"):
        np.testing.assert_allclose(got[k], np.asarray(want[k])[:5], rtol=1e-6, atol=1e-7)


def test_a_structure_trains_the_same_in_a_call_with_fewer_structures():
    # The screening's trials on cross-validated tables retrain 2 of the candidates
    # (runner.SCREENING_CANDIDATES) with the candidates' keys and padded batch size: each
    # structure's outputs must not depend on which others share its call, so the trial's
    # decision is the one the call with every candidate made (session 33). Oracle: the
    # call with all five (rtol 1e-6: float32 reassociation across device splits).
    from structsel.data import make_dataset

    rng = np.random.default_rng(2)
    x = rng.normal(size=(90, 4))
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    budget = runner.parse_budget("tabular,train_steps=20,warmup_steps=2,eval_every=5,width=4,"
                                 "retrain_width=0,dropout=0.1")
    problem = runner.make_problem(make_dataset(x, y, name="t"), "tabular", budget)
    keys = jax.random.split(jax.random.key(4), 2)
    choices = np.array([[0, 0, 0], [3, 3, 3], [1, 0, 2], [4, 2, 0], [2, 2, 2]], np.int32)
    evaluator = runner.Evaluator(problem)
    every = evaluator(choices, keys, outputs=True)
    two = evaluator(choices[[3, 1]], keys, outputs=True, size=evaluator.batch_size(5))
    for k in ("val_metric", "test_metric", "val_out", "test_out"):
        np.testing.assert_allclose(two[k], np.asarray(every[k])[[3, 1]], rtol=1e-6,
                                   atol=1e-7)


def test_a_specialised_evaluator_gives_the_numbers_of_the_program_of_every_structure():
    # `Evaluator(specialise=True)` (the runner's retraining) trains each structure with a
    # program of its own, in threads; oracle: the program of every structure (a switch
    # per edge in lax.map), with a column mask, the checkpoints' outputs and a duplicate
    # row, rows in the caller's order. The same ops on the same keys, fused otherwise:
    # equal to float32 reassociation over 20 steps (rtol 1e-5).
    from structsel.data import make_dataset

    rng = np.random.default_rng(5)
    x = rng.normal(size=(90, 4))
    y = (x[:, 0] - x[:, 1] * x[:, 3] > 0).astype(np.int64)
    budget = runner.parse_budget("tabular,train_steps=20,warmup_steps=2,eval_every=5,width=4,"
                                 "retrain_width=0,dropout=0.1")
    problem = runner.make_problem(make_dataset(x, y, name="t"), "tabular", budget)
    keys = jax.random.split(runner.prng_key(6), 2)
    choices = np.array([[4, 2, 0], [0, 0, 0], [3, 3, 3], [0, 0, 0]], np.int32)
    kwargs = dict(outputs=True, columns=[0, 1, 3])
    want = runner.Evaluator(problem, val_path=True)(choices, keys, **kwargs)
    special = runner.Evaluator(problem, val_path=True, specialise=True)
    got = special(choices, keys, **kwargs)
    assert set(got) == set(want) and special.count == len(choices) * len(keys)
    for k in ("val_metric", "test_metric", "train_loss", "val_out", "test_out", "val_path",
              "stop_step"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(got["val_out"][1], got["val_out"][3])  # one training
