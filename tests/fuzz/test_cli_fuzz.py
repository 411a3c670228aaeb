"""Fuzz the CLI in process with hypothesis: flags, model, cluster and runs files.

Every run must end in exit 0 or 2 (1 only for `plan`'s "no plan fits"), exit 2 with exactly one
`error:` line on stderr, never a traceback, every printed number finite, MFU and HFU <= 1.
Deterministic (derandomized, no example database) with a fixed budget: `EXAMPLES` per test,
about 30 s in all on one core.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshplan.schedules.registry import SCHEDULE_NAMES
from meshplan.specs.io import PRESETS
from tests.conftest import invoke

EXAMPLES = {"flags": 200, "model": 80, "cluster": 80, "runs": 40, "bytes": 30}
"""Examples per test: the fixed budget."""

FUZZ = dict(derandomize=True, database=None, deadline=None, print_blob=False,
            suppress_health_check=list(HealthCheck))

NAN, INF = float("nan"), float("inf")
INTS = st.sampled_from([0, -1, 1, 2, 3, 7, 8, 16, 64, 2**24, 2**24 + 1, 10**9, 10**30])
FLOATS = st.sampled_from([0.0, -1.0, 1e-300, 1e-5, 0.5, 1.0, 1.5, 1e12, 1e17, 1e40, 1e300,
                          NAN, INF, -INF])
VALUES = st.one_of(INTS, FLOATS, st.sampled_from(["x", "", True, [], {}, [1, 2], None]))
NON_FINITE = re.compile(r"\b(nan|inf|infinity)\b", re.IGNORECASE)
UTILISATION = re.compile(r"\b[MH]FU (-?[\d.,]+)%")
_counter = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")




def _walk_json(obj: Any, key: str = "") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _walk_json(v, k)
    elif isinstance(obj, list):
        for v in obj:
            _walk_json(v, key)
    elif isinstance(obj, float):
        assert math.isfinite(obj), f"{key}={obj}"
        if key in ("mfu", "hfu"):
            assert obj <= 1 + 1e-9, f"{key}={obj}"


def check(args: list[str]) -> tuple[int, str, str]:
    """Invoke and assert the CLI contract."""
    code, out, err = invoke(*args)
    context = f"meshplan {' '.join(args)}\nstdout: {out[-800:]}\nstderr: {err[-800:]}"
    assert "Traceback" not in err, context
    assert code in (0, 2) or (code == 1 and "no plan fits" in out), context
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), context
    if code == 0 and "--json" in args and out.lstrip().startswith(("{", "[")):
        _walk_json(json.loads(out, parse_constant=lambda c: pytest.fail(f"{c}: {context}")))
    assert not NON_FINITE.search(out), context  # (an error line may echo the user's "inf")
    for value in UTILISATION.findall(out):
        assert float(value.replace(",", "")) <= 100.0, context
    return code, out, err


def _write(workdir: Path, data: Any, suffix: str) -> Path:
    """Write data as TOML (when it can be) or JSON; returns the path."""
    path = workdir / f"f{next(_counter)}{suffix}"
    if suffix == ".toml":
        try:
            path.write_text(tomli_w.dumps(data))
            return path
        except (TypeError, ValueError, AttributeError):  # not representable in TOML
            path = path.with_suffix(".json")
    path.write_text(json.dumps(data))
    return path


def _leaves(data: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _leaves(v, (*prefix, k))] + [prefix]
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return [p for i, v in enumerate(data) for p in _leaves(v, (*prefix, i))]
    return [prefix]


SCALES = st.sampled_from([0.5, 2.0, 10.0, 1e3, 1e6, 1e-3, 1e-6])


def _mutate(data: Any, path: tuple, op: str, value: Any, scale: float) -> Any:
    """A deep copy of data with the item at path set to value, scaled (numbers, lists of
    numbers), deleted, or given an unknown sibling."""
    data = json.loads(json.dumps(data))
    if not path:
        return value if op == "set" else data
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if op == "set":
        parent[last] = value
    elif op == "scale":
        parent[last] = _scaled(parent[last], scale)
    elif op == "delete" and isinstance(parent, dict):
        del parent[last]
    elif isinstance(parent, dict):
        parent["unknown_key"] = value
    return data


def _scaled(value: Any, scale: float) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(1, int(value * scale))
    if isinstance(value, float):
        return value * scale
    if isinstance(value, list):
        return [_scaled(v, scale) for v in value]
    return value


def mutations(base: dict[str, Any]) -> st.SearchStrategy:
    """Up to three edits of base: most scale a figure (valid or extreme files), the others set
    a bad value, delete a key or add an unknown one."""
    paths = _leaves(base)
    one = st.tuples(st.sampled_from(paths),
                    st.sampled_from(["scale", "scale", "scale", "set", "delete", "add"]),
                    VALUES, SCALES)
    return st.lists(one, min_size=0, max_size=3).map(lambda ops: _apply(base, ops))


def _apply(base: dict[str, Any], ops: list[tuple]) -> Any:
    data = base
    for path, op, value, scale in ops:
        with contextlib.suppress(KeyError, IndexError, TypeError):  # path gone after an edit
            data = _mutate(data, path, op, value, scale)
    return data


def _preset(kind: str, name: str) -> dict[str, Any]:
    return tomllib.loads((PRESETS / kind / f"{name}.toml").read_text())


JOB = ["--num-gpus", "8", "--global-batch-size", "32", "--seq-len", "2048"]


def _maybe(flag: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.just([]), values.map(lambda v: [flag, str(v)]))


def _flag(flag: str) -> st.SearchStrategy:
    return st.sampled_from([[], [flag], [f"--no-{flag.removeprefix('--')}"]])


PLAN_FLAGS = st.tuples(
    _maybe("--tp", st.sampled_from([1, 2, 8, 0, 10**30])),
    _maybe("--pp", st.sampled_from([1, 2, 4, 0, 10**30])),
    _maybe("--dp", st.sampled_from([1, 2, 4, -1])), _maybe("--cp", st.sampled_from([1, 2, 0])),
    _maybe("--ep", st.sampled_from([1, 2, 8, 0])), _maybe("--etp", st.sampled_from([1, 2, 0])),
    _maybe("--zero", st.sampled_from([0, 1, 2, 3, 4])),
    _maybe("--dp-shard", st.sampled_from([1, 2, 0])),
    _maybe("--micro-batch-size", st.sampled_from([1, 2, 0, 10**30])),
    _maybe("--schedule", st.sampled_from([*SCHEDULE_NAMES, "bogus"])),
    _maybe("--vpp", st.sampled_from([1, 2, 3, 0])),
    _maybe("--recompute", st.sampled_from(["none", "selective", "full", "most"])),
    _flag("--sp"), _flag("--offload"), _flag("--tp-overlap"), _flag("--ep-overlap"),
    _maybe("--first-stage-layers", st.sampled_from([1, 3, 0, 10**30])),
    _maybe("--axis-order", st.sampled_from(["tp-cp-ep-dp-pp", "pp-dp-ep-cp-tp", "tp-tp"])),
).map(lambda parts: [a for p in parts for a in p])

JOB_FLAGS = st.tuples(
    _maybe("--model", st.sampled_from(["debug", "llama3-8b", "mixtral-8x7b", "gpt3-175b"])),
    _maybe("--cluster", st.sampled_from(["dgx-h100", "dgx-a100", "mi300x", "gb200-nvl72"])),
    _maybe("--num-gpus", st.sampled_from([1, 2, 8, 16, 64])),
    _maybe("--global-batch-size", st.sampled_from([1, 8, 32, 64])),
    _maybe("--seq-len", st.sampled_from([128, 256, 2048, 4096, 8192])),
    _maybe("--precision", st.sampled_from(["bf16", "fp16", "fp8"])),
    _maybe("--token-budget", st.sampled_from(["1e12", "3.6e13"])),
    _maybe("--calibration", st.just("none")),
).map(lambda parts: [a for p in parts for a in p])
BAD_JOB_FLAGS = st.sampled_from([
    [], [], [], ["--model", "llama3-8"], ["--model", "no/such/file.toml"],
    ["--cluster", "dgx-h10"], ["--num-gpus", "0"], ["--num-gpus", "-8"],
    ["--num-gpus", str(2 * 2**20)], ["--num-gpus", str(10**9)], ["--num-gpus", str(10**30)],
    ["--global-batch-size", "0"], ["--global-batch-size", str(10**30)], ["--seq-len", "0"],
    ["--seq-len", "16384"], ["--seq-len", str(10**30)], ["--precision", "fp4"],
    ["--token-budget", "0"], ["--token-budget", "-1"], ["--token-budget", "inf"],
    ["--token-budget", "nan"], ["--token-budget", "1e300"], ["--calibration", "no/such.toml"],
    ["--num-gpus", "x"]])


@settings(max_examples=EXAMPLES["flags"], **FUZZ)
@given(command=st.sampled_from(["estimate", "simulate", "plan", "export"]),
       job=JOB_FLAGS, bad=BAD_JOB_FLAGS, plan=PLAN_FLAGS, json_out=st.booleans(),
       out=st.sampled_from([None, None, None, "-", "out.txt", "missing/out.txt", "."]),
       top=st.sampled_from([None, 1, 3, 0, 10**30]),
       export=st.sampled_from([None, "megatron", "torchtitan", "deepspeed", "bogus"]))
def test_flags(workdir, command, job, bad, plan, json_out, out, top, export):
    args = [command, *JOB, *job, *bad]
    if command == "plan":
        args += ["--top", str(top)] if top is not None else []
        args += ["--export", export] if export else []
        args += ["--simulate-top", "2"]
    else:
        args += plan
    if command == "export":
        args += ["--to", export or "megatron"]
    if out is not None and command in ("plan", "export", "simulate"):
        target = out if out == "-" else str(workdir / out)
        args += ["--trace" if command == "simulate" else "--out", target]
    check(args + (["--json"] if json_out and command != "export" else []))


@settings(max_examples=EXAMPLES["model"], **FUZZ)
@given(data=mutations(_preset("models", "llama3-8b")),
       suffix=st.sampled_from([".toml", ".json"]),
       command=st.sampled_from(["estimate", "plan"]))
def test_model_files(workdir, data, suffix, command):
    path = _write(workdir, data, suffix)
    check([command, *JOB, "--model", str(path), "--cluster", "dgx-h100", "--json"])


HF = json.loads((Path(__file__).parents[1] / "fixtures" / "hf" / "Meta-Llama-3-8B" /
                 "config.json").read_text())


@settings(max_examples=EXAMPLES["model"] // 2, **FUZZ)
@given(data=mutations(HF))
def test_hf_configs(workdir, data):
    folder = workdir / f"hf{next(_counter)}"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(data))
    check(["estimate", *JOB, "--model", str(folder), "--tp", "2", "--json"])


@settings(max_examples=EXAMPLES["cluster"], **FUZZ)
@given(data=mutations(_preset("clusters", "dgx-h100")),
       suffix=st.sampled_from([".toml", ".json"]),
       command=st.sampled_from(["estimate", "simulate", "plan"]))
def test_cluster_files(workdir, data, suffix, command):
    path = _write(workdir, data, suffix)
    extra = ["--pp", "2"] if command != "plan" else ["--top", "2"]
    check([command, *JOB, "--model", "llama3-8b", "--cluster", str(path), *extra, "--json"])


def _shipped_rows() -> list[dict[str, Any]]:
    from meshplan.validate.rows import load_runs

    rows = [r for r in load_runs() if r["source_id"] == "megatron2021"]
    return rows[:3]


MEASURED = ["tflops_per_gpu", "mfu", "tokens_per_sec_per_gpu", "iteration_time_s",
            "num_gpus", "tp", "pp", "seq_length", "hidden_size", "num_layers",
            "global_batch_size", "gpu_type", "id"]


@settings(max_examples=EXAMPLES["runs"], **FUZZ)
@given(edits=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(MEASURED),
                                st.one_of(VALUES, st.just(1e9))), max_size=3),
       json_out=st.booleans())
def test_runs_files(workdir, edits, json_out):
    rows = json.loads(json.dumps(_shipped_rows()))
    for i, key, value in edits:
        rows[i][key] = value
    path = workdir / f"runs{next(_counter)}.json"
    path.write_text(json.dumps(rows))
    code, out, _ = check(["validate", "--runs", str(path), "--analytic"]
                         + (["--json"] if json_out else []))
    if code == 0 and json_out:
        for row in json.loads(out)["rows"]:
            assert row["measured"] < 1e8, row  # 1e9 TFLOP/s (or tokens/s) rows are skipped


@settings(max_examples=EXAMPLES["bytes"], **FUZZ)
@given(raw=st.one_of(st.binary(max_size=64), st.just(b"\xff\xfe\x00name = 1"),
                     st.just("name = 'caf\u00e9'".encode("latin-1"))),
       kind=st.sampled_from(["--model", "--cluster", "--runs", "--calibration"]),
       suffix=st.sampled_from([".toml", ".json"]))
def test_binary_files(workdir, raw, kind, suffix):
    path = workdir / f"b{next(_counter)}{suffix}"
    path.write_bytes(raw)
    if kind == "--runs":
        args = ["validate", "--runs", str(path), "--analytic"]
    else:
        args = ["estimate", *JOB, kind, str(path)]
    code, _, _ = check(args)
    assert code == 2 or kind == "--calibration"  # an empty file is an empty calibration
