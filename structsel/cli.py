"""The `structsel` command line: `search`, `enumerate` and `retrain`.

    structsel search [--data FILE] [--target COLUMN] [--task classification|regression]
                     [--dataset NAME] [--space NAME] [--method NAME] [--relaxation NAME]
                     [--seed N] [--split-seed N] [--seeds N] [--budget PRESET[,key=value...]]
                     [--no-fallback] [--no-gradient-boosting] [--workdir DIR]
                     [--checkpoint-every STEPS] [--resume] [--devices all|N]
    structsel enumerate --space mlp3 --dataset digits --seeds 3 [--budget ...] [--out FILE]
    structsel retrain --structure FILE [--data FILE ...] [--seed N] [--workdir DIR]
    structsel sweep TARGET --grid KEY=V1,V2,... [--grid ...] --seeds N [--workdir DIR]
                    [--devices all|N] [--resume] [--distributed ...]

Bad data or arguments print one line `structsel: error: ...` on stderr and exit with 2
(no traceback); a selection that loses to the linear model or ignores its input prints
`structsel: warning: ...` lines. Everything else lives in `structsel.search.runner`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys

from structsel import devices as devices_lib
from structsel.bilevel import DivergenceError
from structsel.data import TASKS, DataError
from structsel.runs import RunWriteError


def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum, with a one-line error otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _add_data_args(p: argparse.ArgumentParser, *, seed_help: str, split_help: str) -> None:
    p.add_argument("--data", metavar="FILE",
                   help="CSV (header row; also .tsv / .txt, optionally .gz) or .npz (arrays x, "
                        "y); default: --dataset")
    p.add_argument("--target", metavar="COLUMN", help="label column of the CSV (default: last)")
    p.add_argument("--task", choices=TASKS, help="force the task (default: from the target)")
    p.add_argument("--dataset", metavar="NAME",
                   help="embedded dataset when --data is not given: digits (default), "
                        "breast_cancer, wine, diabetes, mnist1d")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help=seed_help)
    p.add_argument("--split-seed", type=_nonnegative_int, help=split_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the three subcommands."""
    from structsel.search import runner, spaces

    parser = argparse.ArgumentParser(prog="structsel", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("search", help="select a structure and retrain it from scratch")
    _add_data_args(s, seed_help="seed of the train / validation / test split, the "
                                "initialisations and the search (default 0)",
                   split_help="seed of the split alone, overriding --seed for it (e.g. "
                              "--split-seed 0: the split of the enumeration tables)")
    s.add_argument("--space", help=f"search space: {', '.join(runner.space_names())} "
                                   f"(default: {spaces.space_for_dataset('mnist1d')} for "
                                   f"mnist1d, {spaces.space_for_dataset('table')} otherwise)")
    s.add_argument("--method", default=None,
                   help=f"search method: {', '.join(runner.method_names())} (default bayes; "
                        "bayes_inner, its inner structure level alone, on the tabular space)")
    s.add_argument("--relaxation", help="structure relaxation of the gradient methods "
                   f"({', '.join(runner.relaxation_names())}); default: the method's own")
    s.add_argument("--seeds", type=_positive_int, default=1,
                   help="independent restarts of the search, run together; the one with "
                        "the best validation metric is selected (default 1)")
    s.add_argument("--budget",
                   help=f"preset ({', '.join(runner.budget_names())}) optionally followed "
                        "by overrides, e.g. 'small,search_steps=100,train_steps=200' "
                        "(default: 'mnist1d' for mnist1d, else 'default')")
    s.add_argument("--kl-weight", metavar="C[,C...]",
                   help="KL weight c of the Bayesian methods (bayes, bayes_inner, bayes_outer): the ELBO "
                        "at an effective sample size m / c (c = 1: the evidence bound of "
                        "this data set). One value, or a comma list run as a complexity "
                        "path, each selection retrained and the best on validation kept "
                        "(default: the path 1,0.3,0.1,0.03,0.01)")
    s.add_argument("--no-fallback", action="store_true",
                   help="return the selected structure even when it does not beat the "
                        "linear model on validation (the warning is still printed)")
    s.add_argument("--no-gradient-boosting", action="store_true",
                   help="skip the HistGradientBoosting baseline (fitted by default when "
                        "scikit-learn is installed)")
    s.add_argument("--workdir", help="output directory (default "
                                     "results/search/<dataset>_<method>_<seed>)")
    s.add_argument("--checkpoint-every", type=_nonnegative_int, default=0, metavar="STEPS",
                   help="save the gradient search's state every STEPS outer steps (rounded "
                        "up to its chunk) in WORKDIR/checkpoints (default 0: never)")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted search of the same command from its last "
                        "checkpoint (without it, old checkpoints are cleared)")
    s.add_argument("--devices", metavar="all|N",
                   help="split the rows of the gradient search's minibatches over N local "
                        "devices (data parallelism; default: one device)")
    s.set_defaults(func=_search)

    e = sub.add_parser("enumerate", help="train every structure of a space (ground truth)")
    e.add_argument("--space", required=True, help=", ".join(runner.space_names()))
    e.add_argument("--dataset", required=True, help="embedded dataset name")
    e.add_argument("--seeds", type=_positive_int, default=3, help="seeds per structure")
    e.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the split")
    e.add_argument("--budget", help="budget preset and overrides (default as for search)")
    e.add_argument("--out", help="table path (default structsel/data/"
                                 "enumeration_<space>_<dataset>.json)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=_enumerate)

    r = sub.add_parser("retrain", help="rebuild a structure.json and train it from scratch")
    r.add_argument("--structure", required=True, metavar="FILE", help="structure.json")
    _add_data_args(r, seed_help="seed of the initialisations (default 0)",
                   split_help="seed of the split (default: the split the structure was "
                              "selected on, recorded in structure.json)")
    r.add_argument("--seeds", type=_positive_int, default=3, help="training seeds")
    r.add_argument("--budget", default=None,
                   help="budget preset and overrides (default: the budget the structure was "
                        "selected with, recorded in structure.json, else 'default')")
    r.add_argument("--workdir", help="output directory (default: next to the structure)")
    r.set_defaults(func=_retrain)

    w = sub.add_parser("sweep", help="a grid x seeds of runs, vmapped and sharded over devices "
                                     "(docs/sweep.md)")
    w.add_argument("target", help="glm_toy, search, or an experiment of experiments/ "
                                   "(two_layer_digits, ...)")
    w.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values of one key (repeatable; unknown keys list the allowed ones)")
    w.add_argument("--seeds", type=_positive_int, default=1, help="seeds 0..N-1 per setting")
    w.add_argument("--workdir", default="results/sweep", help="output directory "
                                                              "(default results/sweep)")
    w.add_argument("--devices", default=None, metavar="all|N",
                   help="shard the run axis over all or N local devices (default: one)")
    w.add_argument("--resume", action="store_true",
                   help="continue the sweep in --workdir: finished runs kept, interrupted "
                        "groups continue from their last checkpoint")
    w.add_argument("--checkpoint-every", type=_positive_int, metavar="STEPS",
                   help="steps between checkpoints of a group (default: every chunk)")
    w.add_argument("--distributed", action="store_true",
                   help="jax.distributed.initialize() (SLURM auto-detected): each process "
                        "runs its share, process 0 merges the rows")
    w.add_argument("--coordinator", metavar="HOST:PORT", help="coordinator of --distributed")
    w.add_argument("--num-processes", type=_positive_int, help="processes of --distributed")
    w.add_argument("--process-id", type=_nonnegative_int, help="this process' id")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    w.set_defaults(func=_sweep)
    return parser


def _sweep(args) -> int:
    from structsel import sweep
    from structsel.checkpoint import CheckpointError

    try:
        out = sweep.sweep(args.target, args.grid, args.seeds, args.workdir, args.devices,
                          args.resume, distributed=args.distributed,
                          coordinator=args.coordinator, num_processes=args.num_processes,
                          process_id=args.process_id, checkpoint_every=args.checkpoint_every,
                          progress=not args.no_progress)
    except CheckpointError as err:
        raise ValueError(str(err)) from None
    if "table" in out:
        print(out["table"])
        print(f"{out['finished']} of {out['num_runs']} runs finished; wrote "
              f"{out['workdir']}/runs.csv and summary.csv")
    return 0


def _search(args) -> int:
    from structsel.search import runner

    config = runner.search_config(
        data=args.data, target=args.target, task=args.task, dataset=args.dataset,
        space=args.space, method=args.method, relaxation=args.relaxation, seed=args.seed,
        split_seed=args.split_seed, seeds=args.seeds, budget=args.budget,
        workdir=args.workdir, fallback=not args.no_fallback,
        gradient_boosting=not args.no_gradient_boosting, kl_weights=args.kl_weight,
        checkpoint_every=args.checkpoint_every, resume=args.resume, devices=args.devices)
    from structsel.checkpoint import CheckpointError
    try:
        summary = runner.run_search(config, progress=not args.no_progress)
    except CheckpointError as err:  # another run's, partial or corrupt: never restarted
        raise ValueError(f"{err} (rerun without --resume to start afresh)") from None
    print(runner.format_summary(summary))
    for warning in summary.get("warnings", []):
        print(f"structsel: warning: {warning}", file=sys.stderr)
    return 0


def _enumerate(args) -> int:
    from structsel.search import runner

    table, path = runner.run_enumeration(
        space=args.space, dataset=args.dataset, seeds=args.seeds, seed=args.seed,
        budget=args.budget, out=args.out, progress=not args.no_progress)
    print(runner.format_table(table))
    print(f"wrote {path}")
    return 0


def _retrain(args) -> int:
    from structsel.search import retrain

    summary = retrain.run_retrain(
        structure=args.structure, data=args.data, target=args.target, task=args.task,
        dataset=args.dataset, seed=args.seed, split_seed=args.split_seed, seeds=args.seeds,
        budget=args.budget, workdir=args.workdir, progress=not args.no_progress)
    print(retrain.format_retrain(summary))
    return 0


@contextlib.contextmanager
def _persistent_interrupts():
    """While the CLI runs, a Ctrl-C (SIGINT) reaches it even where Python code swallows it.

    Python raises KeyboardInterrupt wherever the main thread is; jax has bare `except:`
    clauses on its tracing and compilation paths (e.g. `except: return False` around
    `operator.index`), a garbage-collection callback (jax registers one) reports it as
    "Exception ignored", and either way the run went on (the SIGINT test failed that way
    in sessions 23 and 30). This handler raises it and, until `main` has caught it, raises
    it again every 0.25 s from a watcher thread (`_thread.interrupt_main`), except while
    the main thread is handling a KeyboardInterrupt already (the cleanup that marks the
    workdir interrupted is not cut short). Installed only from the main thread and only
    over Python's default handler (an ignored SIGINT, under `nohup` or in a background
    job, stays ignored); the default handler and the unraisable hook are restored on
    leaving. Yields `handled()`, which the CLI calls once it has caught the interrupt."""
    import _thread
    import signal
    import threading
    import time

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: None
        return
    lock = threading.RLock()
    state = {"pending": False, "owed": False}  # owed: a redelivery not yet seen

    def redeliver():
        while True:
            time.sleep(0.25)
            with lock:
                if not state["pending"]:
                    return
                state["owed"] = True
                _thread.interrupt_main()

    def handler(signum, frame):
        with lock:
            redelivered, state["owed"] = state["owed"], False
            handling = isinstance(sys.exc_info()[1], KeyboardInterrupt)
            if redelivered and (handling or not state["pending"]):
                return  # caught meanwhile, or its cleanup is running: nothing lost
            if not state["pending"]:
                state["pending"] = True
                threading.Thread(target=redeliver, daemon=True,
                                 name="structsel-interrupt").start()
        raise KeyboardInterrupt

    def handled():
        with lock:
            state["pending"] = False

    previous = sys.unraisablehook

    def quiet(unraisable):  # the watcher delivers it again: no "Exception ignored" noise
        if not (state["pending"] and unraisable.exc_type is not None
                and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            previous(unraisable)
    sys.unraisablehook = quiet
    signal.signal(signal.SIGINT, handler)
    try:
        yield handled
    finally:
        handled()
        sys.unraisablehook = previous
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _compilation_cache() -> None:
    """Persistent XLA cache for the CLI (STRUCTSEL_JAX_CACHE, default ~/.cache/structsel/jax),
    unless the caller (e.g. the test suite) configured one already."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    path = os.environ.get("STRUCTSEL_JAX_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "structsel", "jax"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _check_output_paths(args) -> None:
    """--workdir and the folder of --out must be (or become) directories: no file in the way."""
    paths = [("--workdir", getattr(args, "workdir", None), False),
             ("--out", getattr(args, "out", None), True)]
    for flag, path, is_file in paths:
        if path is None:
            continue
        path = pathlib.Path(path)
        for folder in (path.parents if is_file else (path, *path.parents)):
            if folder.exists() and not folder.is_dir():
                raise ValueError(f"{flag} {path}: {folder} is a file, not a directory")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `structsel` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    devices_lib.use_cpu_cores()  # a CPU host: one device per core, runs side by side
    _compilation_cache()
    with _persistent_interrupts() as interrupt_handled:
        return _run(args, interrupt_handled)


def _run(args, interrupt_handled) -> int:
    """The chosen subcommand, its errors reported as one line with an exit code."""
    try:
        _check_output_paths(args)
        return args.func(args)
    except (DataError, ValueError, FileNotFoundError) as err:
        # Bad data and bad arguments are validated before anything is traced; report them
        # as one line. Errors from inside a computation are not ValueErrors of ours, but a
        # ValueError is what the library raises for a bad argument, so it is a user error.
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"structsel: error: {message}", file=sys.stderr)
        return 2
    except (DivergenceError, FloatingPointError, RunWriteError) as err:  # a run that failed
        print(f"structsel: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        interrupt_handled()
        print("structsel: interrupted; the workdir's status.json says 'interrupted' and it "
              "has no summary.json (with --checkpoint-every, --resume continues it)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
