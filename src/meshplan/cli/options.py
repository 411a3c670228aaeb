"""The inputs every planning command shares (model, cluster, job, plan flags), declared once.

`with_inputs` adds these options to a typer command and hands the command one `Inputs`
object, so `plan`, `estimate`, `simulate`, `export` and `run` take exactly the same flags
without repeating them. `check_out` is the shared "can this file be written" check.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from meshplan.cli import complete
from meshplan.errors import MeshplanError, from_validation_error
from meshplan.specs.cluster import Cluster
from meshplan.specs.io import CALIBRATION_FILE, CalibrationRef, load_cluster, load_model
from meshplan.specs.job import Job
from meshplan.specs.model import Model
from meshplan.specs.plan import Plan
from meshplan.specs.rules import check_inputs

EXAMPLE = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 64,
           "global_batch_size": 512, "seq_len": 8192}


@dataclass(frozen=True)
class Inputs:
    """What the shared flags resolve to."""

    model: Model
    cluster: Cluster
    job: Job
    num_gpus: int
    plan_flags: dict[str, Any]
    """Plan flags as given (None where not given), or as read from a --from-ENGINE file."""
    imported: Any = None
    """The `ImportedJob` of a --from-ENGINE file, or None."""

    def to_json(self) -> dict[str, Any]:
        """The inputs a JSON result answered (its envelope's `inputs`)."""
        from meshplan.output import cluster_inputs

        return {"model": self.model.model_dump(mode="json"),
                "cluster": cluster_inputs(self.cluster),
                "job": self.job.model_dump(mode="json"), "num_gpus": self.num_gpus,
                "plan_flags": {k: v for k, v in self.plan_flags.items() if v is not None},
                **({} if self.imported is None else {"imported": str(self.imported.path)})}

    def plan(self) -> Plan:
        """The Plan of the flags; dp defaults to whatever makes the degrees fill num_gpus."""
        flags = {k: v for k, v in self.plan_flags.items() if v is not None}
        if "axis_order" in flags:
            flags["axis_order"] = tuple(flags["axis_order"].split("-"))
        if "dp" not in flags:
            other = flags.get("tp", 1) * flags.get("pp", 1) * flags.get("cp", 1)
            if other > 0 and self.num_gpus % other:
                raise MeshplanError(
                    f"tp*pp*cp={other}: must divide --num-gpus ({self.num_gpus})")
            # A degree below 1 leaves dp at 1: the Plan names the bad degree.
            flags["dp"] = self.num_gpus // other if other > 0 else 1
        try:
            return Plan(**flags)
        except ValidationError as err:
            raise from_validation_error(err, "plan", typed_flag) from None


def _opt(flag: str, help_: str, **kw: Any) -> Any:
    return typer.Option(flag, help=help_, **kw)


COMMON: list[tuple[str, Any, Any]] = [
    ("model", Annotated[str, _opt("--model",
                                  "Model: preset name, meshplan TOML/JSON, or HF config.json",
                                  autocompletion=complete.models)],
     EXAMPLE["model"]),
    ("cluster", Annotated[str, _opt("--cluster",
                                    "Cluster: preset name or meshplan cluster file",
                                    autocompletion=complete.clusters)],
     EXAMPLE["cluster"]),
    ("num_gpus", Annotated[int, _opt("--num-gpus", "GPUs in the job")],
     EXAMPLE["num_gpus"]),
    ("global_batch_size", Annotated[int, _opt("--global-batch-size", "Sequences per step")],
     EXAMPLE["global_batch_size"]),
    ("seq_len", Annotated[int, _opt("--seq-len", "Sequence length")],
     EXAMPLE["seq_len"]),
    ("precision", Annotated[str, _opt("--precision", "bf16, fp16 or fp8 GEMMs")],
     "bf16"),
    ("token_budget", Annotated[float | None, _opt("--token-budget",
                                                  "Tokens to train on (time-to-train)")],
     None),
    ("loss_kernel", Annotated[str, _opt(
        "--loss-kernel", "The loss at the vocabulary size: upcast (F.cross_entropy on fp32 "
                         "logits: torchtitan, Hugging Face), vocab_parallel (Megatron) or "
                         "fused (a fused kernel)")], "vocab_parallel"),
    ("expandable_segments", Annotated[bool, _opt(
        "--expandable-segments/--no-expandable-segments",
        "The job sets PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (less fragmentation)")],
     False),
    ("calibration", Annotated[str | None, _opt(
        "--calibration", "Fitted factors for the cluster presets: a calibration file (from "
                         "`meshplan calibrate --runs ... --out`), or 'none' for the raw "
                         "efficiency curves (default: the shipped presets/calibration.toml)")],
     None),
]

PLAN_FLAGS: list[tuple[str, Any, Any]] = [
    ("tp", Annotated[int | None, _opt("--tp", "Tensor-parallel degree")], None),
    ("pp", Annotated[int | None, _opt("--pp", "Pipeline-parallel degree")], None),
    ("dp", Annotated[int | None, _opt("--dp", "Data-parallel degree (default: fill)")],
     None),
    ("cp", Annotated[int | None, _opt("--cp", "Context-parallel degree")], None),
    ("ep", Annotated[int | None, _opt("--ep", "Expert-parallel degree")], None),
    ("etp", Annotated[int | None, _opt("--etp", "Expert tensor-parallel degree")], None),
    ("zero_stage", Annotated[int | None, _opt("--zero", "ZeRO stage 0-3 (3 = FSDP)")],
     None),
    ("dp_shard", Annotated[int | None, _opt("--dp-shard",
                                            "Sharding group for hybrid sharding (HSDP)")], None),
    ("micro_batch_size", Annotated[int | None, _opt("--micro-batch-size",
                                                    "Sequences per micro-batch")], None),
    ("schedule", Annotated[str | None, _opt("--schedule", "Pipeline schedule",
                                            autocompletion=complete.schedules)], None),
    ("vpp", Annotated[int | None, _opt("--vpp", "Virtual stages per pipeline rank")],
     None),
    ("recompute", Annotated[str | None, _opt("--recompute",
                                             "none, selective or full")], None),
    ("recompute_num_layers", Annotated[int | None, _opt(
        "--recompute-num-layers", "With --recompute full: layers of each stage chunk "
                                  "recomputed (Megatron --recompute-method block)")], None),
    ("sequence_parallel", Annotated[bool | None, _opt("--sp/--no-sp",
                                                      "Sequence parallelism")], None),
    ("offload_optimizer", Annotated[bool | None, _opt("--offload/--no-offload",
                                                      "Optimizer on the host")], None),
    ("tp_comm_overlap", Annotated[bool | None, _opt("--tp-overlap/--no-tp-overlap",
                                                    "Overlap TP collectives with GEMMs")], None),
    ("ep_comm_overlap", Annotated[bool | None, _opt("--ep-overlap/--no-ep-overlap",
                                                    "Overlap the expert all-to-all")], None),
    ("moe_dispatcher", Annotated[str | None, _opt(
        "--moe-dispatcher", "MoE token dispatcher: alltoall, allgather, flex-deepep or "
                            "hybridep (Megatron-Core --moe-token-dispatcher-type)")], None),
    ("moe_force_balanced", Annotated[bool | None, _opt(
        "--force-balanced/--no-force-balanced",
        "MoE routing forced even (Megatron --moe-router-force-load-balancing)")], None),
    ("first_stage_layers", Annotated[int | None, _opt(
        "--first-stage-layers", "Layers on the first pipeline rank (uneven split)")], None),
    ("last_stage_layers", Annotated[int | None, _opt(
        "--last-stage-layers", "Layers on the last pipeline rank (uneven split)")], None),
    ("axis_order", Annotated[str | None, _opt("--axis-order",
                                              "Rank order, innermost first, e.g. tp-cp-ep-dp-pp")],
     None),
]


def _import_flags() -> list[tuple[str, Any, Any]]:
    from meshplan.importers import READERS

    return [(f"from_{engine}", Annotated[str | None, _opt(
        r.flag, f"Read the job's layout, batch and precision from this {r.what}; flags given "
        "here win over it")], None) for engine, r in READERS.items()]


IMPORT_FLAGS = _import_flags()
"""--from-<engine>, one per reader (`importers.READERS`)."""


CTX = "meshplan_ctx"
"""Name of the context parameter `with_inputs(imports=True)` adds."""


def typed_flag(field: str) -> str | None:
    """The flag of a shared option's field (for error messages), None for other fields."""
    known = {option for option, _, _ in COMMON + PLAN_FLAGS}
    return flag_of(field) if field in known else None


def flag_of(name: str) -> str:
    """The command-line flag of a shared option (`zero_stage` -> `--zero`)."""
    for option, ann, _ in COMMON + PLAN_FLAGS:
        if option == name:
            info = typing.get_args(ann)[1]  # typer: a first str argument is the flag
            decls = [d for d in (info.default, *info.param_decls) if isinstance(d, str)]
            return decls[0].split("/")[0]
    return "--" + name.replace("_", "-")


def _given(ctx: typer.Context, names: list[str]) -> set[str]:
    """The options the user typed (not defaults), from the command's parameter sources."""
    typed = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")
    return {n for n in names if getattr(ctx.get_parameter_source(n), "name", None) in typed}


def _apply_import(ctx: typer.Context, shared: dict[str, Any], chosen: dict[str, Any]) -> Any:
    """Read the one --from-ENGINE file into `shared` under the typed flags; None without one."""
    import sys

    from meshplan.importers import merge, only_one, read_job

    picked = only_one({name.removeprefix("from_"): value for name, value in chosen.items()})
    if picked is None:
        return None
    imported = read_job(*picked, load_model(shared["model"]))
    notes = merge(imported, shared, _given(ctx, list(shared)), flag_of)
    layout = ", ".join(f"{k}={v}" for k, v in imported.values.items())
    print(f"read {imported.engine} job {imported.path}: {layout}", file=sys.stderr)
    for note in [*imported.notes, *notes]:
        print(f"note: {note}", file=sys.stderr)
    return imported


def calibration_ref(value: str | None) -> CalibrationRef:
    """What `--calibration` names: the shipped file (not given), a file, or None ('none')."""
    if value is None:
        return CALIBRATION_FILE
    if value == "none":
        return None
    if not os.path.isfile(value):
        raise MeshplanError(f"--calibration={value!r}: no such file; give a calibration file "
                            "(format of presets/calibration.toml) or 'none'")
    return Path(value)


def build_inputs(values: dict[str, Any]) -> Inputs:
    """Load the model and cluster and build the Job from the shared flags."""
    extra = {k: values[k] for k in ("grad_bytes", "flash_attention", "loss_kernel",
                                    "expandable_segments") if k in values}
    try:
        job = Job(global_batch_size=values["global_batch_size"], seq_len=values["seq_len"],
                  precision=values["precision"], token_budget=values["token_budget"], **extra)
    except ValidationError as err:
        raise from_validation_error(err, "job", typed_flag) from None
    if values["num_gpus"] <= 0:
        raise MeshplanError(f"--num-gpus={values['num_gpus']}: must be positive")
    plan_flags = {name: values.get(name) for name, _, _ in PLAN_FLAGS}
    # Plan fields without a flag that a --from-ENGINE file states (overlap_grad_reduce).
    plan_flags |= {k: v for k, v in values.items() if k in Plan.model_fields
                   and k not in plan_flags}
    order = plan_flags.get("axis_order")
    if isinstance(order, tuple):  # read from a file, not typed
        plan_flags["axis_order"] = "-".join(order)
    calibration = calibration_ref(values.get("calibration"))
    model, cluster = load_model(values["model"]), load_cluster(values["cluster"], calibration)
    check_inputs(model, cluster, job, values["num_gpus"])
    return Inputs(model, cluster, job, values["num_gpus"], plan_flags)


def with_inputs(plan_flags: bool = True, overrides: dict[str, tuple[Any, Any]] | None = None,
                prepare: Callable[[dict[str, Any]], None] | None = None,
                imports: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add the shared options to a command; it receives `inputs: Inputs`.

    `overrides` maps a shared option to a new (annotation, default) for this command;
    `prepare` may fill or check the raw option values before they are resolved; `imports`
    adds --from-megatron / --from-torchtitan / --from-deepspeed (a job config read in under
    the flags the user typed).
    """
    extra = [(name, *(overrides or {}).get(name, (ann, default)))
             for name, ann, default in COMMON + (PLAN_FLAGS if plan_flags else [])]
    import_names = [name for name, _, _ in IMPORT_FLAGS] if imports else []

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func)
        hints = typing.get_type_hints(func, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in sig.parameters.values() if p.name != "inputs"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                   annotation=ann) for name, ann, default in
                 extra + [f for f in IMPORT_FLAGS if f[0] in import_names]]
        if imports:  # typer hands the click context to a parameter of this type
            added.append(inspect.Parameter(CTX, inspect.Parameter.KEYWORD_ONLY,
                                           annotation=typer.Context))
        names = [name for name, _, _ in extra]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            if prepare is not None:
                prepare(kwargs)
            shared = {n: kwargs.pop(n) for n in names}
            chosen = {n: kwargs.pop(n) for n in import_names}
            ctx = kwargs.pop(CTX, None)
            imported = _apply_import(ctx, shared, chosen) if chosen else None
            inputs = build_inputs(shared)
            if imported is not None:
                inputs = dataclasses.replace(inputs, imported=imported)
            return func(inputs=inputs, **kwargs)

        command.__signature__ = sig.replace(parameters=own + added)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in own + added}
        return command

    return wrap


STDOUT = "-"
"""The output path that means standard output, where a command allows it."""


def is_stdout(path: str | Path | None) -> bool:
    return path is not None and str(path) == STDOUT


def check_out(flag: str, path: str | Path | None, stdout_ok: bool = False) -> None:
    """Refuse, before any work, an output file that cannot be written: a directory, a missing
    or unwritable folder, a read-only file; `-` (standard output) only where `stdout_ok`."""
    if path is None or (stdout_ok and is_stdout(path)):
        return
    p = Path(path)
    if is_stdout(p):
        raise MeshplanError(f"{flag}='-': standard output is not an option here; give a file "
                            "name")
    if os.path.isdir(p):
        raise MeshplanError(f"{flag}={str(p)!r}: is a directory; give a file name")
    if not os.path.isdir(p.parent):
        raise MeshplanError(f"{flag}={str(p)!r}: directory {str(p.parent)!r} does not exist")
    if not os.access(p.parent, os.W_OK | os.X_OK) or (os.path.exists(p)
                                                       and not os.access(p, os.W_OK)):
        raise MeshplanError(f"{flag}={str(p)!r}: not writable")
    if len(os.fsencode(p.name)) > _name_max(p.parent):
        raise MeshplanError(f"{flag}={str(p)!r}: file name longer than the folder allows")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX: the common limit
        return 255


FORMATS = ("table", "csv")
FormatOpt = Annotated[str, typer.Option(
    "--format", help="table, or csv: the table's rows on standard output (units in the "
                     "column names)")]


def wants_csv(fmt: str, json_out: bool) -> bool:
    """Whether --format asks for CSV; an unknown format, or CSV with --json (both would be
    standard output), is refused."""
    if fmt not in FORMATS:
        raise MeshplanError(f"--format={fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "csv" and json_out:
        raise MeshplanError("--format csv with --json: both print to standard output; "
                            "choose one")
    return fmt == "csv"
