"""Write deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/rules/*.yml (one source)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
OUT = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/rules/*.yml by scripts/gen_prometheusrule.py.\n"
    "# Do not edit; regenerate with: python scripts/gen_prometheusrule.py\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as literal blocks, as people write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def load_groups(rules_dir: Path = RULES_DIR) -> list[dict[str, Any]]:
    """Every rule group of every *.yml file, in file-name order; group names must be unique."""
    files = sorted(rules_dir.glob("*.yml"))
    if not files:
        raise SystemExit(f"no rule files in {rules_dir}")
    groups: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for path in files:
        doc = yaml.safe_load(path.read_text()) or {}
        file_groups = doc.get("groups")
        if not isinstance(file_groups, list) or not file_groups:
            raise SystemExit(f"{path}: no `groups` list")
        for group in file_groups:
            name = group.get("name")
            if not name or not group.get("rules"):
                raise SystemExit(f"{path}: every group needs a name and rules")
            if name in seen:
                raise SystemExit(f"{path}: group {name!r} is also in {seen[name]}")
            seen[name] = path
            groups.append(group)
    return groups


def render(groups: list[dict[str, Any]]) -> str:
    """The PrometheusRule manifest (monitoring.coreos.com/v1) holding these groups."""
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "verdict"},
        "spec": {"groups": groups},
    }
    body = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    """Write the manifest, or with --check report whether the committed one is current."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rules-dir", type=Path, default=RULES_DIR)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 when --out is stale")
    args = parser.parse_args(argv)
    text = render(load_groups(args.rules_dir))
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python scripts/gen_prometheusrule.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
