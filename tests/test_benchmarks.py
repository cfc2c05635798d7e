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
    assert "ratio" in capsys.readouterr().out
