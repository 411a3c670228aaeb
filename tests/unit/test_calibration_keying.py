"""Calibration belongs to the accelerator's silicon, not to a preset's name (issue 10, part 2):
a copied or user-written cluster file gets the factors the preset gets, presets on the same
die share them, and every result names the calibration it was costed with."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import meshplan
from meshplan import Job, MeshplanError, Plan
from meshplan.estimate import calibration_line
from meshplan.specs.io import CALIBRATION_FILE, PRESETS, load_cluster, preset_names

JOB = Job(global_batch_size=512, seq_len=8192)
PLAN = Plan(dp=64)
H100 = PRESETS / "clusters" / "dgx-h100.toml"


def test_every_preset_names_its_silicon_and_the_shipped_tables_are_silicon_keys() -> None:
    keys = {load_cluster(n).accelerator.calibration_key for n in preset_names("clusters")}
    shipped = set(tomllib.loads(CALIBRATION_FILE.read_text()))
    assert shipped <= keys
    assert not shipped & set(preset_names("clusters"))


def test_a_copied_preset_file_predicts_what_the_preset_does(tmp_path: Path) -> None:
    copy = tmp_path / "my-h100.toml"
    copy.write_text(H100.read_text())
    preset = meshplan.estimate("llama3-8b", "dgx-h100", JOB, PLAN)
    assert meshplan.estimate("llama3-8b", copy, JOB, PLAN).to_json() == preset.to_json()
    assert preset.calibration == {**preset.calibration, "file": "shipped", "key": "H100",
                                  "table": "H100"}


def test_a_user_written_file_with_the_same_silicon_gets_the_same_factors(tmp_path: Path) -> None:
    text = H100.read_text().replace('name = "dgx-h100"', 'name = "our-cluster"')
    text = text.replace('name = "H100-SXM5-80GB"', 'name = "H100 SXM (ours)"')
    mine = tmp_path / "ours.toml"
    mine.write_text(text)
    a, b = load_cluster("dgx-h100"), load_cluster(mine)
    assert b.calibration.gemm_scale == a.calibration.gemm_scale != 1.0
    assert (b.kernel_overhead, b.overlap.pp) == (a.kernel_overhead, a.overlap.pp)
    # Without the silicon field the accelerator's own name is the key: no table, raw curves.
    bare = tmp_path / "bare.toml"
    bare.write_text("\n".join(line for line in text.splitlines()
                              if not line.startswith("silicon")))
    raw = load_cluster(bare)
    assert raw.calibration.key is None and raw.calibration.gemm_scale == 1.0
    claims = tmp_path / "claims.toml"  # a file cannot claim a table it did not get
    claims.write_text(bare.read_text() + '\n[calibration]\nkey = "H100"\n')
    assert load_cluster(claims).calibration.key is None
    assert raw.kernel_overhead == 3e-5  # the file's own value, taken as written


def test_presets_on_one_die_share_factors_and_others_say_they_have_none() -> None:
    h100, h200 = load_cluster("dgx-h100"), load_cluster("dgx-h200")
    assert h200.accelerator.calibration_key == "H100"
    assert h200.calibration.gemm_scale == h100.calibration.gemm_scale
    b200, gb200 = load_cluster("dgx-b200"), load_cluster("gb200-nvl72")
    assert b200.calibration.attention_scale == gb200.calibration.attention_scale
    est = meshplan.estimate("llama3-8b", "mi300x", JOB, PLAN)
    assert est.calibration is not None and est.calibration["table"] is None
    assert "none for MI300X" in calibration_line(est.calibration)


DIES = {"GH100": ("H100", "H200", "H800"), "GA100": ("A100",), "GB100": ("B200", "GB200"),
        "GV100": ("V100",), "CDNA3": ("MI300X", "MI325X")}
"""Accelerator name prefixes on one die (hardware_catalog.yaml: same die, clocks and power
differ)."""


def test_every_preset_on_a_die_reads_that_dies_one_table() -> None:
    """A preset without its own runs never runs on raw factors (1.0) while a sibling die has
    a table: the power-capped, PCIe, 40 GB, H200 and H800 parts included."""
    by_die: dict[str, set[str]] = {}
    for name in preset_names("clusters"):
        cluster = load_cluster(name)
        acc = cluster.accelerator
        die = next((d for d, prefixes in DIES.items()
                    if acc.name.upper().startswith(tuple(p.upper() for p in prefixes))), None)
        if die is None:
            continue
        by_die.setdefault(die, set()).add(acc.calibration_key)
        if acc.calibration_key in tomllib.loads(CALIBRATION_FILE.read_text()):
            assert cluster.calibration.key == acc.calibration_key, name
    assert all(len(keys) == 1 for keys in by_die.values()), by_die
    assert by_die["GH100"] == {"H100"} and by_die["GB100"] == {"B200"}


def test_a_calibration_file_applies_by_silicon(tmp_path: Path) -> None:
    cal = tmp_path / "cal.toml"
    cal.write_text('[H100]\ngemm_scale = 0.5\nattention_scale = 0.9\n')
    copy = tmp_path / "copy.toml"
    copy.write_text(H100.read_text())
    for ref in ("dgx-h100", "dgx-h200", copy):
        c = load_cluster(ref, cal)
        assert (c.calibration.gemm_scale, c.calibration.key, c.calibration.file) == (
            0.5, "H100", str(cal))
    assert load_cluster("dgx-a100", cal).calibration.key is None
    none = meshplan.estimate("llama3-8b", copy, JOB, PLAN, calibration="none")
    assert none.calibration is not None
    assert none.calibration["table"] is None and none.calibration["file"] == "none"


def test_a_calibration_file_keyed_by_preset_names_is_refused_with_the_fix(tmp_path: Path
                                                                          ) -> None:
    old = tmp_path / "old.toml"
    old.write_text("[dgx-h100]\ngemm_scale = 0.6\n")
    with pytest.raises(MeshplanError, match=r"\[dgx-h100\] names a cluster preset.*\[H100\]"):
        load_cluster("dgx-h100", old)


def test_plan_and_estimate_json_name_the_calibration() -> None:
    args = ["--model", "llama3-8b", "--cluster", "dgx-h200", "--num-gpus", "8",
            "--global-batch-size", "64", "--seq-len", "4096", "--json"]
    run = [sys.executable, "-m", "meshplan"]
    est = json.loads(subprocess.run([*run, "estimate", *args, "--tp", "2"], check=True,
                                    capture_output=True, text=True).stdout)
    assert est["calibration"]["table"] == "H100" and est["calibration"]["file"] == "shipped"
    plans = json.loads(subprocess.run([*run, "plan", *args, "--top", "2"], check=True,
                                      capture_output=True, text=True).stdout)["plans"]
    assert plans and all(p["calibration"] == est["calibration"] for p in plans)
    sim = meshplan.simulate("llama3-8b", "dgx-h100", Job(global_batch_size=32, seq_len=4096),
                            Plan(tp=2, pp=4, dp=2))
    assert sim.estimate.calibration is not None and sim.estimate.calibration["key"] == "H100"
