"""Command line: `python -m training train CONFIG --out models/NAME`, `compare`, `sweep`, `card`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .data import DataError
from .export import ExportError


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
    k = sub.add_parser("card", help="(re)write MODEL_CARD.md for trained model versions")
    k.add_argument("versions", type=Path, nargs="+", help="models/NAME/VERSION folders")
    k.add_argument(
        "--rebuild",
        action="store_true",
        help="first recreate holdout.json by retraining (checked against the manifest's sha256)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `verdict-train` and `python -m training`."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            from .pipeline import run_training

            cfg = load_config(args.config, args.overrides)
            result = run_training(cfg, args.out)
            print(result.path)
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
    except (DataError, ExportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
