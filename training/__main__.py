"""Command line: `python -m training train CONFIG --out DIR`, `add`, `compare`, `sweep`, `card`,
and the loop from production traffic: `export`, `retrain`, `compare-versions`.

Everything but `--help` and `export` (which reads the feedback store only) needs the `train`
extra (torch, scikit-learn, onnx, ...); without it the command says in one line what to
install and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Top-level modules of the `train` extra (and what they pull in), as import names.
TRAIN_EXTRA = frozenset(
    [
        "torch",
        "onnx",
        "onnxscript",
        "sklearn",
        "scipy",
        "matplotlib",
        "yaml",
        "tqdm",
        "optuna",
        "tensorboard",
    ]
)
UNCHANGED = 3  # exit code of `add` for a model the repository already serves
DEFAULT_STORE = "sqlite:///var/feedback.sqlite3"
CAPTURES_SCHEMA = 2  # the feedback store's schema version that added the captures table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="verdict-train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train, evaluate and export one model version")
    t.add_argument("config", type=Path, help="YAML (.yaml/.yml) or TOML (.toml) config")
    t.add_argument("--out", type=Path, required=True, help="model folder, e.g. models/NAME")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=5 (repeatable)",
    )
    c = sub.add_parser("compare", help="our nets against LogisticRegression and SVC, same folds")
    c.add_argument("configs", type=Path, nargs="+")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--doc", type=Path, default=None, help="write the tables into this markdown")
    s = sub.add_parser("sweep", help="search the config's search: ranges with Optuna")
    s.add_argument("config", type=Path, help="a training config with a search: section")
    s.add_argument("--trials", type=int, default=None, help="trials to run (this session)")
    s.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    s.add_argument(
        "--out", type=Path, default=None, help="sweep folder (default: sweeps/NAME); resumable"
    )
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = sub.add_parser(
        "add",
        help="add a trained version folder to a repository as its next version (no retraining)",
        description="Copy a trained version folder (from `train --out DIR`) into "
        "REPOSITORY/NAME as its next version: the manifest's version is rewritten, every "
        "checksum stays valid, nothing is retrained. Exit 0: added (the new folder is "
        f"printed); {UNCHANGED}: the latest version there already has this model.onnx and "
        "decision, nothing added; 1: the folder is not a sound trained version.",
    )
    a.add_argument("trained", type=Path, help="a trained version folder, e.g. /tmp/run/NAME/1")
    a.add_argument("model_folder", type=Path, help="REPOSITORY/NAME, e.g. models/breast-cancer")
    a.add_argument(
        "--skip-unchanged",
        action="store_true",
        help="exit 0 (and print the latest folder) when the model is unchanged",
    )
    k = sub.add_parser("card", help="(re)write MODEL_CARD.md for trained model versions")
    k.add_argument("versions", type=Path, nargs="+", help="models/NAME/VERSION folders")
    k.add_argument(
        "--rebuild",
        action="store_true",
        help="first recreate holdout.json by retraining (checked against the manifest's sha256)",
    )
    _loop_parsers(sub)
    return p


def _loop_parsers(sub: Any) -> None:
    """The commands of the loop from production traffic (docs/lifecycle.md)."""
    e = sub.add_parser(
        "export",
        help="write a model's labelled production examples (captured inputs + labels) to CSV",
        description="Join the captured inputs of MODEL with their labels in the feedback store "
        "and write them, oldest first, to a CSV file; the newest --holdout-fraction of them "
        "(by capture time) are marked split=holdout, for compare-versions, and never trained on.",
    )
    e.add_argument("model", help="model name, e.g. breast-cancer")
    e.add_argument("--out", type=Path, required=True, help="CSV file to write")
    e.add_argument(
        "--store",
        default=None,
        help=f"feedback store URL (default: $VERDICT_FEEDBACK_URL, else {DEFAULT_STORE})",
    )
    e.add_argument(
        "--repository", type=Path, default=Path("models"), help="model repository (manifests)"
    )
    e.add_argument("--version", type=int, default=None, help="only this model version")
    e.add_argument("--since", default=None, help="captured at or after (ISO 8601 or epoch s)")
    e.add_argument("--until", default=None, help="captured before (ISO 8601 or epoch s)")
    e.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.3,
        help="newest share of rows held out for the offline comparison (default 0.3)",
    )
    r = sub.add_parser(
        "retrain",
        help="train a challenger: the champion's config on its data + production examples",
    )
    r.add_argument("champion", type=Path, help="the champion's version folder, models/NAME/N")
    r.add_argument("--examples", type=Path, required=True, help="a CSV file from export")
    r.add_argument("--out", type=Path, required=True, help="model folder, e.g. /tmp/runs/NAME")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v = sub.add_parser(
        "compare-versions",
        help="champion vs challenger on the export's held-out rows: errors and business cost",
    )
    v.add_argument("champion", type=Path, help="version folder, e.g. models/NAME/1")
    v.add_argument("challenger", type=Path, help="version folder, e.g. /tmp/runs/NAME/1")
    v.add_argument("--examples", type=Path, required=True, help="the CSV file from export")
    v.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report folder (default: the challenger's folder, whose model card gets it)",
    )
    v.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    v.add_argument("--resamples", type=int, default=4000, help="bootstrap resamples")


def _when(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not a time (ISO 8601 or epoch seconds): {text!r}") from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _export(args: argparse.Namespace) -> int:
    # The one place training reads the service's code: the feedback store's public methods
    # (no torch on that side); see docs/lifecycle.md.
    from service.errors import StoreUnavailableError
    from service.monitoring.examples import ExportError, export_examples
    from service.monitoring.stores import describe, missing_sqlite_file, open_store

    url = args.store or os.environ.get("VERDICT_FEEDBACK_URL") or DEFAULT_STORE
    folder = args.repository / args.model
    if (missing := missing_sqlite_file(url)) is not None:  # never created from here
        print(f"error: no SQLite feedback store at {missing}", file=sys.stderr)
        return 1

    def manifest_of(version: int) -> dict[str, Any] | None:
        path = folder / str(version) / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else None

    store = open_store(url)
    store.use_as_is()  # read only: never migrated from here
    try:
        at = store.schema_version()
        if at < CAPTURES_SCHEMA:
            raise ExportError(
                f"the feedback store {describe(url)} is at schema version {at}; captures "
                f"arrived with version {CAPTURES_SCHEMA} (upgrade the service, or run "
                "verdict-store migrate)"
            )
        summary = export_examples(
            store,
            args.model,
            manifest_of,
            args.out,
            version=args.version,
            since=_when(args.since),
            until=_when(args.until),
            holdout_fraction=args.holdout_fraction,
        )
    except (ExportError, StoreUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(
        f"{summary.rows} labelled examples of {args.model} from {describe(url)}: "
        f"{summary.train_rows} to train on, {summary.holdout_rows} held out",
        file=sys.stderr,
    )
    for feature, n in summary.missing.items():
        print(f"warning: {n} rows lack {feature!r} (dropped before storing)", file=sys.stderr)
    print(summary.path)
    return 0


def install_hint() -> str:
    """The command that installs the `train` extra into the Python running this."""
    python = os.path.abspath(sys.executable)  # keep a venv's symlink: its own pip
    cwd = os.getcwd()
    if python.startswith(cwd + os.sep):
        python = os.path.relpath(python, cwd)
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        return f"{python} -m pip install 'verdict[train]'"
    where = "." if root == Path(cwd).resolve() else str(root)
    return f"{python} -m pip install -e '{where}[train]'"


def _add(args: argparse.Namespace) -> int:
    from .repository import add_version

    result = add_version(args.trained, args.model_folder)
    if result.added:
        print(f"added {args.trained} as version {result.version}", file=sys.stderr)
        print(result.path)
        return 0
    print(
        f"unchanged: {result.path} already has this model (same model.onnx sha256 and "
        "decision); nothing added",
        file=sys.stderr,
    )
    if args.skip_unchanged:
        print(result.path)
        return 0
    return UNCHANGED


def _run(args: argparse.Namespace) -> int:
    from .artifact import ArtifactError
    from .config import ConfigError, load_config
    from .data import DataError
    from .export import ExportError
    from .repository import AddError

    try:
        if args.command == "train":
            from .pipeline import run_training

            cfg = load_config(args.config, args.overrides)
            result = run_training(cfg, args.out)
            print(result.path)
        elif args.command == "add":
            return _add(args)
        elif args.command == "export":
            return _export(args)
        elif args.command == "retrain":
            from .production import retrain

            print(retrain(args.champion, args.examples, args.out, args.overrides).path)
        elif args.command == "compare-versions":
            from .offline import REPORT_MD, compare_versions

            report = compare_versions(
                args.champion,
                args.challenger,
                args.examples,
                args.out,
                seed=args.seed,
                resamples=args.resamples,
            )
            print(report["summary"], file=sys.stderr)
            print((args.out or args.challenger) / REPORT_MD)
        elif args.command == "sweep":
            from .sweep import run_sweep

            cfg = load_config(args.config, args.overrides)
            if args.trials is not None and args.trials < 1:
                raise ConfigError("--trials must be at least 1")
            out = args.out or Path("sweeps") / cfg.name
            print(run_sweep(cfg, out, args.trials, args.timeout).out)
        elif args.command == "card":
            from .card import write_card

            for folder in args.versions:
                if args.rebuild:
                    from .card import rebuild_holdout

                    rebuild_holdout(folder, lambda m: print(m, file=sys.stderr, flush=True))
                print(write_card(folder))
        else:
            from .compare import run_compare

            cfgs = [load_config(p, args.overrides) for p in args.configs]
            print(run_compare(cfgs, args.doc))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (DataError, ExportError, ArtifactError, AddError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `verdict-train` and `python -m training`."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in TRAIN_EXTRA:
            raise
        print(
            f"error: verdict-train needs the training extra, which is not installed "
            f"(no module {missing!r}); install it with: {install_hint()}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
