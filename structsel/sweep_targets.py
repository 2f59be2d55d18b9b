"""What `structsel sweep` can sweep: the targets, their grid keys and how a group runs.

A target declares its grid keys (`Key`: a parser that validates a value, a default, and
whether the key is *static*, i.e. changes the compiled program) and a `run_group` that
runs a list of runs sharing every static key. Three kinds:

- `glm_toy` (`GlmToy`): the thesis' GLM toy as ONE jitted, vmapped program per static
  group. The lambda coefficients, lambda_temp, the ARD switch and the Adam learning rate
  (`optax.inject_hyperparams`, so it lives in the optimiser state) are traced per run;
  the run axis is sharded over the devices of a `jax.sharding.Mesh` and the group is
  advanced with `structsel.loop.run_chunks`, checkpointed as one pytree.
- `search` (`Search`): `structsel search` with its flags as keys; the seeds of a
  setting are one group: a gradient search runs them as ONE compiled program vmapped
  over the seeds and their data splits (`runner.run_search_many`), then retrains and
  writes each run's own workdir; other methods loop over `run_search`. The compiled
  programs are shared through the search's `ProgramCache` / trainer cache. The group's
  search checkpoints in the sweep's checkpoints/ folder (every chunk of outer steps, or
  `checkpoint_every`), so a resumed sweep continues an interrupted search where it
  stopped; with `--devices`, each search splits the rows of its minibatches over the
  devices (data parallelism).
- any other experiment of `experiments/` (`Experiment`): its `Config` fields as keys
  (plus `smoke`). An experiment with `run_many` and `TRACED` (two_layer_digits, vae_ard,
  relaxations, complexity) runs
  each group (runs agreeing on every non-traced key) as one `run_many` call: one program
  vmapped over the runs; the others loop over `main`.

Entry-point layer (like `structsel.search.runner`): it owns the jit boundary.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

EXPERIMENTS = ("complexity", "enumeration_demo", "evidence_vs_truth", "hypergradients",
               "relaxations", "simplex_densities", "two_layer_digits", "vae_ard")


# ------------------------------------------------------------------------ grid keys
@dataclasses.dataclass(frozen=True)
class Key:
    """A grid key: `parse(value)` validates (str from the command line, or a Python value)
    and returns the canonical value; `static` keys split the runs into compiled groups."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    static: bool
    help: str = ""


def _is_none(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == "none")


def _number(name, *, kind=float, minimum=None, positive=False, none_ok=False):
    def parse(value):
        if none_ok and _is_none(value):
            return None
        raw = value
        if isinstance(value, str):
            try:
                raw = json.loads(value)
            except json.JSONDecodeError:
                raw = None
        ok = (isinstance(raw, (int, float)) and not isinstance(raw, bool)
              and math.isfinite(raw) and (kind is float or float(raw).is_integer())
              and not (minimum is not None and raw < minimum) and not (positive and raw <= 0))
        if not ok:
            what = "an int" if kind is int else "a finite number"
            bound = " > 0" if positive else (f" >= {minimum}" if minimum is not None else "")
            extra = " or none" if none_ok else ""
            raise ValueError(f"grid key {name} must be {what}{bound}{extra}, got {value!r}")
        return kind(raw)
    return parse


def _choice(name, allowed, *, none_ok=False):
    def parse(value):
        if none_ok and _is_none(value):
            return None
        if value not in allowed:
            raise ValueError(f"grid key {name} must be one of {sorted(allowed)}, got {value!r}")
        return value
    return parse


def _boolean(name):
    def parse(value):
        table = {"true": True, "1": True, "false": False, "0": False}
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in table:
            return table[value.lower()]
        raise ValueError(f"grid key {name} must be true or false, got {value!r}")
    return parse


def _text(name):
    def parse(value):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"grid key {name} must be a non-empty string, got {value!r}")
        return value.strip()
    return parse


# ------------------------------------------------------------------------ group context
@dataclasses.dataclass
class GroupEnv:
    """What the sweep gives a target's `run_group`: the device mesh (None: default device),
    a checkpoint directory and fingerprint for the group, each run's own directory, and
    `progress(steps_done, steps_total)` for the progress bar."""

    mesh: Any
    checkpoint_dir: pathlib.Path | None
    checkpoint_every: int | None
    fingerprint: dict
    run_dirs: list
    progress: Callable[[int, int], None] = lambda done, total: None


# ------------------------------------------------------------------------ GLM toy
def _repo_experiments():
    """Imports the `experiments` package (repository root on sys.path if needed)."""
    try:
        return importlib.import_module("experiments")
    except ModuleNotFoundError:
        root = pathlib.Path(__file__).resolve().parent.parent
        if not (root / "experiments" / "__init__.py").exists():
            raise ValueError("the experiment targets need the structsel repository checkout "
                             "(experiments/ next to structsel/)") from None
        sys.path.insert(0, str(root))
        return importlib.import_module("experiments")


def _glm_module():
    """experiments/glm.py (the GLM machinery; experiments/glm_toy.py before it moved)."""
    _repo_experiments()
    try:
        return importlib.import_module("experiments.glm")
    except ModuleNotFoundError:
        return importlib.import_module("experiments.glm_toy")


class GlmToy:
    """The GLM toy (experiments/glm_toy.py): grid over lambdas, lambda_temp, lr, ARD."""

    name = "glm_toy"
    vectorised = True
    metrics = ("mass_f0", "mass_f1", "mass_f2", "inner_loss", "outer_loss")
    keys = {k.name: k for k in (
        Key("lik_q", _number("lik_q", minimum=0.0), 1.0, False, "lambda_lik^Q"),
        Key("prior_q", _number("prior_q", minimum=0.0), 1.0, False, "lambda_prior^Q"),
        Key("prior_l", _number("prior_l", minimum=0.0), 1.0, False, "lambda_prior^L"),
        Key("temperature", _number("temperature", positive=True), 1.0, False, "lambda_temp"),
        Key("lr", _number("lr", positive=True), 0.01, False, "Adam step of theta and h"),
        Key("fixed_log_alpha", _number("fixed_log_alpha", none_ok=True), -10.0, False,
            "log A after the warm-up (none: learned)"),
        Key("iterations", _number("iterations", kind=int, minimum=1), 1000, True,
            "outer steps"),
        Key("warmup", _number("warmup", kind=int, minimum=0), 500, True, "warm-up steps"),
        Key("chunk", _number("chunk", kind=int, minimum=1), 100, True,
            "steps per compiled call (progress, checkpoints)"),
        Key("num_samples", _number("num_samples", kind=int, minimum=1), 3, True,
            "Monte Carlo samples r"),
        Key("num_objects", _number("num_objects", kind=int, minimum=2), 50, True, "m"),
        Key("noise", _number("noise", minimum=0.0), 0.5, True, "data noise std"),
        Key("data_seed", _number("data_seed", kind=int, minimum=0), 0, True, "seed of x, y"),
        Key("fast_compile", _boolean("fast_compile"), False, True,
            "XLA -O0 (smoke runs: compile fast, run slower)"),
    )}

    def check(self, setting: Mapping[str, Any]) -> None:
        if setting["iterations"] % setting["chunk"]:
            raise ValueError(f"grid key iterations ({setting['iterations']}) must be a "
                             f"multiple of chunk ({setting['chunk']})")

    def run_group(self, settings: Sequence[dict], seeds: Sequence[int], env: GroupEnv
                  ) -> list[dict]:
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        from structsel.loop import run_chunks

        s0 = settings[0]
        program = glm_program(**{k: s0[k] for k in ("iterations", "warmup", "chunk",
                                                    "num_samples", "fast_compile")})
        n = len(settings)
        ndev = 1 if env.mesh is None else env.mesh.size
        size = -(-n // ndev) * ndev                     # pad the run axis to a multiple
        index = list(range(n)) + [n - 1] * (size - n)
        rows = [settings[i] for i in index]
        traced = program.settings(rows)
        x, y = glm_data(s0["num_objects"], s0["noise"], s0["data_seed"])
        states = program.init(np.asarray([seeds[i] for i in index]), traced, x)
        if env.mesh is not None:
            runs = NamedSharding(env.mesh, PartitionSpec("runs"))
            rep = NamedSharding(env.mesh, PartitionSpec())
            states, traced = jax.device_put((states, traced), runs)
            x, y = jax.device_put((x, y), rep)
        chunk_fn = program.chunk_for(env.mesh)
        start = time.perf_counter()
        chunk_fn.lower(states, traced, x, y).compile()   # jit reuses this compilation below
        compile_s = time.perf_counter() - start
        checkpointer = None
        if env.checkpoint_dir is not None:
            from structsel.checkpoint import Checkpointer
            every = env.checkpoint_every or s0["chunk"]
            checkpointer = Checkpointer(env.checkpoint_dir, every=every, fingerprint={
                **env.fingerprint, "padded_runs": size, "devices": ndev})
        total = s0["iterations"]
        try:
            states, hist, info = run_chunks(
                chunk_fn, states, num_steps=total, chunk=s0["chunk"], args=(traced, x, y),
                checkpointer=checkpointer, history_axis=1, progress=False,
                on_chunk=lambda step, st, h: env.progress(step, total))
        finally:
            if checkpointer is not None:
                checkpointer.close()
        run_s = time.perf_counter() - start - compile_s
        theta = np.asarray(jax.device_get(states.params["struct"][0]))[:n]
        mass = np.exp(theta - theta.max(-1, keepdims=True))
        mass /= mass.sum(-1, keepdims=True)
        hist = {k: np.asarray(v)[:n] for k, v in jax.device_get(hist).items()}
        out = []
        for i in range(n):
            bad = hist["bad_step"][i][hist["bad_step"][i] >= 0]
            status = "ok" if not bad.size else f"diverged at step {int(bad[0])}"
            row = {f"mass_f{j}": float(mass[i, j]) for j in range(mass.shape[-1])}
            for k in ("inner_loss", "outer_loss"):
                row[k] = float(hist[k][i, -1]) if status == "ok" else math.nan
            out.append({"metrics": row, "status": status, "compile_s": compile_s,
                        "run_s": run_s, "resumed_from": info.get("resumed_from")})
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class GlmProgram:
    """The pieces of one static GLM group: `init(seeds, traced, x)` and the vmapped
    chunk `run_chunk(states, traced, x, y) -> (states, per-chunk summary)` (`chunk_for`
    jits it for a mesh)."""

    trainer: Any
    objective: Any
    module: Any
    run_chunk: Any
    init_fn: Any
    fast_compile: bool

    @functools.lru_cache(maxsize=8)
    def chunk_for(self, mesh):
        """jit(run_chunk), or with a mesh jit(shard_map(run_chunk)): each device runs the
        same vmapped program on its slice of the run axis (no collectives)."""
        import jax
        from jax.sharding import PartitionSpec as P

        if mesh is None:
            return self.module.jit(self.run_chunk, self.fast_compile)
        runs = P("runs")
        return self.module.jit(jax.shard_map(self.run_chunk, mesh=mesh,
                                             in_specs=(runs, runs, P(), P()),
                                             out_specs=(runs, runs), check_vma=False),
                               self.fast_compile)

    def settings(self, rows: Sequence[dict]):
        """The traced per-run settings (a glm_toy.Setting of arrays) and learning rates."""
        g = self.module
        fix = [r["fixed_log_alpha"] is not None for r in rows]
        s = g.stack_settings([g.Setting(r["lik_q"], r["prior_q"], r["prior_l"],
                                        r["temperature"], np.zeros(0), f,
                                        r["fixed_log_alpha"] if f else 0.0)
                              for r, f in zip(rows, fix)])
        s = s._replace(struct=np.zeros((len(rows), 0), np.float32))
        return {"setting": s, "lr": np.asarray([r["lr"] for r in rows], np.float32)}

    def init(self, seeds, traced, x):
        """States of the runs: seed s -> PRNGKey(s) (init_many splits it), lr per run."""
        import jax
        keys = jax.vmap(jax.random.PRNGKey)(np.asarray(seeds, np.uint32))
        return self.init_fn(keys, traced["lr"], x)


def glm_data(num_objects: int, noise: float, data_seed: int):
    """The GLM toy's (x, y) (an argument of the program, not a constant in it)."""
    import jax.numpy as jnp

    from structsel.data import glm_toy
    x, y = glm_toy(seed=data_seed, num_objects=num_objects, num_features=11, noise=noise)
    return jnp.asarray(x), jnp.asarray(y)


@functools.lru_cache(maxsize=16)
def glm_program(*, iterations, warmup, chunk, num_samples, fast_compile) -> GlmProgram:
    """Builds (once per static setting) the GLM trainer and its jitted functions; groups
    that differ only in the data (same shapes) share the compiled program."""
    import jax
    import jax.numpy as jnp
    import optax

    from structsel.bilevel import BilevelTrainer, traced_optimizer, with_hyperparams

    g = _glm_module()
    objective = g.glm_objective(12, num_samples=num_samples)
    inner, outer = g.make_losses(objective)
    # lr traced per run (in the optimiser state); the update is bit for bit
    # optax.adam(lr)'s (tests/test_sweep.py)
    adam = traced_optimizer(optax.adam, "learning_rate")
    trainer = BilevelTrainer(inner, outer, adam, adam, warmup_steps=warmup,
                             structure_fn=lambda p, h, c: p["struct"][0])

    def init(keys, lrs, x):
        states = trainer.init_many(lambda k: objective.init(k, x), keys)
        lr = {"learning_rate": lrs}
        return states.replace(inner_opt_state=with_hyperparams(states.inner_opt_state, lr),
                              outer_opt_state=with_hyperparams(states.outer_opt_state, lr))

    def one(state, setting, xx, yy):
        state, h = trainer.run(state, (xx, yy, setting), (xx, yy, setting), chunk)
        bad = jnp.where(h["diverged"], h["step"], jnp.iinfo(jnp.int32).max).min()
        ok = ~h["diverged"][-1]
        summary = {"inner_loss": jnp.where(ok, h["inner_loss"][-1], 0.0)[None],
                   "outer_loss": jnp.where(ok, h["outer_loss"][-1], 0.0)[None],
                   "bad_step": jnp.where(ok, -1, bad)[None]}
        return state, summary

    def run_chunk(states, traced, xx, yy):
        return jax.vmap(one, in_axes=(0, 0, None, None))(states, traced["setting"], xx, yy)

    return GlmProgram(trainer, objective, g, run_chunk, g.jit(init, fast_compile),
                      fast_compile)


# ------------------------------------------------------------------------ search
class Search:
    """`structsel search` runs: its flags (and the budget's fields) as grid keys."""

    name = "search"
    checkpoints_runs = True   # a group's search checkpoints under GroupEnv.checkpoint_dir
    groups_seeds = True       # the seeds of a setting are one group (one vmapped search)
    metrics = ("val_metric", "test_metric", "regret", "rank", "params", "num_evaluations",
               "search_time_s")

    @functools.cached_property
    def keys(self) -> dict[str, Key]:
        from structsel.data import SKLEARN_SETS
        from structsel.search import runner

        keys = [Key("dataset", _choice("dataset", SKLEARN_SETS + ("mnist1d",)), "digits", True),
                Key("space", _choice("space", runner.space_names(), none_ok=True), None, True),
                Key("method", _choice("method", runner.method_names(), none_ok=True), None,
                    True, "search method (default: the space's, spaces.default_method)"),
                Key("relaxation", _choice("relaxation", runner.relaxation_names(),
                                          none_ok=True), None, True),
                Key("budget", _choice("budget", runner.budget_names(), none_ok=True), None,
                    True, "budget preset (default: the dataset's)"),
                Key("kl_weight", _text("kl_weight"), None, True, "c or c1;c2 (a path)"),
                Key("split_seed", _number("split_seed", kind=int, minimum=0, none_ok=True),
                    None, True, "seed of the split (default: the run's seed)"),
                Key("restarts", _number("restarts", kind=int, minimum=1), 1, True,
                    "--seeds of one search (restarts run together)")]
        for f in dataclasses.fields(runner.Budget):
            if f.name == "name":
                continue
            kind = {"int": int, "float": float}.get(f.type)
            parse = (_number(f.name, kind=kind, minimum=0) if kind else _text(f.name))
            keys.append(Key(f.name, parse, None, True, "budget field (default: the preset's)"))
        return {k.name: k for k in keys}

    def check(self, setting: Mapping[str, Any]) -> None:
        self.config(setting, seed=0, workdir="unused")

    def config(self, setting, *, seed, workdir, checkpoint_dir=None, checkpoint_every=None,
               devices=None):
        """The validated `SearchConfig` of one run; with `checkpoint_dir`, a gradient
        search checkpoints there (every `checkpoint_every` outer steps, default every
        chunk) and resumes from what it finds (the sweep refuses a busy workdir without
        --resume). `devices`: the sweep's device count, over which each search splits
        its minibatch rows (`runner.data_mesh`)."""
        from structsel.search import runner
        budget_fields = [f.name for f in dataclasses.fields(runner.Budget) if f.name != "name"]
        preset = setting["budget"] or runner.default_budget(setting["dataset"], setting["space"])
        overrides = "".join(f",{k}={setting[k]}" for k in budget_fields
                            if setting[k] is not None)
        kl = setting["kl_weight"].replace(";", ",") if setting["kl_weight"] else None
        config = runner.search_config(
            dataset=setting["dataset"], space=setting["space"], method=setting["method"],
            relaxation=setting["relaxation"], seed=seed, seeds=setting["restarts"],
            budget=preset + overrides, workdir=str(workdir), split_seed=setting["split_seed"],
            gradient_boosting=False, kl_weights=kl, devices=devices)
        from structsel.search import methods
        if checkpoint_dir is None or not isinstance(methods.METHODS[config.method],
                                                    methods.GradientSearch):
            return config
        return dataclasses.replace(config, checkpoint_every=checkpoint_every or 1,
                                   resume=True, checkpoint_dir=str(checkpoint_dir))

    def run_group(self, settings, seeds, env: GroupEnv) -> list[dict]:
        """The seeds of one setting: a gradient search runs them as ONE program vmapped
        over the seeds and their splits (`runner.run_search_many`, checkpointed as a
        group); other methods one after the other."""
        from structsel.search import runner
        configs = [self.config(setting, seed=seed, workdir=env.run_dirs[i],
                               checkpoint_dir=env.checkpoint_dir,
                               checkpoint_every=env.checkpoint_every,
                               devices=None if env.mesh is None else env.mesh.size)
                   for i, (setting, seed) in enumerate(zip(settings, seeds))]
        summaries = runner.run_search_many(configs, progress=False)
        out = []
        for summary in summaries:
            row = {m: summary.get(m, math.nan) for m in self.metrics}
            row = {k: (float(v) if isinstance(v, (int, float)) else math.nan)
                   for k, v in row.items()}
            out.append({"metrics": row, "status": "ok", "compile_s": math.nan,
                        "run_s": float(summary.get("wall_time_s", math.nan))})
        env.progress(len(settings), len(settings))
        return out


# ------------------------------------------------------------------------ experiments
def _flat_numbers(tree, prefix="") -> dict[str, float]:
    """Numeric scalars of a summary dict, keys joined with '.'."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat_numbers(v, name + "."))
        elif isinstance(v, (bool, np.bool_)):
            out[name] = float(v)
        elif isinstance(v, (int, float, np.integer, np.floating)):
            out[name] = float(v)
        elif hasattr(v, "shape") and np.ndim(v) == 0:
            out[name] = float(np.asarray(v))
    return out


class Experiment:
    """An experiment of experiments/ via its Config fields and main.

    Vectorised-experiment protocol: a module may define `TRACED` (the Config fields that
    are arguments of its compiled programs, not part of them: seed, learning rates, ...)
    and `run_many(argvs) -> [summary]` (main's command lines; one summary per run, each
    run writing its own record as main does). Its TRACED keys are then non-static and
    take numbers only, the runs that agree on every other key are one group, and a group
    is ONE call of run_many (one vmapped program); without run_many, a loop of main.
    """

    metrics = None                       # discovered from the first run's summary.json

    def __init__(self, name: str):
        self.name = name

    @functools.cached_property
    def module(self):
        _repo_experiments()
        return importlib.import_module(f"experiments.{self.name}")

    @property
    def groups_seeds(self) -> bool:
        """Runs differing only in seeds and traced keys are one group (run_many)."""
        return hasattr(self.module, "run_many")

    @functools.cached_property
    def keys(self) -> dict[str, Key]:
        config = self.module.Config
        traced = getattr(self.module, "TRACED", ()) if self.groups_seeds else ()
        keys = {"smoke": Key("smoke", _boolean("smoke"), False, True, "the Config.smoke() run")}
        for f in dataclasses.fields(config):
            if f.name == "seed":
                continue
            if f.name in traced:
                kind = int if f.type in ("int", int) else float
                keys[f.name] = Key(f.name, _number(f.name, kind=kind), None, False,
                                   "Config field, traced (default: the config's)")
            else:
                keys[f.name] = Key(f.name, _json_value(f.name), None, True,
                                   "Config field (default: the config's)")
        return keys

    def check(self, setting) -> None:
        self.config(setting)

    def config(self, setting):
        """The experiment's Config of a setting (its smoke or full defaults, then the keys)."""
        base = self.module.Config.smoke() if setting["smoke"] else self.module.Config()
        changes = {k: v for k, v in setting.items() if k != "smoke" and v is not None}
        return dataclasses.replace(base, **changes)

    def argv(self, setting, seed, workdir, every=None) -> list[str]:
        """main's command line of one run: --workdir, --smoke, --seed and a --set for each
        key given a value other than the config's. An experiment with `checkpoint_unit`
        (its steps per checkpointable chunk) checkpoints every `every` steps (rounded up
        to its unit; default: every chunk) in the run's workdir and resumes from what it
        finds there (the sweep refuses a busy workdir without --resume)."""
        has_seed = any(f.name == "seed" for f in dataclasses.fields(self.module.Config))
        default = self.module.Config.smoke() if setting["smoke"] else self.module.Config()
        argv = ["--workdir", str(workdir)] + (["--smoke"] if setting["smoke"] else [])
        argv += ["--seed", str(seed)] if has_seed else []
        for k, v in setting.items():
            if k != "smoke" and v is not None and v != getattr(default, k):
                argv += ["--set", f"{k}={json.dumps(v)}"]
        if hasattr(self.module, "checkpoint_unit") and setting.get("checkpoint_every") is None:
            unit = self.module.checkpoint_unit(self.config(setting))
            argv += ["--checkpoint-every", str(unit * -(-(every or unit) // unit))]
            if (pathlib.Path(workdir) / "checkpoints").is_dir():
                argv += ["--resume"]
        return argv

    def run_group(self, settings, seeds, env: GroupEnv) -> list[dict]:
        argvs = [self.argv(setting, seed, env.run_dirs[i], env.checkpoint_every)
                 for i, (setting, seed) in enumerate(zip(settings, seeds))]
        if self.groups_seeds:                 # ONE vmapped program for the group
            start = time.perf_counter()
            summaries = self.module.run_many(argvs)
            run_s = (time.perf_counter() - start) / len(argvs)   # amortised over the runs
            env.progress(len(argvs), len(argvs))
            self._drop_checkpoints(env.run_dirs)
            return [{"metrics": self._metrics(s), "status": "ok", "compile_s": math.nan,
                     "run_s": run_s} for s in summaries]
        out = []
        for i, argv in enumerate(argvs):
            start = time.perf_counter()
            summary = self.module.main(argv)
            out.append({"metrics": self._metrics(summary), "status": "ok",
                        "compile_s": math.nan, "run_s": time.perf_counter() - start})
            env.progress(i + 1, len(argvs))
        self._drop_checkpoints(env.run_dirs)
        return out

    @staticmethod
    def _metrics(summary) -> dict[str, float]:
        """The row's metrics: the summary's numeric scalars, less its wall time (the row
        has wall_s; a metric column must be the same when the sweep is run again)."""
        return {k: v for k, v in _flat_numbers(summary).items() if k != "wall_seconds"}

    @staticmethod
    def _drop_checkpoints(run_dirs) -> None:
        """A finished run's checkpoints are not needed (its rows are what is kept)."""
        for d in run_dirs:
            shutil.rmtree(pathlib.Path(d) / "checkpoints", ignore_errors=True)


def _json_value(name):
    def parse(value):
        if not isinstance(value, str):
            return value
        try:
            out = json.loads(value)
        except json.JSONDecodeError:
            return value
        return tuple(tuple(v) if isinstance(v, list) else v for v in out) \
            if isinstance(out, list) else out
    return parse


def target_names() -> list[str]:
    return ["glm_toy", "search", *EXPERIMENTS]


def get_target(name: str):
    """The target object of `name` (ValueError listing the targets otherwise)."""
    if name == "glm_toy":
        return GlmToy()
    if name == "search":
        return Search()
    if name in EXPERIMENTS:
        return Experiment(name)
    raise ValueError(f"target must be one of {target_names()}, got {name!r}")
