"""A cluster preset for every accelerator of the shipped hardware catalog (issue 13, part 2).

`CATALOG` is copied from ../shared/reference/hardware_catalog.yaml (id: dense bf16 and fp8
TFLOP/s, memory GB, memory bandwidth GB/s; the source key of each figure is in the yaml), so
the presets are checked against the catalog itself, not against the file they read.
"""

from __future__ import annotations

import pytest

from meshplan.errors import MeshplanError
from meshplan.specs.catalog import catalog_entries, expand_catalog
from meshplan.specs.io import (
    CALIBRATION_FILE,
    PRESETS,
    load_calibration,
    load_cluster,
    preset_names,
)
from meshplan.validate.hardware import gpu_rule

GIB = 1024**3
PRESETS_DIR = PRESETS / "clusters"
CATALOG: dict[str, tuple[str, str, float, float | None, float, float]] = {
    # id: (GPU name as a run would write it, preset, bf16, fp8, memory GB, HBM GB/s)
    "nvidia_v100_sxm2": ("Tesla V100 SXM2 32GB", "dgx-v100", 125, None, 32, 900),  # fp16 tensor
    "nvidia_v100_pcie": ("Tesla V100 PCIe 16GB", "v100-pcie", 112, None, 16, 900),
    "nvidia_a100_40gb_sxm4": ("NVIDIA A100 40GB", "dgx-a100-40gb", 312, None, 40, 1555),
    "nvidia_a100_80gb_sxm4": ("NVIDIA A100 SXM 80GB", "dgx-a100", 312, None, 80, 2039),
    "nvidia_a100_pcie": ("NVIDIA A100 80GB PCIe", "a100-pcie", 312, None, 80, 1935),
    "nvidia_h100_sxm5": ("NVIDIA H100 SXM 80GB", "dgx-h100", 989.4, 1978.9, 80, 3350),
    "nvidia_h100_pcie": ("NVIDIA H100 PCIe 80GB", "h100-pcie", 756, 1513, 80, 2000),
    "nvidia_h800_sxm5": ("NVIDIA H800 SXM5 80GB", "dgx-h800", 989.4, 1978.9, 80, 3350),
    "nvidia_h200_sxm": ("NVIDIA H200 SXM 141GB", "dgx-h200", 989.5, 1979, 141, 4800),
    "nvidia_b200_hgx": ("NVIDIA B200", "dgx-b200", 2250, 4500, 180, 8000),
    "nvidia_gb200_nvl72": ("NVIDIA GB200 (Blackwell)", "gb200-nvl72", 2500, 5000, 186, 8000),
    "nvidia_l40s": ("NVIDIA L40S", "l40s-pcie", 362.05, 733, 48, 864),
    "nvidia_l4": ("NVIDIA L4", "l4-pcie", 121, 242.5, 24, 300),
    "nvidia_rtx_4090": ("GeForce RTX 4090", "rtx4090-pcie", 165.2, 330.3, 24, 1008),
    "amd_mi250x": ("AMD Instinct MI250X", "mi250x", 383, None, 128, 3280),
    "amd_mi300x": ("AMD Instinct MI300X", "mi300x", 1307.4, 2614.9, 192, 5300),
    "amd_mi325x": ("AMD Instinct MI325X", "mi325x", 1300, 2610, 256, 6000),
    "google_tpu_v4": ("Google TPU v4", "tpu-v4", 275, None, 32, 1200),
    "google_tpu_v5e": ("Google TPU v5e", "tpu-v5e", 197, None, 16, 819),
    "google_tpu_v5p": ("Google TPU v5p", "tpu-v5p", 459, 459, 95, 2765),
    "google_tpu_v6e": ("Google TPU v6e (Trillium)", "tpu-v6e", 918, 918, 32, 1638),
    "intel_gaudi2": ("Intel Gaudi 2", "gaudi2", 432, 865, 96, 2460),
    "intel_gaudi3": ("Intel Gaudi 3", "gaudi3", 1835, 1835, 128, 3700),
}


@pytest.mark.parametrize("cid", sorted(CATALOG))
def test_every_catalog_accelerator_has_a_preset_with_its_figures(cid):
    gpu, preset, bf16, fp8, mem_gb, bw = CATALOG[cid]
    assert preset in preset_names("clusters")
    acc = load_cluster(preset).accelerator
    assert acc.peak("bf16") == pytest.approx(bf16 * 1e12)
    assert acc.peak_flops.get("fp8") == (None if fp8 is None else pytest.approx(fp8 * 1e12))
    assert acc.memory_bytes == mem_gb * GIB  # vendor GB read as GiB (hardware.md Sec. 3)
    assert acc.memory_bandwidth == pytest.approx(bw * 1e9)
    rule = gpu_rule(gpu)  # the training validator maps the run's GPU name to this preset
    assert rule is not None and rule.preset == preset


def test_catalog_entries_name_their_hardware_catalog_id_and_preset():
    entries = {e["catalog_id"]: e for e in catalog_entries().values() if "catalog_id" in e}
    # every catalog accelerator is either an entry or one of the hand-measured presets
    measured = {"nvidia_a100_80gb_sxm4", "nvidia_h100_sxm5", "nvidia_h200_sxm",
                "nvidia_b200_hgx", "nvidia_gb200_nvl72", "amd_mi300x"}
    assert set(entries) | measured == set(CATALOG)
    assert not set(entries) & measured  # one place per fact
    for cid, e in entries.items():
        assert e["preset"] == CATALOG[cid][1]


def test_silicon_inherits_or_says_uncalibrated():
    tables = load_calibration(CALIBRATION_FILE)
    h800, h100 = load_cluster("dgx-h800"), load_cluster("dgx-h100")
    assert h800.calibration.key == "H100"
    assert h800.calibration.gemm_scale == h100.calibration.gemm_scale
    assert load_cluster("dgx-a100-40gb").calibration.key == "A100"
    for name in ("tpu-v5p", "gaudi3", "mi250x", "l40s-pcie"):
        cluster = load_cluster(name)
        assert cluster.accelerator.calibration_key not in tables
        assert cluster.calibration.key is None and cluster.calibration.gemm_scale == 1.0
        assert "no fitted table" in (PRESETS_DIR / f"{name}.toml").read_text()


def test_catalog_preset_differs_from_its_template_only_where_the_catalog_says():
    h100_pcie, dgx = load_cluster("h100-pcie"), load_cluster("dgx-h100")
    assert h100_pcie.accelerator.gemm_efficiency == dgx.accelerator.gemm_efficiency
    assert h100_pcie.overlap == dgx.overlap
    assert h100_pcie.network[0].bus_efficiency == dgx.network[0].bus_efficiency  # by reference
    assert h100_pcie.host.bandwidth == 63e9


def test_bad_catalog_references_are_one_line_errors():
    with pytest.raises(MeshplanError, match="not in the catalog"):
        expand_catalog({"accelerator": {"catalog": "NoSuchGPU"}})
    with pytest.raises(MeshplanError, match="no cluster preset"):
        expand_catalog({"network": [{"bus_efficiency": "nowhere/nvlink"}]})
    with pytest.raises(MeshplanError, match="has no tier"):
        expand_catalog({"network": [{"bus_efficiency": "dgx-h100/nowhere"}]})



def test_every_shipped_run_maps_to_a_preset():
    """GB300, not in the hardware catalog, has its own preset from NVIDIA's published figures."""
    from meshplan.validate.rows import load_runs

    unmapped = {r["gpu_type"] for r in load_runs()
                if (rule := gpu_rule(r["gpu_type"] or "")) is None or rule.preset is None}
    assert unmapped == set()


def test_gb300_has_blackwell_ultra_figures_and_reads_b200_factors():
    """Per GPU (Verda's table of NVIDIA's figures): 2.5 / 5.0 PF dense BF16 / FP8 (the rack's
    180 / 360 PF over 72), 279 GB usable HBM3e at 8 TB/s, 800 Gb/s per GPU; B200's table."""
    c = load_cluster("gb300-nvl72")
    assert c.accelerator.peak("bf16") * 72 == pytest.approx(180e15)
    assert c.accelerator.peak("fp8") * 72 == pytest.approx(360e15)
    assert c.accelerator.memory_bytes == 279 * GIB
    assert c.network[0].domain_size == 72 and c.network[-1].bandwidth == pytest.approx(100e9)
    assert c.calibration.key == "B200"
    assert c.calibration.gemm_scale == load_cluster("dgx-b200").calibration.gemm_scale
