"""``instantid prepare``: why nothing was kept, and sharded runs (--shard i/N, accelerate launch) into tar parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantid.cli import main
from instantid.errors import InvalidInputError
from instantid.sharding import parse_shard, shard_of
from instantid.training.data import FaceDataset, read_manifest
from instantid.training.shards import read_tar_index

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason=f"shared photos not found at {FACES}")
REPO = Path(__file__).resolve().parents[1]
# Kept: the first four (one face each; two fall into each of 2 shards). Dropped: two faces, no caption.
CAPTIONED = ["obama_1.jpg", "biden_1.jpg", "alex_lacamoire_2.jpg", "edge_rgba_32bit.png", "group_two_people.jpg"]
UNCAPTIONED = ["lecun_1.jpg"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs") / "photos"
    folder.mkdir()
    for name in CAPTIONED + UNCAPTIONED:
        photo = Image.open(FACES / name)
        photo.thumbnail((480, 480))  # detection time grows with pixels; faces stay well above dlib's minimum
        photo.save(folder / name)
        if name in CAPTIONED:
            (folder / name).with_suffix(".txt").write_text(f"a photo, {Path(name).stem}")
    return folder


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}


def _prepare(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "instantid.cli", "prepare", *args, "--face-backend", "dlib"]
    return subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_shards(photos: Path, out: Path, count: int = 2) -> list[dict]:
    """Every shard as its own process, all at once; their JSON summaries."""
    procs = [_prepare(str(photos), "--out", str(out), "--shard", f"{i}/{count}", "--samples-per-tar", "1")
             for i in range(count)]
    summaries = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        summaries.append(json.loads(stdout))
    return summaries


def _decided(out: Path) -> dict[str, list[str]]:
    """source key -> the shard files that hold it (kept in a tar part or listed as dropped)."""
    where: dict[str, list[str]] = {}
    for part in sorted(out.glob("data-*.tar")):
        for record in read_tar_index(part):
            where.setdefault(record["key"], []).append(part.name)
    for rejects in sorted(out.glob("rejects-*.jsonl")):
        for line in rejects.read_text().splitlines():
            where.setdefault(json.loads(line)["key"], []).append(rejects.name)
    return where


def test_prepare_that_keeps_nothing_says_why_and_exits_2(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uncaptioned = tmp_path / "uncaptioned"
    uncaptioned.mkdir()
    for name in ("obama_1.jpg", "biden_1.jpg"):
        (uncaptioned / name).write_bytes((FACES / name).read_bytes())
    assert main(["prepare", str(uncaptioned), "--out", str(tmp_path / "out"), "--face-backend", "dlib"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["kept"] == 0
    assert captured.err.strip().splitlines()[-1] == (
        "error: nothing kept: 0 of 2 image(s) passed (no_caption 2); give each image a caption (name.txt beside "
        "it, a .txt tar member, or --captions JSONL), or pass --allow-empty-caption")


def test_a_rerun_decides_the_dropped_images_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "obama_1.jpg").write_bytes((FACES / "obama_1.jpg").read_bytes())
    out = tmp_path / "out"
    args = ["prepare", str(photos), "--out", str(out), "--face-backend", "dlib"]
    assert main(args) == 2, "no caption yet"
    (photos / "obama_1.txt").write_text("a photo of a man")
    capsys.readouterr()
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["kept"], summary["dropped"], summary["this_run"]) == (1, 0, {"kept": 1})
    assert (out / "rejects.jsonl").read_text() == "", "the old drop is no longer listed"
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["skipped_already_done"] == 1


def test_shard_split_is_stable_and_complete() -> None:
    keys = [f"photos/{i}.jpg" for i in range(200)]
    owners = [shard_of(key, 4) for key in keys]
    assert owners == [shard_of(key, 4) for key in reversed(keys)][::-1], "independent of order"
    assert set(owners) == {0, 1, 2, 3} and min(owners.count(i) for i in range(4)) > 25
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(InvalidInputError, match="--shard must look like i/N"):
            parse_shard(bad)


@pytest.fixture(scope="module")
def sharded(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Two processes at once, --shard 0/2 and 1/2, into one folder; the folder and their summaries."""
    out = tmp_path_factory.mktemp("sharded") / "prepared"
    return out, _run_shards(photos, out)


def test_two_processes_split_the_inputs_into_tar_shards_and_resume(
    photos: Path, sharded: tuple[Path, list[dict]]
) -> None:
    out, first = sharded
    keys = {f"photos/{name}" for name in CAPTIONED + UNCAPTIONED}
    where = _decided(out)
    assert set(where) == keys, "every input decided"
    assert all(len(files) == 1 for files in where.values()), f"each input in exactly one place: {where}"
    for key, (file,) in where.items():
        assert f"{shard_of(key, 2):05d}-of-00002" in file, "in the shard its hash names"
    assert [(s["kept"], s["dropped"]) for s in first] == [(2, 1), (2, 1)]
    assert len(list(out.glob("data-*.tar"))) == 4, "one sample per part here"
    assert {s["shard"] for s in first} == {"0/2", "1/2"}

    # Webdataset layout: <key>.<ext> and <key>.json members, keys without dots.
    part = sorted(out.glob("data-*.tar"))[0]
    with tarfile.open(part) as tar:
        names = tar.getnames()
    stems = {name.split(".", 1)[0] for name in names}
    assert sorted(names) == sorted([f"{s}.json" for s in stems] + [n for n in names if not n.endswith(".json")])
    assert all(n.endswith((".jpg", ".png", ".json")) for n in names) and not any("/" in n for n in names)

    # A rerun keeps nothing twice; only the drops are decided again (the same way here), each listed once.
    parts_before = {p.name: p.read_bytes() for p in out.glob("data-*.tar")}
    again = _run_shards(photos, out)
    assert ["kept" in s["this_run"] for s in again] == [False, False]
    assert [(s["kept"], s["dropped"]) for s in again] == [(2, 1), (2, 1)]
    assert sum(s["skipped_already_done"] for s in again) == 4
    assert {p.name: p.read_bytes() for p in out.glob("data-*.tar")} == parts_before

    # A crash mid-part: the unfinished part was never renamed, so its samples are redone, nothing twice.
    last = sorted(out.glob("data-00000-of-00002-*.tar"))[-1]
    lost = {r["key"] for r in read_tar_index(last)}
    last.rename(out / f".{last.name}.tmp")
    resumed = _run_shards(photos, out)
    assert resumed[0]["this_run"].get("kept") == len(lost) and "kept" not in resumed[1]["this_run"]
    assert not list(out.glob(".*.tmp"))
    where = _decided(out)
    assert set(where) == keys and all(len(files) == 1 for files in where.values())


def test_training_reads_the_tar_shards_in_place(
    photos: Path, sharded: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    out = sharded[0]
    folder = tmp_path / "folder"
    assert main(["prepare", str(photos), "--out", str(folder), "--face-backend", "dlib"]) == 0
    from_tars = {r["key"]: r for r in read_manifest(out)}
    from_folder = {r["key"]: r for r in read_manifest(folder)}
    assert set(from_tars) == set(from_folder) == {f"photos/{n}" for n in CAPTIONED[:4]}
    tar_set = FaceDataset(out, 64, "dlib-128", 128)
    folder_set = FaceDataset(folder, 64, "dlib-128", 128)
    folder_index = {r["key"]: i for i, r in enumerate(folder_set.records)}
    for i, record in enumerate(tar_set.records):
        streamed, copied = tar_set[i], folder_set[folder_index[record["key"]]]
        assert streamed["caption"] == copied["caption"] == f"a photo, {Path(record['key']).stem}"
        for name in ("pixel_values", "kps_image", "embedding", "original_size", "crop_top_left"):
            np.testing.assert_array_equal(streamed[name].numpy(), copied[name].numpy(), err_msg=name)


def test_accelerate_launch_gives_each_process_its_shard(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    # --multi_gpu picks accelerate's torchrun launcher (one process each); without GPUs they run on the CPU.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "29517", "-m", "instantid.cli", "prepare", str(photos), "--out", str(out), "--face-backend", "dlib"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = sorted(json.loads((out / f"summary-{i:05d}-of-00002.json").read_text())["shard"] for i in (0, 1))
    assert summaries == ["0/2", "1/2"]
    where = _decided(out)
    assert set(where) == {f"photos/{name}" for name in CAPTIONED + UNCAPTIONED}
    assert all(len(files) == 1 for files in where.values())


def test_instantid_train_runs_on_the_tar_shards(sharded: tuple[Path, list[dict]], tmp_path: Path) -> None:
    from instantid.io.tiny import TinyConfig, build_tiny_instantid
    from instantid.training.trainer import LOG_FILE

    release = build_tiny_instantid(tmp_path / "tiny", TinyConfig(embedding_dim=128, embedding_space="dlib-128"))
    run = tmp_path / "run"
    code = main(["train", "--data-dir", str(sharded[0]), "--pretrained-model", str(release / "base"),
                 "--output-dir", str(run), "--embedding-space", "dlib-128", "--embedding-dim", "128",
                 "--resolution", "64", "--resampler-width", "128", "--train-batch-size", "2",
                 "--max-train-steps", "2", "--validation-steps", "0", "--dataloader-num-workers", "0",
                 "--lr-warmup-steps", "0"])
    assert code == 0
    steps = [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s][-1] == 2
    assert all(np.isfinite(s["loss"]) for s in steps if "loss" in s)
