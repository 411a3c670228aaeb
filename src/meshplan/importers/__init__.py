"""Read an engine's job config back in: `read_job(engine, path, model)` -> `ImportedJob`.

One reader per engine (Megatron-LM arguments, torchtitan TOML, DeepSpeed JSON), each accepting
what its exporter in `meshplan.export` writes and the hand-written files of the same format.
`merge` lays a reader's values under the command line's: a flag the user gave wins, and the
override is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from meshplan.errors import MeshplanError
from meshplan.importers import deepspeed, megatron, torchtitan
from meshplan.importers._common import JOB_FIELDS, ImportedJob, divide
from meshplan.specs.model import Model


class Reader(NamedTuple):
    flag: str
    """The command-line option, --from-<engine>."""
    read: Callable[[str, Model], ImportedJob]
    what: str
    """The file it reads, for --help."""


READERS: dict[str, Reader] = {m.FLAG.removeprefix("--from-"): Reader(m.FLAG, m.read, m.WHAT)
                              for m in (megatron, torchtitan, deepspeed)}
"""Engine -> reader; the CLI adds one --from-<engine> option per entry."""


def read_job(engine: str, path: str, model: Model) -> ImportedJob:
    """The job config at `path`, read by `engine`'s reader (a `MeshplanError` line if bad)."""
    return READERS[engine].read(str(path), model)


def merge(imported: ImportedJob, values: dict[str, Any], given: set[str],
          flag_of: Callable[[str], str]) -> list[str]:
    """Fill `values` (option name -> value, as the command line resolved them) from the file,
    except the options in `given`, which win; returns a note per override. Also sets num_gpus
    and the HSDP sharding group, which need the GPU count."""
    notes = []
    for key, value in imported.values.items():
        if key in given:
            if values.get(key) != value:
                notes.append(f"{flag_of(key)} {values[key]} overrides {key}={value} from "
                             f"{imported.path}")
            continue
        values[key] = value
    if imported.num_gpus is not None:
        if "num_gpus" in given and values["num_gpus"] != imported.num_gpus:
            notes.append(f"--num-gpus {values['num_gpus']} overrides the file's "
                         f"{imported.num_gpus} GPUs")
        elif "num_gpus" not in given:
            values["num_gpus"] = imported.num_gpus
    elif "num_gpus" not in given:
        notes.append(f"{imported.path} does not say how many GPUs: --num-gpus "
                     f"{values['num_gpus']} is used")
    if imported.dp_replicas > 1 and "dp_shard" not in given:
        model_parallel = values.get("tp", 1) * values.get("pp", 1) * values.get("cp", 1)
        where = f"{imported.path}"
        dp = values.get("dp") or divide(where, "GPUs / (tp x pp x cp)", values["num_gpus"],
                                        model_parallel)
        values["dp_shard"] = divide(where, "data-parallel ranks / sharding-group replicas", dp,
                                    imported.dp_replicas)
    return notes


def only_one(chosen: dict[str, Any]) -> tuple[str, str] | None:
    """(engine, path) of the one --from-ENGINE given, None for none, an error for several."""
    given = [(engine, path) for engine, path in chosen.items() if path is not None]
    if len(given) > 1:
        flags = " and ".join(READERS[e].flag for e, _ in given)
        raise MeshplanError(f"{flags}: give one job config to read")
    return given[0] if given else None


__all__ = ["JOB_FIELDS", "READERS", "Reader", "ImportedJob", "merge", "only_one", "read_job"]
