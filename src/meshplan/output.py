"""The envelope every JSON result carries: which schema, which meshplan, which command and the
inputs it answered, as top-level keys beside the result's own (nothing renamed or nested).

`meshplan report RESULT.json` reads `command` to pick the page and `inputs` to echo them, so
a report drawn from a saved JSON file is the one `--html` would have written.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1
"""Bumped when a key of a JSON result changes meaning or goes; new keys do not bump it."""

ENVELOPE_KEYS = ("schema_version", "meshplan_version", "command", "inputs")


def envelope(command: str, inputs: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """`result` with the envelope's keys first; a result key of the same name is a bug."""
    from meshplan import __version__

    clash = [k for k in ENVELOPE_KEYS if k in result]
    assert not clash, f"result keys {clash} shadow the envelope"
    return {"schema_version": SCHEMA_VERSION, "meshplan_version": __version__,
            "command": command, "inputs": inputs, **result}


def cluster_inputs(cluster: Any) -> dict[str, Any]:
    """What a report needs of a cluster: its name, GPU, HBM (the memory line) and node size."""
    a = cluster.accelerator
    return {"name": cluster.name, "accelerator": a.name,
            "memory_gib": a.memory_bytes / 2**30, "gpus_per_node": cluster.gpus_per_node}
