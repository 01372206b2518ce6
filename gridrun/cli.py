"""``gridrun`` command line: thin — parse arguments, call one function, turn user errors into one line + exit 2."""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from gridrun.errors import GridrunError

__all__ = ["main"]


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="experiment YAML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one spec value, e.g. --set train.lr=1e-4 (repeatable; merges deeply)",
    )


def _load(args: argparse.Namespace):
    from gridrun.spec import load_spec

    overrides = list(args.overrides)
    if getattr(args, "address", None):
        overrides.append(f"resources.address={args.address}")
    if getattr(args, "tracking_uri", None):
        overrides.append(f"tracking.uri={args.tracking_uri}")
    spec = load_spec(args.spec, overrides)
    from gridrun.sources import absolute_sources
    from gridrun.validate import absolute_uri

    # shown and recorded absolute: the same store wherever a later command (report, ui, resume) runs, and the
    # same inputs wherever a trial runs (Ray runs each in its own folder)
    tracking = spec.tracking.model_copy(update={"uri": absolute_uri(spec.tracking.uri)})
    return absolute_sources(spec.model_copy(update={"tracking": tracking}))


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load(args)
    from gridrun.validate import check_memory, check_spec, preflight

    # offline checks always (builtin and local data are cheap to read, and a format mismatch costs days);
    # --deep adds reachability: hub ids at their revisions, the MLflow server, the Ray address, GPUs
    unchecked = check_spec(spec)
    if args.deep:
        preflight(spec)
    n = len(spec.search.space)
    print(
        f"ok: {spec.name} — {n} searched value{'s' * (n != 1)}, {spec.search.num_trials} trials, "
        f"objective {spec.objective.mode} on {spec.objective.metric}"
    )
    memory = check_memory(spec, deep=args.deep, hub=args.deep)  # checked above; the estimate, to print
    if memory:
        print(memory)
    if unchecked and not args.deep:
        print(f"not checked offline (hub ids; --deep resolves them): {', '.join(unchecked)}")
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    import logging

    from gridrun.launch import launch

    logging.basicConfig(level=logging.WARNING, format="gridrun: %(message)s")
    spec = _load(args)
    text = Path(args.spec).read_text()
    if args.overrides:
        text += "\n# overrides: " + " ".join(args.overrides) + "\n"
    return _exit_code(launch(spec, spec_yaml=text))


def cmd_prepare(args: argparse.Namespace) -> int:
    from gridrun.prepare import prepare

    target = prepare(args.spec, args.out, overrides=list(args.overrides))
    print(f"wrote {target} (run it offline: HF_HUB_OFFLINE=1 gridrun launch {target})")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    import logging

    from gridrun.launch import resume

    logging.basicConfig(level=logging.WARNING, format="gridrun: %(message)s")
    return _exit_code(resume(args.experiment, resume_errored=args.resume_errored, restart_errored=args.restart_errored))


def _exit_code(summary: dict) -> int:
    """130 (as for Ctrl-C) when the experiment was interrupted: its summary says how to continue; 1 when every
    trial failed (a script or CI job must not read that as success; the table above says why each failed)."""
    if summary.get("interrupted"):
        return 130
    trials = summary.get("trials") or []
    if trials and all(t.get("status") == "ERROR" for t in trials):
        print(f"gridrun: every trial failed ({len(trials)}): see the stopped-by column and the trials' errors above")
        return 1
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from gridrun.finish import sync

    done = sync(args.experiment)
    closed = "; experiment closed in MLflow" if done["closed"] else ""
    print(f"wrote {done['written']} pending MLflow writes{closed}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from gridrun.export import export

    out = export(args.experiment, args.out, trial=args.trial, merge=args.merge)
    print(f"wrote {'merged model' if args.merge else 'adapter'} to {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from gridrun.compare import compare, format_comparison

    print(format_comparison(compare(args.experiment, trial=args.trial, n=args.n)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from gridrun.report import format_summary, load_summary
    from gridrun.validate import absolute_uri, check_store_exists, check_tracking_uri

    if args.from_mlflow:
        from gridrun.tracking import summary_from_mlflow  # imports Ray Tune (seconds): only where it is needed

        uri = absolute_uri(args.tracking_uri)
        check_store_exists(uri)  # read-only: never create an empty store here
        check_tracking_uri(uri)
        summary = summary_from_mlflow(uri, args.from_mlflow)
    elif args.experiment:
        summary = load_summary(args.experiment)
    else:
        raise GridrunError("report: give an experiment folder, or --from-mlflow PARENT_RUN_ID")
    print(format_summary(summary))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import os
    import shutil

    from gridrun.validate import absolute_uri, check_store_exists

    uri = absolute_uri(args.tracking_uri)
    check_store_exists(uri)  # `mlflow ui` would create an empty store and show nothing
    exe = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    cmd = [
        exe,
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    print(f"MLflow UI on http://127.0.0.1:{args.port} for {uri} (Ctrl-C to stop)")
    os.execv(exe, cmd)
    return 0  # pragma: no cover


#: Where a launch's outputs land, for every help text that needs to say it.
_OUTPUTS = """outputs (relative to the folder you run in, unless the spec says otherwise):
  gridrun_results/<name>-<stamp>/   trials, checkpoints, summary, report plots   (tracking.storage)
  mlruns.db                         MLflow runs, metrics, adapters' registry     (tracking.uri)"""

_EXAMPLE = """example:
  gridrun validate search_spaces/forgetting.yaml
  gridrun launch search_spaces/forgetting.yaml --set search.num_trials=4 --set train.lr=1e-4
  gridrun report gridrun_results/<name>-<stamp>      gridrun ui   (MLflow UI on http://127.0.0.1:5000)"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gridrun")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridrun",
        description="Forgetting-aware QLoRA hyperparameter search.",
        epilog=f"{_EXAMPLE}\n\n{_OUTPUTS}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gridrun {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "launch",
        help="run an experiment (Ray Tune + Optuna + ASHA, recorded in MLflow)",
        description="Run an experiment: Ray Tune + Optuna + ASHA over QLoRA trials, recorded in MLflow.",
        epilog=f"example:\n  gridrun launch search_spaces/forgetting.yaml --set search.num_trials=4\n\n{_OUTPUTS}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _spec_args(p)
    p.add_argument("--address", help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, sqlite:///mlruns.db)")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("validate", help="check an experiment file without running anything")
    _spec_args(p)
    p.add_argument(
        "--deep",
        action="store_true",
        help="also resolve hub models and datasets, and check MLflow and Ray reachability and GPUs",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("prepare", help="fetch every hub model and dataset a spec reads into a folder, for offline use")
    _spec_args(p)
    p.add_argument("--out", required=True, help="folder to fill; the prepared spec is written there as <name>.yaml")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("resume", help="continue an interrupted experiment (same trials, same MLflow runs)")
    p.add_argument("experiment", help="experiment folder (printed at the start and end of launch)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume-errored", action="store_true", help="continue errored trials from their checkpoint")
    g.add_argument("--restart-errored", action="store_true", help="rerun errored trials from scratch")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("sync", help="write to MLflow what an experiment could not while its server was away")
    p.add_argument("experiment", help="experiment folder")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("export", help="write a trial's adapter (or merged model) to a folder")
    p.add_argument("experiment", help="experiment folder")
    p.add_argument("--trial", help="trial id (default: the best trial)")
    p.add_argument("--out", required=True, help="destination folder (must be empty or absent)")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base model's weights")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compare", help="base model vs a trial's adapter, completions side by side")
    p.add_argument("experiment", help="experiment folder")
    p.add_argument("--trial", help="trial id (default: the best trial)")
    p.add_argument("-n", type=int, default=8, help="number of evaluation prompts (default 8)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="print the summary of a finished experiment folder")
    p.add_argument("experiment", nargs="?", help="experiment folder (printed at the end of launch)")
    p.add_argument("--from-mlflow", metavar="PARENT_RUN_ID", help="read the summary from MLflow instead")
    p.add_argument("--tracking-uri", default="sqlite:///mlruns.db", help="MLflow tracking URI (with --from-mlflow)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="open the MLflow UI on 127.0.0.1")
    p.add_argument("--tracking-uri", default="sqlite:///mlruns.db", help="MLflow backend store")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except GridrunError as e:
        print(f"gridrun: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("gridrun: interrupted", file=sys.stderr)
        return 130
    finally:
        if argv is None:  # the command line itself, about to exit
            # The interpreter's last garbage collection walks every object torch, transformers, Ray and MLflow
            # made (2-3 s after a launch, measured); what the command wrote is closed by now, so skip it.
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
