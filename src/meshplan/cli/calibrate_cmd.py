"""`meshplan calibrate`: fit the efficiency factors of each accelerator silicon to runs (--runs
FILE) or measure this machine (--local); the work is `meshplan.api.calibrate`, this module
parses and prints (progress on stderr, the result on stdout).

Fitted factors go to a user file (`--out CAL.toml`) that every predicting command reads with
`--calibration CAL.toml`; nothing is written into the installed package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from meshplan import api
from meshplan.cli.options import check_out
from meshplan.cli.render import console, print_json
from meshplan.cli.run_cmd import LOCAL_CLUSTER
from meshplan.errors import MeshplanError
from meshplan.output import envelope

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")]


def calibrate(
        local: Annotated[bool, typer.Option("--local", help="Measure this machine")] = False,
        runs: Annotated[str | None, typer.Option(
            "--runs", help="Fit the presets' efficiency factors to published runs in this "
                           "file (schema of published_training_runs.json); 'shipped' for "
                           "meshplan's own")] = None,
        write: Annotated[bool, typer.Option(
            "--write", help="Refused: meshplan does not write into its installed package; "
                            "use --out CAL.toml, then --calibration CAL.toml")] = False,
        loso: Annotated[bool, typer.Option(
            "--loso/--no-loso", help="With --runs: leave-one-source-out error (slower)")] = True,
        out: Annotated[Path | None, typer.Option(
            "--out", help="File to write: with --local the cluster file (default "
                          f"{LOCAL_CLUSTER}); with --runs the calibration file (default: "
                          "none written)")] = None,
        threads: Annotated[int, typer.Option("--threads-per-rank",
                                             help="CPU threads one rank gets")] = 1,
        json_out: JsonFlag = False) -> None:
    """Measure this machine (--local) or fit the presets to published runs (--runs FILE)."""
    if local == (runs is not None):
        raise MeshplanError("calibrate: give exactly one of --local (measure this machine) or "
                            "--runs FILE (fit the presets to published runs)")
    if write:
        raise MeshplanError("--write: meshplan no longer writes into its installed package; "
                            "use --out CAL.toml and pass --calibration CAL.toml to the "
                            "commands that predict")
    if local and out is None:
        out = Path(LOCAL_CLUSTER)
    check_out("--out", out)
    if runs is not None:
        with _progress_bar() as progress:
            fitted = api.calibrate(runs, leave_one_source_out=loso, progress=progress)
        assert isinstance(fitted, api.RunsCalibration)
        _save(fitted.text, out)
        _print_fit(fitted, out, json_out, {"runs": runs, "loso": loso,
                                           "out": None if out is None else str(out)})
        return
    measured = api.calibrate(local=True, threads=threads)
    assert isinstance(measured, api.LocalCalibration) and out is not None
    _save(measured.text, out)
    data = measured.cluster
    if json_out:
        print_json(envelope("calibrate", {"local": True, "threads_per_rank": threads,
                                          "out": str(out)}, {"path": str(out), "cluster": data}))
        return
    acc, net = data["accelerator"], data["network"][0]
    peaks = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in acc["peak_flops"].items())
    console.print(f"wrote {out}: {acc['name']}, peak GFLOP/s {peaks}; memory "
                  f"{acc['memory_bandwidth'] / 1e9:.1f} GB/s; {net['name']} busbw "
                  f"{net['bandwidth'] / 1e9:.2f} GB/s, latency {net['latency'] * 1e6:.0f} us; "
                  f"kernel overhead {data['kernel_overhead'] * 1e6:.0f} us")


@contextmanager
def _progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on stderr (stdout stays for the result, JSON included); on a stderr that
    is not a terminal, one status line per fit instead."""
    err = Console(stderr=True)
    if not err.is_terminal:
        last: list[str] = []

        def lines(what: str, done: int, total: int) -> None:
            if not last or what != last[-1]:
                last.append(what)
                err.print(f"calibrate: {what} ({done / total:.0%})", highlight=False)
        yield lines
        return
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("preparing runs", total=None)

        def update(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)
        yield update


def _save(text: str, out: Path | None) -> None:
    if out is None:
        return
    try:
        out.write_text(text)
    except OSError as err:
        raise MeshplanError(f"--out={str(out)!r}: cannot write ({err.strerror})") from None


def _print_fit(fitted: api.RunsCalibration, out: Path | None, json_out: bool,
               inputs: dict[str, Any]) -> None:
    summary = fitted.to_json()
    if json_out:
        print_json(envelope("calibrate", inputs,
                            summary if out is None else {**summary, "path": str(out)}))
        return
    for group, f in sorted(fitted.factors.items()):
        console.print(f"{group:18} " + "  ".join(f"{k}={v:.4g}" for k, v in f.items()))
    for kind in ("in_sample", "held_out"):
        for subset, s in summary[kind].items():
            if s["count"]:
                console.print(f"{kind:9} {subset:8} n={s['count']:>4}  median |err| "
                              f"{s['median_abs_error']:.1%}  p90 {s['p90_abs_error']:.1%}  "
                              f"bias {s['bias']:+.1%}")
    if out is not None:
        console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add `calibrate` to the meshplan app."""
    app.command("calibrate")(calibrate)
