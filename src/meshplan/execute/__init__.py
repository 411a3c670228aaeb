"""Prove a plan: run it on torch.distributed, measure it, compare with the prediction.

Everything under `meshplan.execute` needs the `torch` extra; the rest of meshplan never imports
torch (DESIGN.md, "Data flows one way"). Importing this package without torch raises the one-line
`MeshplanError` the CLI turns into exit code 2, instead of a bare `ModuleNotFoundError`.

Modules: `model` (a small Llama-style transformer built from a `Model` spec), `parallelize`
(applies a `Plan` with torch's own DeviceMesh / FSDP2 / DTensor TP / pipelining), `runtime` (the
per-rank training loop), `launch` (torchrun), `calibrate` (measure this machine into a cluster
file).
"""

from __future__ import annotations

from meshplan.errors import MeshplanError

TORCH_MISSING = "the torch extra is not installed: pip install 'meshplan[torch]'"


def require_torch() -> None:
    """Raise MeshplanError when torch cannot be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MeshplanError(TORCH_MISSING) from None


require_torch()
