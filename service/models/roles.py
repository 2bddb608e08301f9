"""Which served version of a model answers (the primary) and which one is evaluated beside it
on a sampled share of the same requests (the shadow), and where that is set.

Where a model's roles come from, first found first: the roles the admin API kept in the
feedback store for every process of the deployment (`service.dataplane.roles`); the model's
`models/<name>/roles.json`, written by whoever deploys the models; the `VERDICT_SHADOWS`
setting. The file and the setting give a model its roles until an admin call changes them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROLES_FILE = "roles.json"
# The share of a primary's requests a shadow runs when none is given.
DEFAULT_SAMPLE_RATE = 0.1


@dataclass(frozen=True, slots=True)
class Roles:
    """The roles of one model's versions. `primary` None: the latest served version that is
    not the shadow answers; `shadow` None: nothing is shadowed."""

    primary: int | None = None
    shadow: int | None = None
    sample_rate: float = DEFAULT_SAMPLE_RATE

    def record(self) -> dict[str, Any]:
        """The roles as JSON-ready values."""
        return asdict(self)


NONE = Roles()


def check_rate(rate: Any) -> float:
    """A sample rate in [0, 1], or ValueError."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
        raise ValueError(f"sample_rate must be a number in [0, 1]; got {rate!r}")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"sample_rate must be in [0, 1]; got {rate!r}")
    return float(rate)


def _version(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a version number (an integer >= 1); got {value!r}")
    return value


def roles_from(doc: Any) -> Roles:
    """Roles from the decoded JSON of a roles file, or ValueError."""
    if not isinstance(doc, dict):
        raise ValueError("roles must be a JSON object")
    unknown = set(doc) - {"primary", "shadow", "sample_rate"}
    if unknown:
        raise ValueError(f"unexpected fields in roles: {sorted(unknown)}")
    roles = Roles(
        primary=_version(doc.get("primary"), "primary"),
        shadow=_version(doc.get("shadow"), "shadow"),
        sample_rate=check_rate(doc.get("sample_rate", DEFAULT_SAMPLE_RATE)),
    )
    if roles.shadow is not None and roles.shadow == roles.primary:
        raise ValueError("a version cannot be its model's primary and shadow at once")
    return roles


def parse_shadows(text: str) -> dict[str, Roles]:
    """`VERDICT_SHADOWS`: `name=version[:rate]` pairs, comma-separated (e.g.
    `breast-cancer=2:0.1`), or ValueError."""
    out: dict[str, Roles] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, rest = part.strip().partition("=")
        version, _, rate = rest.partition(":")
        if not sep or not name.strip() or not version.strip().isdigit():
            raise ValueError(f"shadows must be name=version[:rate], comma-separated; got {part!r}")
        try:
            sample_rate = check_rate(float(rate)) if rate.strip() else DEFAULT_SAMPLE_RATE
        except ValueError as exc:
            raise ValueError(f"shadow {part.strip()!r}: {exc}") from None
        if int(version) < 1:
            raise ValueError(f"shadow {part.strip()!r}: the version must be >= 1")
        out[name.strip()] = Roles(shadow=int(version), sample_rate=sample_rate)
    return out


def read_roles(model_folder: Path) -> Roles | None:
    """The roles file of a model folder; None when there is none. A file that cannot be read
    or parsed raises ValueError (what it says is not guessed)."""
    path = model_folder / ROLES_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{ROLES_FILE} cannot be read: {exc.strerror}") from None
    try:
        return roles_from(json.loads(text))
    except json.JSONDecodeError:
        raise ValueError(f"{ROLES_FILE} is not valid JSON") from None


def roles_fingerprint(model_folder: Path) -> tuple[int, int]:
    """mtime and size of the roles file ((0, 0) when absent), for the poller."""
    try:
        st = (model_folder / ROLES_FILE).stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)
