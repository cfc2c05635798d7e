"""``instantid batch`` split across processes: every output made by exactly one process, resumable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _demo import REPO

from instantid.sharding import shard_of

JOB = REPO / "examples" / "jobs.yaml"  # 1 identity x 3 prompts x 2 seeds = 6 outputs


def _run(out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "instantid.cli", "batch", str(JOB), "--demo", "--demo-cache-dir", str(cache),
               "--steps", "1", "--width", "64", "--height", "64", "-o", str(out), *extra]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_split_the_rows_and_a_rerun_has_nothing_to_do(tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "demo"
    first = _run(out, cache, "--shard", "0/1")  # builds the demo weights once, makes nothing twice below
    first.communicate(timeout=600)
    for png in out.rglob("*.png"):
        png.unlink()
    for sidecar in out.rglob("*.json"):
        sidecar.unlink()
    runs = [_run(out, cache, "--shard", f"{i}/2") for i in range(2)]
    results = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in results]
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if p.name != "contact_sheet.png")
    assert len(made) == 6
    for index, (stdout, _) in enumerate(results):  # each process took exactly its own share
        share = sum(shard_of(m, 2) == index for m in made)
        assert f"(shard {index}/2: {share} of them), 0 already done, {share} to generate" in stdout, stdout
    assert 0 < sum(shard_of(m, 2) == 0 for m in made) < 6  # both processes had work
    assert (out / "contact_sheet.png").exists()  # the process that finished last drew it
    again = _run(out, cache, "--shard", "1/2")
    stdout, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and "0 to generate" in stdout
