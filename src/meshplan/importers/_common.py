"""What every reader shares: the result type, reading the file, typed access to its values.

A reader turns one engine's job config into an `ImportedJob`: the Plan fields, the Job fields
and the GPU count the file states, in meshplan's names, plus notes on what it assumed. Every
problem with the file is one `MeshplanError` line naming the file and the key.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshplan.errors import MeshplanError
from meshplan.schedules.registry import SCHEDULE_SPECS

JOB_FIELDS = ("global_batch_size", "seq_len", "precision", "grad_bytes", "flash_attention",
              "token_budget")
"""The `Job` fields a reader may fill; everything else it reads is a `Plan` field."""


@dataclass
class ImportedJob:
    """One engine job config, in meshplan's terms."""

    engine: str
    path: str
    values: dict[str, Any] = field(default_factory=dict)
    """Plan and Job fields by name (`JOB_FIELDS` are the Job's), only those the file states or
    implies; the rest keep meshplan's defaults or the command line's values."""
    num_gpus: int | None = None
    """The world size, when the file says it (a launch line, a meshplan header)."""
    dp_replicas: int = 1
    """Replicas of the ZeRO/FSDP sharding group (HSDP): dp_shard = dp / dp_replicas once the
    data-parallel degree is known (it may come from --num-gpus)."""
    notes: list[str] = field(default_factory=list)
    """What the reader assumed or could not carry, one line each."""

    @property
    def plan(self) -> dict[str, Any]:
        return {k: v for k, v in self.values.items() if k not in JOB_FIELDS}

    @property
    def job(self) -> dict[str, Any]:
        return {k: v for k, v in self.values.items() if k in JOB_FIELDS}


def read_text(path: str | os.PathLike[str], flag: str) -> str:
    """The file's text, or one line saying why it cannot be read."""
    p = Path(path)
    if not p.is_file():
        raise MeshplanError(f"{flag}={str(p)!r}: no such file")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not a text file"
        raise MeshplanError(f"{flag}={str(p)!r}: cannot read ({why})") from None


class Values:
    """Typed reads from one parsed config section; a wrong type is one line naming file and key.
    `get(data, key)` returns None for a missing key (the engine's default applies)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def error(self, key: str, value: Any, allowed: str) -> MeshplanError:
        return MeshplanError(f"{self.where}: {key}={value!r}: {allowed}")

    def typed(self, data: dict[str, Any], key: str, ok: Callable[[Any], bool], allowed: str,
              convert: Callable[[Any], Any] = lambda v: v) -> Any:
        value = data.get(key)
        if value is None:
            return None
        try:
            if ok(value):
                return convert(value)
        except (TypeError, ValueError):
            pass
        raise self.error(key, value, allowed)

    def integer(self, data: dict[str, Any], key: str, minimum: int = 1) -> int | None:
        return self.typed(data, key, lambda v: not isinstance(v, bool) and int(v) == float(v)
                          and int(v) >= minimum, f"expected an integer >= {minimum}", int)

    def number(self, data: dict[str, Any], key: str) -> float | None:
        return self.typed(data, key, lambda v: not isinstance(v, bool) and float(v) > 0,
                          "expected a positive number", float)

    def flag(self, data: dict[str, Any], key: str) -> bool | None:
        return self.typed(data, key, lambda v: isinstance(v, bool), "expected true or false")

    def text(self, data: dict[str, Any], key: str, choices: tuple[str, ...] = ()) -> str | None:
        allowed = f"expected one of {', '.join(choices)}" if choices else "expected a string"
        return self.typed(data, key, lambda v: isinstance(v, str) and (not choices
                                                                       or v in choices), allowed)

    def section(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, value, "expected a table/object")
        return value


def schedule_named(engine_key: str, name: str, where: str) -> str:
    """meshplan's schedule for the engine's name of it (`ScheduleSpec.<engine_key>`)."""
    for spec in SCHEDULE_SPECS:
        if getattr(spec, engine_key) == name:
            return spec.name
    known = ", ".join(str(getattr(s, engine_key)) for s in SCHEDULE_SPECS
                      if getattr(s, engine_key))
    raise MeshplanError(f"{where}: schedule {name!r}: meshplan models {known}")


HEADER = re.compile(r"(\d+) GPUs, global batch (\d+) x (\d+) tokens")
"""The line every meshplan export opens with (`export._common.header`)."""


def header_sizes(text: str) -> tuple[int, int, int] | None:
    """(GPUs, global batch, sequence length) from a meshplan export's header, or None."""
    m = HEADER.search(text)
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def divide(where: str, what: str, a: int, b: int) -> int:
    """a / b when exact, else one line naming the two numbers."""
    if b <= 0 or a % b:
        raise MeshplanError(f"{where}: {what}: {a} is not a multiple of {b}")
    return a // b


def parse_flags(tokens: list[str], where: str) -> dict[str, Any]:
    """`--name value` / `--name=value` / `--switch` -> {name: value or True}; a flag given
    twice keeps the last (as argparse does); nargs lists keep their first value."""
    flags: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--"):
            continue  # a stray value (or the `"$@"` pass-through)
        name, eq, value = token[2:].partition("=")
        if eq:
            flags[name] = value
            continue
        values = []
        while i < len(tokens) and not tokens[i].startswith("--"):
            values.append(tokens[i])
            i += 1
        flags[name] = values[0] if values else True
    if not flags:
        raise MeshplanError(f"{where}: no --flags found; give pretrain_gpt.py's arguments or "
                            "the launch script meshplan export --to megatron writes")
    return flags


def split_arguments(text: str, where: str) -> list[str]:
    """Shell words of a script or args file: line continuations joined, `#` comments dropped."""
    try:
        return shlex.split(re.sub(r"\\\r?\n", " ", text), comments=True)
    except ValueError as err:
        raise MeshplanError(f"{where}: cannot split into arguments ({err})") from None
