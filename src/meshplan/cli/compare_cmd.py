"""`meshplan compare PLAN PLAN ...`: two or more plans of one job side by side.

Each PLAN is `key=value` Plan fields joined by commas (`tp=2,pp=2,recompute=full`; dp fills
--num-gpus when left out); with --from-ENGINE the job read from that file is the first column.
The table gives each plan's step time, throughput and memory, then every time and memory term,
with the change against the first plan (`compare.difference`, as `plan --explain` uses it).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer

from meshplan.cli.options import Inputs, with_inputs
from meshplan.cli.render import compare_table, console, print_json
from meshplan.compare import difference
from meshplan.errors import MeshplanError
from meshplan.output import envelope
from meshplan.specs.plan import Plan

ALIASES = {"zero": "zero_stage", "mbs": "micro_batch_size", "sp": "sequence_parallel"}
"""Short spellings a PLAN may use for Plan fields (as the CLI flags --zero, --sp...)."""


def parse_plan(text: str) -> dict[str, Any]:
    """`tp=2,pp=2,sp=false` -> Plan keyword arguments (values typed as the flags would be)."""
    fields: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key = ALIASES.get(key.strip(), key.strip())
        if not eq or key not in Plan.model_fields:
            known = ", ".join([*Plan.model_fields, *ALIASES])
            raise MeshplanError(f"plan {text!r}: {part!r} is not key=value with a plan field "
                                f"({known})")
        value = value.strip()
        if value.lower() in ("true", "false"):
            fields[key] = value.lower() == "true"
        elif value.isdigit():
            fields[key] = int(value)
        else:
            fields[key] = value
    return fields


def register(app: typer.Typer) -> None:
    @app.command("compare")
    @with_inputs(plan_flags=False, imports=True)
    def compare_command(inputs: Inputs,
                        plans: Annotated[list[str] | None, typer.Argument(
                            help="Plans as key=value,... (e.g. tp=2,pp=2 tp=8,zero=3)")] = None,
                        json_out: Annotated[bool, typer.Option(
                            "--json", help="Print JSON instead of a table")] = False) -> None:
        """Compare two or more plans of one job: time and memory, term by term."""
        from meshplan import api

        chosen = [inputs.plan()] if inputs.imported is not None else []
        for text in plans or []:
            flags = {**{k: None for k in inputs.plan_flags}, **parse_plan(text)}
            if isinstance(flags.get("axis_order"), tuple):
                flags["axis_order"] = "-".join(flags["axis_order"])
            chosen.append(dataclasses.replace(inputs, plan_flags=flags).plan())
        if len(chosen) < 2:
            raise MeshplanError("compare needs two or more plans (PLAN arguments, or one with "
                                "--from-ENGINE)")
        estimates = [api.estimate(inputs.model, inputs.cluster, inputs.job, p, inputs.num_gpus)
                     for p in chosen]
        diffs = [difference(estimates[0], e) for e in estimates[1:]]
        if json_out:
            print_json(envelope("compare", {**inputs.to_json(), "plans": plans or []}, {
                "plans": [e.to_json() for e in estimates], "versus_first": [
                    {"step_delta_s": d.step_delta_s, "time_terms_s": dict(d.time_terms),
                     "memory_terms_bytes": dict(d.memory_terms), "why": d.why()}
                    for d in diffs]}))
            return
        console.print(compare_table(estimates, diffs))
        for i, d in enumerate(diffs, 2):
            console.print(f"#{i} vs #1: {d.why()}")
