"""The pipeline benchmark runs at tiny scale and reports what it promises (no timing thresholds here)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


def test_pipeline_vs_stock_writes_a_comparable_report(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("pipeline_vs_stock", REPO / "benchmarks" / "pipeline_vs_stock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "report.json"
    module.main(["--device", "cpu", "--steps", "3", "--repeats", "1", "--size", "64", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"diffusers_controlnet", "instantid", "instantid_face_mask"}
    for row in report["summary"].values():
        assert row["step_s"] > 0 and row["total_s"] > 0
    assert set(report["ratio_over_stock"]) == {"instantid", "instantid_face_mask"}
    # On CPU the per-step CPU time (robust on a shared machine) is reported and compared too.
    assert all(r["step_cpu_s"] > 0 for r in report["ratio_over_stock"].values())
    assert "ratio" in capsys.readouterr().out


def test_gpu_speed_tiny_runs_every_section(tmp_path, capsys):
    """The GPU script end to end at tiny scale on CPU (dynamo with the eager backend): every section reports,
    the exact levers stay at rounding distance from eager while the lossy window and another face move the
    latents. The first-call section's fresh processes run once, in their own test below."""
    module = _gpu_speed()
    out = tmp_path / "gpu_speed.json"
    module.main(["--tiny", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                 "--skip", "first_call"])
    report = json.loads(out.read_text())
    variants = report["variants"]
    assert set(variants) == {"stock", "eager", "fuse_qkv", "channels_last", "vae_fp16", "compiled", "stock_compiled",
                             "lossy_identitynet_end_0.6"}
    identity = report["identity_effect"]["latent_mean_diff"]
    for name in ("fuse_qkv", "channels_last", "vae_fp16", "compiled"):
        assert variants[name]["latent_max_diff"] < 1e-3 < identity, name
    assert variants["lossy_identitynet_end_0.6"]["latent_mean_diff"] > 1e-3
    assert "first_call" not in report
    assert set(report["batches"]) == {"1", "2"} and all(r["images_per_s"] > 0 for r in report["batches"].values())
    assert set(report["presets"]) == {"lcm-lora", "lightning-4step", "hyper-sd-8step", "tcd"}
    lossy = report["lossy"]  # section 6: each lossy lever alone, its drift next to the identity effect
    assert {"eager", "identitynet_cache_2", "identitynet_cache_3"} <= set(lossy["levers"]) and "fp8" in lossy["skipped"]
    assert 0 < lossy["levers"]["identitynet_cache_2"]["latent_mean_diff"] < lossy["identity_effect"]["latent_mean_diff"]
    assert "step/stock" in capsys.readouterr().out


def _gpu_speed():
    spec = importlib.util.spec_from_file_location("gpu_speed", REPO / "benchmarks" / "gpu_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_speed_first_call_child_reports_its_timings(tmp_path):
    """Section 1's fresh process (the cold one; a warm one is the same command on the folder it filled): its
    command line parses, it builds, compiles and answers with one JSON line."""
    module = _gpu_speed()
    args = module.parse_args(["--tiny", "--device", "cpu", "--steps", "1"])
    report = module.child(args, tmp_path / "cache")
    assert "error" not in report, report
    assert report["build_s"] > 0 and report["first_call_s"] > 0 and report["second_call_s"] > 0
