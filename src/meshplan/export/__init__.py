"""Export a plan to the configuration of a training engine: Megatron-LM, torchtitan, DeepSpeed.

`export(estimate_or_plan, target, model=..., job=...)` returns the text; `TARGETS` lists the
targets. One module per engine, each a pure function of (model, job, plan, cluster).
"""

from meshplan.export.api import SUFFIXES, TARGETS, export

__all__ = ["SUFFIXES", "TARGETS", "export"]
