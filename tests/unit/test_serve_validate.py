"""`meshplan serve validate`: rebuilding published serving runs, predicting them, the report's
shape, the overhead fit with leave-one-source-out, and bad input."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from meshplan.errors import MeshplanError
from meshplan.serve.deployment import resolve
from meshplan.serve.iteration import IterationCost
from meshplan.serve.loop import simulate as simulate_requests
from meshplan.serve.validate import build_case, load_serving_runs, predict, validate_row
from meshplan.serve.validate.calibrate import calibrate, overheads
from meshplan.serve.validate.case import StaticBatch, Unbuildable
from meshplan.serve.validate.predict import deployment
from meshplan.serve.validate.rebuild import SHAREGPT
from meshplan.serve.workload import Lengths, Workload, draw
from meshplan.specs.io import load_cluster
from meshplan.specs.power import clock_fraction


@pytest.fixture(scope="module")
def runs():
    return {r["id"]: r for r in load_serving_runs()}


def row_like(runs, **changes):
    """A copy of a shipped static-batch row with nested fields changed ("group.key": value)."""
    row = copy.deepcopy(runs["splitwise-llama2-70b-h100-80gb-tp4-p512-b1"])
    for path, value in changes.items():
        group, key = path.split(".")
        row[group][key] = value
    return row


def test_shipped_runs_all_rebuild(runs):
    for row in runs.values():
        case = build_case(row)
        assert case.model.num_layers == row["model"]["layers"]
        s = case.spec
        assert s.tp * s.pp * s.instances == row["hardware"]["num_gpus"], row["id"]


def test_power_cap_scales_compute_peaks_by_the_sustained_clock_and_spares_bandwidth(runs):
    capped = build_case(runs["splitwise-llama2-70b-h100-80gb-pcap-tp4-p512-b1"])
    full = build_case(runs["splitwise-llama2-70b-h100-80gb-tp4-p512-b1"])
    a, b = capped.cluster.accelerator, full.cluster.accelerator
    assert a.peak("bf16") / b.peak("bf16") == pytest.approx(clock_fraction(0.7))
    assert a.memory_bandwidth == b.memory_bandwidth
    assert any("power-capped to 70%" in n for n in capped.assumptions)


def test_a_gpu_without_a_preset_comes_from_the_catalog(runs):
    case = build_case(runs["llmservingsim-vllm-rtx4090-llama-3.1-8b"])
    acc = case.cluster.accelerator
    assert acc.peak("bf16") == 165.2e12 and acc.memory_bandwidth == 1008e9
    assert case.cluster.network[0].name == "pcie"
    assert any("no cluster preset" in n for n in case.assumptions)
    assert case.spec.num_gpu_blocks == 2588


def test_an_unknown_engine_gets_the_closest_profile_as_an_assumption(runs):
    case = build_case(row_like(runs, **{"engine.name": "SomeNewEngine"}))
    assert case.spec.engine == "vllm"
    assert any("SomeNewEngine" in n for n in case.assumptions)


def test_vllm_before_v1_gets_the_v0_profile(runs):
    case = build_case(runs["vllmblog-h100-8b-sharegpt-vllm-qps2"])
    assert case.spec.engine == "vllm-v0"
    assert any("V0 engine" in n for n in case.assumptions)
    newer = build_case(runs["llmservingsim-vllm-rtx4090-llama-3.1-8b"])
    assert newer.spec.engine == "vllm" and newer.spec.enable_chunked_prefill is True


def test_tensorrt_llm_before_its_pytorch_backend_and_cpp_runtimes_get_the_engine_profile(
        runs):
    """TensorRT engines (before 1.0; the Triton backend's `v0.11`, not its `r24.07` tag) and
    the C++ runtimes behind the TensorRT-LLM profile; the PyTorch backend keeps `trtllm`."""
    for version, expected in (("v0.5", "trtllm-engine"), ("v0.6.1", "trtllm-engine"),
                              ("r24.07 (Triton TRT-LLM backend v0.11)", "trtllm-engine"),
                              ("1.0", "trtllm"), ("r25.10 (backend v1.1)", "trtllm")):
        row = row_like(runs, **{"engine.name": "TensorRT-LLM", "engine.version": version})
        assert build_case(row).spec.engine == expected, version
    lmdeploy = row_like(runs, **{"engine.name": "LMDeploy", "engine.version": "0.6.0a0"})
    assert build_case(lmdeploy).spec.engine == "trtllm-engine"
    overview = next(r for r in runs.values() if "PyTorch" in str(r["engine"]["name"]))
    assert build_case(overview).spec.engine == "trtllm"


def test_dataset_means_get_a_lognormal_with_the_documented_sigma(runs):
    case = build_case(runs["vllmblog-h100-8b-sharegpt-vllm-qps2"])
    w = case.workload
    assert isinstance(w, Workload) and w.arrival == "poisson" and w.rate == 2.0
    assert (w.input.kind, w.input.spread, w.input.max) == ("lognormal", *SHAREGPT["input"])
    assert (w.output.spread, w.output.max) == SHAREGPT["output"]
    assert w.input.mean == 202 and w.output.mean == 179
    # stated medians take precedence: sigma = sqrt(2 ln(mean / median))
    stated = build_case(runs["llmservingsim-vllm-rtx4090-llama-3.1-8b"]).workload
    assert stated.input.spread == pytest.approx(math.sqrt(2 * math.log(857.5 / 731.5)))


def test_sharegpt_output_shape_is_the_benchmark_samples(runs):
    """The ShareGPT reply lengths drawn for a row that gives only the means have the median /
    mean ratio measured on the benchmark's filtered ShareGPT (0.66-0.68,
    benchmarks/sharegpt_lengths.py) and never pass the sampler's 2044-token reply room."""
    out = build_case(runs["vllmblog-h100-8b-sharegpt-vllm-qpsinf"]).workload.output
    x = out.draw(np.random.default_rng(0), 100_000)
    assert 0.65 < float(np.median(x) / x.mean()) < 0.70
    assert x.max() <= 2044 and abs(x.mean() / 179 - 1) < 0.01


def test_blog_vllm_rows_carry_the_nightly_benchmark_batch_limit(runs):
    """vLLM 0.6.0's rows of the v0.6.0 blog ran with max_num_seqs 512 (the nightly-benchmark
    server parameters): the row's max_batch_size reaches the deployment."""
    case = build_case(runs["vllmblog-h100-8b-sharegpt-vllm-qpsinf"])
    assert case.spec.max_num_seqs == 512 and case.spec.engine == "vllm-v0"
    assert build_case(runs["vllmblog-h100-8b-sharegpt-vllm053-qpsinf"]).spec.max_num_seqs \
        is None


def test_static_batch_closed_form_equals_the_simulated_batch(runs):
    """A burst of B equal requests on a vLLM instance that holds them all: the first
    iteration prefills every prompt, the rest decode; TTFT and TPOT match the closed form."""
    row = row_like(runs, **{"workload.batch_size": 8, "workload.num_requests": 8,
                            "workload.input_len": 300, "workload.output_len": 20,
                            "scheduler.max_batch_size": 8})
    case = build_case(row)
    closed = predict(case)
    d = deployment(case)
    d = resolve(d.model, d.cluster, case.spec.model_copy(
        update={"max_num_batched_tokens": 8 * 300, "enable_chunked_prefill": False}))
    w = Workload(arrival="burst", num_requests=8, input=Lengths(mean=300),
                 output=Lengths(mean=20))
    sim = simulate_requests(d, draw(w)).metrics
    assert closed.metrics["prefill_time_ms"] == pytest.approx(sim.ttft_s[0] * 1e3, rel=1e-9)
    assert closed.metrics["decode_step_ms"] == pytest.approx(float(np.mean(sim.tpot_s)) * 1e3,
                                                             rel=1e-9)
    assert closed.metrics["output_tokens_per_s"] == pytest.approx(
        8 * 20 / float(sim.finish_s.max()), rel=1e-9)


def test_decode_of_a_static_batch_is_bound_by_reading_the_weights(runs):
    """Llama-2-70B in fp16 on 4 H100s: a decode step at batch 1 reads 1/4 of ~138 GB, so it
    takes at least that over the HBM bandwidth (3.35 TB/s)."""
    case = build_case(runs["splitwise-llama2-70b-h100-80gb-tp4-p512-b1"])
    step = predict(case).metrics["decode_step_ms"] / 1e3
    floor = 2 * 69e9 / 4 / 3.35e12
    assert floor < step < 3 * floor


def test_row_json_has_the_documented_shape(runs):
    out = validate_row(runs["kipply-ft-13b-a100-40gb-tp1"])
    assert set(out) >= {"id", "scenario", "metrics", "skipped", "assumptions"}
    assert out["skipped"] is None
    m = out["metrics"]["prefill_time_ms"]
    assert m["measured"] == 63.17
    assert m["error"] == pytest.approx(m["predicted"] / m["measured"] - 1)
    assert set(out["metrics"]) == {"prefill_time_ms", "decode_step_ms", "e2e_ms.mean"}


def test_an_unbuildable_row_is_skipped_with_its_reason(runs):
    row = row_like(runs, **{"model.layers": None})
    with pytest.raises(Unbuildable):
        build_case(row)
    out = validate_row(row)
    assert "layers" in out["skipped"]
    assert all(m["predicted"] is None for m in out["metrics"].values())


def test_a_batch_too_big_for_the_kv_cache_is_predicted_not_to_fit(runs):
    out = validate_row(row_like(runs, **{"workload.batch_size": 4096,
                                         "workload.input_len": 4096}))
    assert out["skipped"].startswith("predicted not to fit")


def test_calibration_recovers_the_overheads_that_made_the_data():
    """Rows whose 'measured' values the simulator produced at a known grid point: the fit
    finds that point, with and without each source."""
    base = load_serving_runs()
    rows = [copy.deepcopy(r) for r in base if r["id"] in (
        "splitwise-llama2-70b-h100-80gb-tp4-p512-b1",
        "splitwise-llama2-70b-h100-80gb-tp8-p512-b16",
        "splitwise-bloom-176b-a100-80gb-tp8-p512-b1")]
    truth = (4e-3, 40e-6)
    for i, row in enumerate(rows):
        row["source"]["source_id"] = f"synthetic-{i % 2}"
        pred = predict(build_case(row), overheads("vllm", truth)).metrics
        row["metrics"]["prefill_time_ms"] = pred["prefill_time_ms"]
        row["metrics"]["decode_step_ms"] = pred["decode_step_ms"]
    grid = [(a, b) for a in (1e-3, 4e-3, 16e-3) for b in (10e-6, 40e-6)]
    fit = calibrate(rows, grid, workers=1)
    assert fit.fitted == {"vllm": truth}
    assert set(fit.held_out.values()) == {truth}
    errors = [m["error"] for r in fit.loso for m in r["metrics"].values()]
    assert max(abs(e) for e in errors) < 1e-9


def test_bad_runs_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MeshplanError, match="malformed JSON"):
        load_serving_runs(bad)
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(MeshplanError, match="JSON list"):
        load_serving_runs(bad)
    bad.write_text("[]")
    with pytest.raises(MeshplanError, match="no runs"):
        load_serving_runs(bad)
    bad.write_text(json.dumps([{"id": "x", "scenario": "online"}]))
    with pytest.raises(MeshplanError, match="lacks 'model'"):
        load_serving_runs(bad)


def test_cli_serve_validate_json(tmp_path, runs):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([runs["kipply-ft-13b-a100-40gb-tp1"],
                                runs["trtllm05-a100-llama7b-tp1-b1-i128-ttft"]]))
    p = subprocess.run([sys.executable, "-m", "meshplan", "serve", "validate", "--runs",
                        str(path), "--json"], capture_output=True, text=True, check=True)
    out = json.loads(p.stdout)
    assert [r["id"] for r in out["rows"]] == ["kipply-ft-13b-a100-40gb-tp1",
                                              "trtllm05-a100-llama7b-tp1-b1-i128-ttft"]
    assert out["summary"]["all"]["pairs"] == 4
    missing = subprocess.run([sys.executable, "-m", "meshplan", "serve", "validate", "--runs",
                              str(tmp_path / "none.json")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
    unwritable = subprocess.run([sys.executable, "-m", "meshplan", "serve", "calibrate",
                                 "--runs", str(path), "--out", str(tmp_path / "no" / "x.toml")],
                                capture_output=True, text=True)
    assert unwritable.returncode == 2 and "does not exist" in unwritable.stderr


def test_catalog_cluster_of_unknown_key_is_an_error():
    from meshplan.specs.catalog import catalog_cluster

    with pytest.raises(MeshplanError, match="not in the catalog"):
        catalog_cluster("NoSuchGPU")
    assert load_cluster("dgx-h100").accelerator.name == "H100-SXM5-80GB"


def test_static_batch_dataclass_is_what_static_rows_build(runs):
    case = build_case(runs["trtllm061-a100-gpt-j6b-tp1-b512-i128-o128"])
    assert case.workload == StaticBatch(512, 128, 128)
    d = deployment(case)
    assert IterationCost(d).model.num_layers == 28


@pytest.mark.parametrize(("path", "value", "why"), [
    ("workload.input_len", -5, "greater than 0"),
    ("workload.batch_size", 0, "positive count"),
    ("parallelism.tp", 0, "positive count"),
    ("parallelism.tp", "four", "wrong type"),
    ("workload.output_len", float("nan"), "wrong type"),
    ("hardware.gpu_memory_gb", -1, "must be positive"),
])
def test_a_row_with_an_impossible_field_is_skipped_with_its_reason(runs, path, value, why):
    out = validate_row(row_like(runs, **{path: value}))
    assert why in out["skipped"]
    assert all(m["predicted"] is None for m in out["metrics"].values())


def test_figures_without_a_relative_error_are_not_compared(runs):
    """A 0, negative or NaN measured figure would give an infinite or NaN error."""
    row = row_like(runs)
    row["metrics"]["prefill_time_ms"] = 0.0
    row["metrics"]["decode_step_ms"] = float("nan")
    assert validate_row(row)["metrics"] == {}


def test_every_engine_the_rules_name_is_shipped():
    from meshplan.serve.engines import engine_names
    from meshplan.serve.validate.rebuild import ENGINES, UNKNOWN_ENGINE

    assert {p for _, p, _ in ENGINES} | {UNKNOWN_ENGINE} <= set(engine_names())
