"""Shell completion of flag values (typer's `autocompletion`): preset names for --model and
--cluster, the schedules, the serving engine profiles. Each reads the names where they are
defined, so a new preset completes without a change here."""

from __future__ import annotations

from collections.abc import Callable


def _starting(names: list[str]) -> Callable[[str], list[str]]:
    return lambda incomplete: [n for n in names if n.startswith(incomplete)]


def models(incomplete: str) -> list[str]:
    from meshplan.specs.io import preset_names

    return _starting(preset_names("models"))(incomplete)


def clusters(incomplete: str) -> list[str]:
    from meshplan.specs.io import preset_names

    return _starting(preset_names("clusters"))(incomplete)


def schedules(incomplete: str) -> list[str]:
    from meshplan.schedules.registry import SCHEDULE_SPECS

    return _starting([s.name for s in SCHEDULE_SPECS])(incomplete)


def engines(incomplete: str) -> list[str]:
    from meshplan.serve.engines import engine_names

    return _starting(engine_names())(incomplete)
