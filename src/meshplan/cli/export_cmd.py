"""`meshplan export --to TARGET`: write the engine configuration of one plan.

`register(app)` adds the command (the shared model/cluster/job/plan flags come from
`with_inputs`); `write` also writes what `meshplan plan ... --export TARGET --out FILE` found.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from meshplan.cli.options import Inputs, check_out, is_stdout, with_inputs
from meshplan.errors import MeshplanError
from meshplan.export import TARGETS, export
from meshplan.specs.plan import Plan

TARGET_HELP = f"Engine to export to: {', '.join(TARGETS)}"
ToOption = Annotated[str, typer.Option("--to", help=TARGET_HELP)]
VersionOption = Annotated[str | None, typer.Option(
    "--engine-version", help="Engine release to write for (torchtitan: 0.3.0, the default, or "
                             "0.2.2 for a TOML job file)")]
OutOption = Annotated[Path | None, typer.Option(
    "--out", help="Write to this file instead of standard output ('-': standard output)",
    dir_okay=False)]


def register(app: typer.Typer) -> None:
    """Add `meshplan export` to the app."""

    @app.command("export")
    @with_inputs()
    def export_command(inputs: Inputs, to: ToOption, out: OutOption = None,
                       engine_version: VersionOption = None) -> None:
        """Write the Megatron-LM, torchtitan or DeepSpeed configuration of one plan."""
        check_out("--out", out, stdout_ok=True)
        plan = inputs.plan()
        if plan.num_gpus != inputs.num_gpus:
            raise MeshplanError(f"dp*tp*pp*cp={plan.num_gpus}: must equal --num-gpus "
                                f"({inputs.num_gpus})")
        text = export(plan, to, model=inputs.model, job=inputs.job, cluster=inputs.cluster,
                      engine_version=engine_version)
        _warn_if_unfit(plan, inputs)
        write(text, out)


def _warn_if_unfit(plan: Plan, inputs: Inputs) -> None:
    """A plan that does not fit still exports, with a one-line warning on stderr."""
    from meshplan.api import estimate

    result = estimate(inputs.model, inputs.cluster, inputs.job, plan)
    if not result.fits:
        print(f"warning: predicted not to fit on {inputs.cluster.accelerator.name}: "
              f"{result.fit_reason}", file=sys.stderr)


def write(text: str, out: Path | None) -> None:
    """Print `text`, or write it to `out` (a script also gets the executable bit)."""
    if out is None or is_stdout(out):
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as err:
        raise MeshplanError(f"--out={str(out)!r}: cannot write ({err.strerror})") from None
    if text.startswith("#!"):
        out.chmod(out.stat().st_mode | 0o111)
    print(f"wrote {out}", file=sys.stderr)
