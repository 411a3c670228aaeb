"""Launch scripts for serving engines (`export(deployment, "vllm" | "sglang")`)."""

from __future__ import annotations

from meshplan.errors import MeshplanError
from meshplan.serve.deployment import AnyDeployment
from meshplan.serve.export import sglang, vllm

TARGETS = {"vllm": vllm, "sglang": sglang}


def _target(name: str):  # type: ignore[no-untyped-def]
    if name not in TARGETS:
        raise MeshplanError(f"--to={name!r}: one of {', '.join(TARGETS)}")
    return TARGETS[name]


def refuse(d: AnyDeployment, target: str) -> str | None:
    """Why `target` cannot express `d` (None: it can)."""
    return _target(target).refuse(d)  # type: ignore[no-any-return]


def export(d: AnyDeployment, target: str) -> str:
    """The shell script starting `d` on `target`; a one-line MeshplanError when it cannot."""
    return _target(target).script(d)  # type: ignore[no-any-return]


__all__ = ["TARGETS", "export", "refuse"]
