"""User-facing errors.

Every mistake a user can make (bad flag, unknown preset, malformed file, illegal plan) raises
`MeshplanError`. Its message is one line that names the field, the value and what is allowed;
the CLI prints it and exits 2. Internal invariants use `assert` instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError


class MeshplanError(ValueError):
    """A user error: bad input, not a bug."""


def invalid(field: str, value: Any, allowed: str) -> MeshplanError:
    """Build the standard one-line error: `field=value: allowed`."""
    return MeshplanError(f"{field}={value!r}: {allowed}")


def unknown_name(kind: str, name: str, known: Iterable[str]) -> MeshplanError:
    """Error for an unknown preset or option name, with the closest known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
    return MeshplanError(f"unknown {kind} {name!r}; {hint}")


def from_validation_error(err: ValidationError, where: str,
                          flags: Callable[[str], str | None] | None = None) -> MeshplanError:
    """Turn pydantic's multi-line report into one line naming each bad field and value; with
    `flags`, a field the user set by a command-line flag is named by that flag (`--recompute`,
    not `plan: recompute`)."""
    parts = []
    flagged = 0
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(root)"
        flag = flags(field) if flags is not None and item["loc"] else None
        if flag is not None and item["type"] not in ("extra_forbidden", "missing"):
            msg = item["msg"].removeprefix("Value error, ")
            parts.append(f"{flag}={item.get('input')!r}: {msg}")
            flagged += 1
            continue
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key {field!r}")
        elif item["type"] == "missing":
            parts.append(f"missing key {field!r}")
        elif not item["loc"] or isinstance(item.get("input"), dict):
            # A whole-object rule: its message names the fields; the input is noise.
            msg = item["msg"].removeprefix("Value error, ")
            parts.append(msg if not item["loc"] else f"{field}: {msg}")
        else:
            parts.append(f"{field}={item.get('input')!r}: {item['msg']}")
    return MeshplanError(("" if flagged == len(parts) else f"{where}: ") + "; ".join(parts))
