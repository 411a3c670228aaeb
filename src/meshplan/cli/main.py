"""`meshplan` entry point: one typer app; each subcommand parses, calls the API, prints.

User errors (MeshplanError) print one line on stderr and exit 2; nothing else is caught.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from meshplan import api
from meshplan.cli.options import FormatOpt, Inputs, check_out, is_stdout, wants_csv, with_inputs
from meshplan.cli.render import (
    breakdown_tables,
    console,
    plan_rows,
    plans_table,
    print_json,
    summary_line,
    write_csv,
)
from meshplan.cli.report_cmd import HtmlOpt, check_html, emit
from meshplan.errors import MeshplanError
from meshplan.estimate import calibration_line
from meshplan.output import envelope
from meshplan.specs.io import load_cluster, load_model, preset_names

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Plan, predict and prove hybrid-parallel layouts for transformer "
                       "training.")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")]


@app.command()
def models(json_out: JsonFlag = False) -> None:
    """List the model presets."""
    from meshplan.cost.params import count_params

    rows: list[dict[str, Any]] = []
    for name in preset_names("models"):
        m = load_model(name)
        c = count_params(m)
        rows.append({"name": name, "params_b": c.total / 1e9, "active_params_b": c.active / 1e9,
                     "layers": m.num_layers, "hidden": m.hidden_size, "moe": m.is_moe})
    if json_out:
        print_json(rows)
        return

    def size(billions: float) -> str:  # a test model has millions, not 0.0B
        return f"{billions:8.1f}B" if billions >= 0.1 else f"{billions * 1e3:8.1f}M"

    for r in rows:
        moe = f" (active {size(r['active_params_b']).strip()})" if r["moe"] else ""
        console.print(f"{r['name']:18} {size(r['params_b'])}{moe}")


@app.command()
def clusters(json_out: JsonFlag = False) -> None:
    """List the cluster presets."""
    rows: list[dict[str, Any]] = []
    for name in preset_names("clusters"):
        c = load_cluster(name)
        rows.append({"name": name, "accelerator": c.accelerator.name,
                     "gpus_per_node": c.gpus_per_node,
                     "bf16_tflops": c.accelerator.rated_peak("bf16") / 1e12,
                     "memory_gib": c.accelerator.memory_bytes / 2**30,
                     "network": [t.name for t in c.network]})
    if json_out:
        print_json(rows)
        return
    for r in rows:
        console.print(f"{r['name']:12} {r['accelerator']:18} {r['bf16_tflops']:7.0f} TF bf16 "
                      f"{r['memory_gib']:6.0f} GiB  {' > '.join(r['network'])}")


@app.command()
@with_inputs(plan_flags=False, imports=True)
def plan(inputs: Inputs, top: Annotated[int, typer.Option("--top", help="Plans to show")] = 10,
         simulate_top: Annotated[int, typer.Option(
             "--simulate-top", help="Re-rank this many best candidates with the simulator")] = 10,
         export: Annotated[str | None, typer.Option(
             "--export", help="Write the best plan's config: megatron, torchtitan, deepspeed")
         ] = None,
         out: Annotated[str | None, typer.Option(
             "--out", help="File for --export (default or '-': stdout)")] = None,
         explain: Annotated[int | None, typer.Option(
             "--explain", help="Show plan N's breakdowns and why its neighbours rank where "
                               "they do")] = None,
         variants: Annotated[bool, typer.Option(
             "--variants", help="Also rank slower micro-batch / recompute / ZeRO settings of "
                                "the same parallel degrees (default: one row per layout)")
         ] = False,
         fmt: FormatOpt = "table",
         html: HtmlOpt = None, json_out: JsonFlag = False) -> None:
    """Search every legal layout and rank those that fit by throughput."""
    check_html(html)
    csv_out = wants_csv(fmt, json_out)
    if csv_out and explain is not None:
        raise MeshplanError("--explain with --format csv: the explanation is text; use the "
                            "table")
    if top <= 0:
        raise MeshplanError(f"--top={top}: must be positive")
    if explain is not None and not 1 <= explain <= top:
        raise MeshplanError(f"--explain={explain}: must be a plan number from 1 to --top "
                            f"({top})")
    if simulate_top < 0:
        raise MeshplanError(f"--simulate-top={simulate_top}: must be 0 or more")
    if export is not None:
        from meshplan.errors import unknown_name
        from meshplan.export.api import TARGETS

        if export not in TARGETS:
            raise unknown_name("export target", export, TARGETS)
        check_out("--out", out, stdout_ok=True)
        if (json_out or csv_out) and (out is None or is_stdout(out)):
            raise MeshplanError(f"--{'json' if json_out else 'format csv'} with --export: the "
                                "config goes to standard output; give --out FILE to print "
                                "the ranking as well")
    elif out is not None:
        raise MeshplanError(f"--out={out!r}: only with --export TARGET (the file the best "
                            "plan's config is written to)")
    quiet = json_out or csv_out
    with console.status("searching plans...", spinner="dots") if not quiet else _quiet():
        result = api.plan(inputs.model, inputs.cluster, inputs.job, inputs.num_gpus, top=top,
                          simulate_top=simulate_top, export_target=export, variants=variants)
    if export is not None:
        _export_best(result, None if out is None or is_stdout(out) else Path(out))
        if out is None or is_stdout(out):
            return
    plans = result.ranking(top)
    if json_out or html:
        emit(envelope("plan", inputs.to_json(), {
            "plans": [e.to_json() for e in plans], "evaluated": result.evaluated,
            "num_fitting": result.num_fitting, "search_seconds": result.search_seconds,
            "space": result.space}), json_out, html)
        if json_out:
            return
    if csv_out:
        write_csv(plan_rows([e.to_json() for e in plans]))
        if not plans:
            raise typer.Exit(1)
        return
    title = (f"{inputs.model.name} on {inputs.num_gpus} x {inputs.cluster.accelerator.name}, "
             f"batch {inputs.job.global_batch_size} x {inputs.job.seq_len}")
    if not plans:
        console.print(f"no plan fits ({result.evaluated} legal plans evaluated)")
        raise typer.Exit(1)
    console.print(plans_table(plans, title))
    if plans[0].calibration:
        console.print(calibration_line(plans[0].calibration))
    console.print(f"{result.evaluated:,} plans evaluated in {result.search_seconds:.3f} s; "
                  f"{result.num_fitting:,} fit in memory")
    if inputs.imported is not None:
        console.print(_versus_your_job(inputs, plans[0]))
    if explain is not None:
        _explain(plans, explain)


def _versus_your_job(inputs: Inputs, best: Any) -> str:
    """How far the best plan is from the job read with --from-ENGINE (its predicted step)."""
    from meshplan.compare import difference

    mine = api.estimate(inputs.model, inputs.cluster, inputs.job, inputs.plan(),
                        inputs.num_gpus)
    head = f"your job ({inputs.imported.path}): {mine.plan.describe()}"
    if not mine.fits:
        return f"{head}: predicted not to fit ({mine.fit_reason}); best plan #1 " \
               f"{best.plan.describe()} steps in {best.step_time_s:.3f} s"
    gain = mine.step_time_s / best.step_time_s
    return (f"{head}: {mine.step_time_s:.3f} s/step predicted; best plan #1 "
            f"{best.plan.describe()}: {best.step_time_s:.3f} s/step ({gain:.2f}x"
            f"{' faster' if gain > 1 else ''}); {difference(mine, best).why()}")


def _explain(plans: list, n: int) -> None:
    """Plan n's time and memory breakdowns, and why the plans next to it rank where they do."""
    from meshplan.compare import difference

    if n > len(plans):
        raise MeshplanError(f"--explain={n}: only {len(plans)} plans were found")
    chosen = plans[n - 1]
    console.print(f"plan {n}: {summary_line(chosen)}")
    for table in breakdown_tables(chosen):
        console.print(table)
    for i in (j for j in (n - 1, n + 1, n + 2) if 1 <= j <= len(plans)):
        d = difference(chosen, plans[i - 1])
        console.print(f"#{i} {plans[i - 1].plan.describe()}: {d.why()}")


def _export_best(result: api.PlanResult, out: Path | None) -> None:
    """Write the best expressible plan's config; say which better-ranked ones were refused."""
    from meshplan.cli.export_cmd import write

    target, skipped = result.export_target, result.skipped
    first = (f"#{skipped[0].rank} ({skipped[0].estimate.plan.describe()}): {skipped[0].reason}"
             if skipped else None)
    if not result.plans:
        raise MeshplanError(f"--export={target}: it can express no plan of this space that "
                            f"fits; first refusal: {first}")
    assert result.config is not None
    write(result.config, out)
    if result.ranks[0] > 1:
        print(f"note: exported plan #{result.ranks[0]} ({result.plans[0].plan.describe()}); "
              f"{target} cannot express {first}", file=sys.stderr)


@app.command()
@with_inputs(imports=True)
def estimate(inputs: Inputs, html: HtmlOpt = None, json_out: JsonFlag = False) -> None:
    """Predict step time, throughput and memory of one plan."""
    check_html(html)
    e = api.estimate(inputs.model, inputs.cluster, inputs.job, inputs.plan(), inputs.num_gpus)
    if json_out or html:
        emit(envelope("estimate", inputs.to_json(), e.to_json()), json_out, html)
        if json_out:
            return
    console.print(summary_line(e))
    if e.calibration:
        console.print(calibration_line(e.calibration))
    for table in breakdown_tables(e):
        console.print(table)


@app.command()
@with_inputs()
def simulate(inputs: Inputs,
             trace: Annotated[str | None, typer.Option(
                 "--trace", help="Write a Chrome/Perfetto trace (JSON) of the step here")] = None,
             html: HtmlOpt = None, json_out: JsonFlag = False) -> None:
    """Simulate the plan's pipeline schedule event by event; optionally write a trace."""
    from meshplan.sim.timeline import timeline_json
    from meshplan.sim.trace import write_trace

    check_out("--trace", trace)
    check_html(html)
    # The trace, the JSON's timeline and the report need the simulation's boxes; the table
    # does not.
    sim = api.simulate(inputs.model, inputs.cluster, inputs.job, inputs.plan(), inputs.num_gpus,
                       trace=trace is not None or json_out or html is not None)
    if trace is not None:
        try:
            write_trace(sim.result, trace)
        except OSError as err:
            raise MeshplanError(f"--trace={trace}: cannot write: {err.strerror}") from None
    e = sim.estimate
    if json_out or html:
        emit(envelope("simulate", inputs.to_json(),
                      {**e.to_json(), "timeline": timeline_json(sim.result)}), json_out, html)
        if json_out:
            return
    console.print(summary_line(e))
    if e.calibration:
        console.print(calibration_line(e.calibration))
    s = e.extra.get("simulated", {})
    if s:
        console.print(f"simulated pipeline {s['pipeline_s']:.3f} s, mean rank idle "
                      f"{s['bubble_fraction']:.1%}; per-rank idle (s): "
                      + ", ".join(f"{x:.3f}" for x in s["idle_s"]))
    for table in breakdown_tables(e):
        console.print(table)
    if trace is not None:
        console.print(f"trace written to {trace} (open it in ui.perfetto.dev)")


@contextmanager
def _quiet() -> Iterator[None]:
    yield


def _register_extensions() -> None:
    """Subcommands that live in their own modules (validate, export, run, calibrate, serve)."""
    from meshplan.cli import (
        calibrate_cmd,
        compare_cmd,
        export_cmd,
        report_cmd,
        run_cmd,
        serve_cmd,
        validate_cmd,
    )

    validate_cmd.register(app)
    compare_cmd.register(app)
    export_cmd.register(app)
    run_cmd.register(app)
    calibrate_cmd.register(app)
    serve_cmd.register(app)
    report_cmd.register(app)


_register_extensions()


def main() -> None:
    """Console entry: run the app, turning user errors into one line and exit code 2."""
    try:
        # Outside standalone mode click returns an Exit's code instead of raising it.
        code = app(standalone_mode=False, prog_name="meshplan")
    except MeshplanError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as err:  # bad flag or value, caught before the API runs
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
