"""`instantid download` against a stand-in Hub on 127.0.0.1 serving tiny files in the published layouts.

What each case stands in for: the real repositories' file lists and LFS metadata (tiny bytes, same paths and
headers), a CDN serving bad bytes (corrupt), a connection lost mid-file and a later rerun (drop), a typo'd or
deleted repository, a script without --accept-licences, a machine without network (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
from pathlib import Path

import pytest

from instantid.cli import main
from instantid.io.models import DEFAULT_CONTROLNETS, DEFAULT_MAPPERS
from tests._hub_standin import Repo, StandInHub

BASE = "stabilityai/stable-diffusion-xl-base-1.0"
ANTELOPE = "DIAMONIK7777/antelopev2"
LCM = "latent-consistency/lcm-lora-sdxl"


def _bytes(tag: str, size: int = 4096) -> bytes:
    return (hashlib.sha256(tag.encode()).digest() * (size // 32 + 1))[:size]


@pytest.fixture(scope="module")
def face_model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The antelopev2 repository's two files as tiny ONNX models with the real signatures (insightface loads
    them as the published ones), the other three as filler."""
    from instantid.faces.tiny import write_tiny_antelopev2

    folder = write_tiny_antelopev2(tmp_path_factory.mktemp("antelopev2"))
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    return {**files, **{name: _bytes(name) for name in ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx")}}


def _repos(antelope: dict[str, bytes]) -> dict[str, Repo]:
    weights = {name: _bytes(name) for name in (
        "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors", "text_encoder_2/model.safetensors")}
    base = {"model_index.json": b'{"_class_name": "StableDiffusionXLPipeline"}',
            "scheduler/scheduler_config.json": b"{}", "unet/config.json": b"{}", "vae/config.json": b"{}",
            "text_encoder/config.json": b"{}", "text_encoder_2/config.json": b"{}",
            "tokenizer/merges.txt": b"#version: 0.2\n", "tokenizer/vocab.json": b"{}",
            "tokenizer_2/merges.txt": b"#version: 0.2\n", "tokenizer_2/vocab.json": b"{}",
            # What the loaders must NOT fetch: fp16 variants, the single-file checkpoint, the card.
            "unet/diffusion_pytorch_model.fp16.safetensors": _bytes("fp16"),
            "sd_xl_base_1.0.safetensors": _bytes("single"), "README.md": b"# card", **weights}
    instantid = {"ControlNetModel/config.json": b'{"_class_name": "ControlNetModel"}',
                 "ControlNetModel/diffusion_pytorch_model.safetensors": _bytes("identitynet", 200_000),
                 "ip-adapter.bin": _bytes("adapter"), "README.md": b"# InstantID", "examples/0.png": b"png"}
    controls = {repo: Repo({"config.json": b'{"_class_name": "ControlNetModel"}',
                            "diffusion_pytorch_model.safetensors": _bytes(repo),
                            "diffusion_pytorch_model.bin": _bytes("not fetched"), "README.md": b"# card"},
                           "e" * 40, "openrail++") for repo in DEFAULT_CONTROLNETS.values()}
    maps = {repo: Repo({"config.json": b'{"model_type": "x"}', "preprocessor_config.json": b'{"size": 1}',
                        "model.safetensors": _bytes(repo), "pytorch_model.bin": _bytes("not fetched either")},
                       "f" * 40, licence)
            for repo, licence in zip(DEFAULT_MAPPERS.values(), ("apache-2.0", "cc-by-nc-4.0"), strict=True)}
    return {**controls, **maps, BASE: Repo(base, "a" * 40, "openrail++"),
            "InstantX/InstantID": Repo(instantid, "b" * 40, "apache-2.0"),
            ANTELOPE: Repo(antelope, "c" * 40), LCM: Repo({"pytorch_lora_weights.safetensors": _bytes("lcm")},
                                                           "d" * 40, "openrail++")}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, face_model_files: dict[str, bytes]):
    """The stand-in Hub as huggingface_hub's endpoint, an empty cache under tmp_path, network allowed."""
    from huggingface_hub import constants

    from instantid.faces import antelopev2
    from instantid.hub import catalog

    stand_in = StandInHub(_repos(face_model_files))
    server = stand_in.start()
    monkeypatch.setattr(constants, "ENDPOINT", stand_in.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        stand_in.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("INSTANTID_ANTELOPEV2", "INSTANTID_ANTELOPEV2_REPO", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(antelopev2, "DEFAULT_ROOT", tmp_path / "no-insightface")
    # The tiny stand-ins are not insightface's published files: pin their digests the way the real ones are.
    for name in catalog.ANTELOPEV2_SHA256:
        monkeypatch.setitem(catalog.ANTELOPEV2_SHA256, name, hashlib.sha256(face_model_files[name]).hexdigest())
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # a script: no terminal to answer the licence question
    yield stand_in
    server.shutdown()
    server.server_close()


def _cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _errors(captured: str) -> list[str]:
    """The error lines (stderr also carries progress)."""
    return [line for line in captured.splitlines() if line.startswith("error:")]


def _cache_files() -> list[Path]:
    return sorted(p for p in _cache().rglob("*") if p.is_file() and ".locks" not in p.parts)


def test_downloads_every_model_verified_and_the_loaders_find_them(hub: StandInHub, capsys) -> None:
    from huggingface_hub import hf_hub_download

    from instantid.faces.antelopev2 import find_antelopev2
    from instantid.io.models import ModelRefs, describe

    assert main(["download", "--accept-licences", "--preset", "lcm-lora"]) == 0
    out = capsys.readouterr().out
    for licence in ("CreativeML Open RAIL++-M", "Apache-2.0", "non-commercial research", "openrail++"):
        assert licence in out
    assert "verified: sha256 pinned" in out and "verified: sha256 hub-lfs" in out and "git-sha1 hub-git" in out
    fetched = {p.split("/resolve/")[1].split("/", 1)[1] for p in hub.downloads()}
    assert "unet/diffusion_pytorch_model.safetensors" in fetched and "ip-adapter.bin" in fetched
    assert {"glintr100.onnx", "scrfd_10g_bnkps.onnx", "pytorch_lora_weights.safetensors"} <= fetched
    # Only what the loaders read: no fp16 variant, single-file checkpoint, card, example or unused onnx.
    assert not fetched & {"unet/diffusion_pytorch_model.fp16.safetensors", "sd_xl_base_1.0.safetensors",
                          "README.md", "examples/0.png", "1k3d68.onnx", "genderage.onnx", "2d106det.onnx"}
    # The existing lookups, reading the cache only, find everything.
    folder = find_antelopev2()
    assert folder is not None and folder.parent.name == "snapshots"
    # generate's face step, as it runs with no options: the auto backend loads antelopev2 from the cache and
    # passes the published adapter's embedding-space check.
    from instantid.api.model_settings import ModelSettings
    from instantid.faces import SPACE_ANTELOPEV2

    analyzer = ModelSettings().face_analyzer()
    assert analyzer.space == SPACE_ANTELOPEV2 and analyzer.folder == folder
    assert all(problem is None for _, _, _, problem in describe(ModelRefs())), describe(ModelRefs())
    lora = hf_hub_download(LCM, "pytorch_lora_weights.safetensors", local_files_only=True)
    assert Path(lora).read_bytes() == _bytes("lcm")
    # Online too (no HF_HUB_OFFLINE), huggingface_hub's own snapshot/file lookups take the cache as complete.
    from instantid.io.models import DEFAULT_BASE, INSTANTID_REPO, resolve_adapter, resolve_base, resolve_identitynet

    count = len(hub.downloads())
    assert (resolve_base(DEFAULT_BASE) / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert resolve_identitynet(INSTANTID_REPO).name == "ControlNetModel"
    assert resolve_adapter(INSTANTID_REPO).read_bytes() == _bytes("adapter")
    assert len(hub.downloads()) == count
    assert main(["doctor"]) == 0
    assert "everything needed for real generation is present" in capsys.readouterr().out
    # A second run finds it all in the cache and fetches nothing.
    assert main(["download", "--accept-licences"]) == 0
    assert len(hub.downloads()) == count
    assert "cached: sha256 hub-lfs" in capsys.readouterr().out


def test_verify_removes_a_cached_file_gone_bad(hub: StandInHub, capsys) -> None:
    args = ["download", "--accept-licences", "--skip", "base", "--skip", "antelopev2"]
    assert main(args) == 0
    [pointer] = _cache().rglob("snapshots/*/ip-adapter.bin")
    blob = pointer.resolve()
    blob.write_bytes(b"bit rot" + blob.read_bytes()[7:])
    assert main(args) == 0  # without --verify a cached file is trusted
    assert main([*args, "--verify"]) == 2
    [err] = _errors(capsys.readouterr().err)
    assert "ip-adapter.bin" in err and "the file was deleted" in err
    assert not blob.exists() and not pointer.exists()
    assert main([*args, "--verify"]) == 0  # fetched again, good
    assert pointer.read_bytes() == _bytes("adapter")


def test_a_corrupted_file_is_one_line_and_never_enters_the_cache(hub: StandInHub, capsys) -> None:
    good = hub.repos["InstantX/InstantID"].files["ip-adapter.bin"]
    hub.corrupt[("InstantX/InstantID", "ip-adapter.bin")] = bytes(b ^ 1 for b in good)  # same size, other bytes
    assert main(["download", "--accept-licences", "--skip", "base", "--skip", "antelopev2"]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "ip-adapter.bin" in err[0] and "sha256" in err[0], err
    assert not any(p.name == hashlib.sha256(good).hexdigest() or p.suffix == ".incomplete" for p in _cache_files())
    assert not list(_cache().rglob("snapshots/*/ip-adapter.bin"))
    del hub.corrupt[("InstantX/InstantID", "ip-adapter.bin")]  # the CDN recovers: the rerun completes
    assert main(["download", "--accept-licences", "--skip", "base", "--skip", "antelopev2"]) == 0


def test_a_dropped_connection_resumes_on_the_next_run(hub: StandInHub, capsys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    key = ("InstantX/InstantID", "ControlNetModel/diffusion_pytorch_model.safetensors")
    size = len(hub.repos[key[0]].files[key[1]])
    hub.drop[key] = 65_536  # 64 KiB, then the connection drops and the server answers 503
    # huggingface_hub writes what it receives in chunks (10 MB by default): small ones, as for a big file.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16_384)
    args = ["download", "--accept-licences", "--skip", "base", "--skip", "antelopev2"]
    assert main(args) == 2
    [err] = _errors(capsys.readouterr().err)
    assert "interrupted at 65536 of" in err and "run the command again to resume" in err
    del hub.drop[key]
    before = len(hub.log)
    assert main(args) == 0
    resumed = [(rng, sent) for method, path, rng, sent in hub.log[before:] if path.endswith(key[1])]
    assert resumed == [("bytes=65536-", size - 65_536)]  # only the rest travelled
    [pointer] = _cache().rglob(f"snapshots/*/{key[1]}")
    assert pointer.read_bytes() == hub.repos[key[0]].files[key[1]]


def test_a_missing_repository_is_one_line_before_anything_is_fetched(hub: StandInHub, capsys) -> None:
    assert main(["download", "--accept-licences", "--antelopev2-repo", "nobody/no-such-repo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: no repository nobody/no-such-repo on {hub.url} (check the id, or log in if private)"]
    assert hub.downloads() == [] and _cache_files() == []
    assert main(["download", "--accept-licences", "--antelopev2-repo", "not a repo id"]) == 2
    assert "is not a Hub repository id" in capsys.readouterr().err


def test_licences_need_an_explicit_yes(hub: StandInHub, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["download"]) == 2  # a script without --accept-licences
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "error: the licences above need an explicit yes: run interactively, or pass --accept-licences if you "
        "accept them"]
    assert "non-commercial research" in captured.out
    assert hub.downloads() == [] and _cache_files() == []

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    assert main(["download"]) == 2
    assert "licences not accepted; nothing downloaded" in capsys.readouterr().err
    assert hub.downloads() == []
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    assert main(["download", "--skip", "base"]) == 0
    assert len(hub.downloads()) == 5  # IdentityNet config + weights, ip-adapter.bin, the two onnx files


def test_offline_is_one_line(hub: StandInHub, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "--accept-licences"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: offline (HF_HUB_OFFLINE is set)")
    assert hub.log == []


def test_a_mirror_with_other_antelopev2_bytes_is_refused_before_download(hub: StandInHub, capsys,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from instantid.hub import catalog

    monkeypatch.setitem(catalog.ANTELOPEV2_SHA256, "glintr100.onnx",
                        "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf")  # the published file's
    assert main(["download", "--accept-licences", "--skip", "base", "--skip", "instantid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "glintr100.onnx" in err[0] and "not the published file's" in err[0]
    assert hub.downloads() == []


def test_git_blob_digest_is_gits_own(tmp_path: Path) -> None:
    from instantid.hub.fetch import digest_of

    path = tmp_path / "config.json"
    path.write_bytes(b'{"a": 1}\n')
    git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    assert digest_of(path, "git-sha1", path.stat().st_size) == git.stdout.strip()


def test_controlnet_fetches_the_extra_nets_and_map_models_the_loaders_then_find(hub: StandInHub, capsys) -> None:
    from instantid.io.models import resolve_controlnet, resolve_mapper

    skip = ["--skip", "base", "--skip", "instantid", "--skip", "antelopev2"]
    assert main(["download", "--accept-licences", *skip, "--controlnet", "pose", "--controlnet", "depth"]) == 0
    out = capsys.readouterr().out
    assert "cc-by-nc-4.0" in out and "apache-2.0" in out  # each card's licence is shown before the yes
    fetched = {p.split("/resolve/")[1].split("/", 1)[1] for p in hub.downloads()}
    assert fetched == {"config.json", "diffusion_pytorch_model.safetensors", "preprocessor_config.json",
                       "model.safetensors"}, f"only what the loaders read (no .bin twin, no card): {fetched}"
    assert main(["doctor"]) == 1  # the extra nets are optional: doctor names them, the base is still missing
    assert ("extra ControlNets (optional, for --<kind>-strength): pose ready; canny not downloaded (`instantid "
            "download --controlnet canny`); depth ready") in capsys.readouterr().out
    for kind in ("pose", "depth"):
        assert (resolve_controlnet(kind, local_only=True) / "diffusion_pytorch_model.safetensors").is_file()
        assert (resolve_mapper(kind, local_only=True) / "model.safetensors").is_file()
    with pytest.raises(Exception, match="canny ControlNet.*instantid download --controlnet canny"):
        resolve_controlnet("canny", local_only=True)
    assert main(["download", "--accept-licences", "--controlnet", "openpose"]) == 2
    assert "--controlnet 'openpose': choose one of pose, canny, depth" in capsys.readouterr().err


def test_doctor_fix_downloads_what_is_missing_after_the_licence_yes(hub: StandInHub, tmp_path: Path, capsys) -> None:
    assert main(["doctor", "--fix"]) == 2  # a script without --accept-licences: the question cannot be answered
    assert _errors(capsys.readouterr().err) == [
        "error: the licences above need an explicit yes: run interactively, or pass --accept-licences if you "
        "accept them"]
    assert not hub.downloads() and not _cache_files()
    assert main(["doctor", "--fix", "--accept-licences"]) == 0
    out = capsys.readouterr().out
    assert "[MISSING] base" in out and "non-commercial research" in out and "checking again:" in out
    assert out.rstrip().endswith("everything needed for real generation is present")
    fetched = len(hub.downloads())
    assert main(["doctor", "--fix"]) == 0 and len(hub.downloads()) == fetched, "nothing missing: nothing fetched"
    assert main(["doctor", "--fix", "--base", str(tmp_path / "my-sdxl")]) == 1
    assert f"--fix cannot fetch the base {tmp_path / 'my-sdxl'}: a local path" in capsys.readouterr().out
    assert main(["doctor", "--accept-licences"]) == 2


STYLE = "h94/IP-Adapter"
STYLE_FILES = {"sdxl_models/ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder/config.json",
               "sdxl_models/image_encoder/model.safetensors"}


@pytest.fixture(scope="module")
def style_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """h94/IP-Adapter's layout with a tiny SDXL style adapter for the tiny pipeline (io/tiny), beside what the
    style loader must not fetch: the .bin twins, the other adapters, the SD1.5 encoder, the card."""
    from instantid.io.tiny import build_tiny_style_adapter

    root = build_tiny_style_adapter(tmp_path_factory.mktemp("style"))
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in (root / "sdxl_models").rglob("*") if p.is_file()}
    decoys = ("sdxl_models/image_encoder/pytorch_model.bin", "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
              "models/ip-adapter_sd15.safetensors", "models/image_encoder/model.safetensors")
    return Repo({**files, **{name: _bytes(name) for name in decoys}, "README.md": b"# IP-Adapter"}, "9" * 40,
                "apache-2.0")


@pytest.fixture
def style_hub(hub: StandInHub, style_repo: Repo) -> StandInHub:
    hub.repos[STYLE] = style_repo
    return hub


ONLY_STYLE = ["download", "--accept-licences", "--skip", "base", "--skip", "instantid", "--skip", "antelopev2",
              "--style-adapter"]


def test_style_adapter_download_is_what_a_style_image_loads_offline(style_hub: StandInHub, fresh_fixture_pipe,
                                                                    tiny_fixture_dir: Path, capsys,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import torch
    from huggingface_hub import constants
    from PIL import Image

    from instantid import draw_kps
    from instantid.io.loading import load_style_adapter
    from instantid.io.models import resolve_style_adapter

    assert main(["doctor"]) == 1
    assert ("[info] style adapter (optional, for --style-image): h94/IP-Adapter not downloaded (`instantid download "
            "--style-adapter`)") in capsys.readouterr().out
    assert main(ONLY_STYLE) == 0
    out = capsys.readouterr().out
    assert "style adapter (IP-Adapter SDXL + image encoder): h94/IP-Adapter@999999999999, 3 files" in out
    assert "licence: apache-2.0" in out and "verified: sha256 hub-lfs" in out and "git-sha1 hub-git" in out
    fetched = {p.split("/resolve/")[1].split("/", 1)[1] for p in style_hub.downloads()}
    assert fetched == STYLE_FILES, f"exactly what the style loader reads: {fetched}"
    assert main(["doctor"]) == 1  # optional: the base is still missing, the style adapter is named ready
    assert "style adapter (optional, for --style-image): h94/IP-Adapter ready (" in capsys.readouterr().out
    # Offline, the loader a style image goes through finds the files in the cache, and they act.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(style_hub.log)
    weights, encoder = resolve_style_adapter(STYLE)
    assert weights.read_bytes() == style_hub.repos[STYLE].files["sdxl_models/ip-adapter_sdxl.safetensors"]
    assert encoder.parts[-4:-2] == ("snapshots", "9" * 40) and (encoder / "model.safetensors").is_file()
    load_style_adapter(fresh_fixture_pipe, STYLE)
    face = np.load(tiny_fixture_dir / "face_embedding.npy")
    kps = draw_kps(Image.new("RGB", (64, 64)), [[22, 25], [42, 25], [32, 36], [24, 47], [40, 47]])
    picture = Image.fromarray((np.random.default_rng(1).random((48, 40, 3)) * 255).astype(np.uint8))
    runs = [fresh_fixture_pipe("a photo", image_embeds=face, image=kps, num_inference_steps=1, output_type="np",
                               style_image=picture, style_scale=scale, generator=torch.Generator().manual_seed(0),
                               ).images for scale in (0.0, 1.0)]
    assert np.abs(runs[1] - runs[0]).max() > 1e-3
    assert len(style_hub.log) == asked, "nothing was asked of the Hub offline"


def test_style_adapter_bad_download_is_one_line(style_hub: StandInHub, capsys,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from instantid.errors import MissingWeightsError
    from instantid.io.models import resolve_style_adapter

    key = (STYLE, "sdxl_models/image_encoder/model.safetensors")
    style_hub.corrupt[key] = _bytes("not the encoder", len(style_hub.repos[STYLE].files[key[1]]))
    assert main(ONLY_STYLE) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and key[1] in err[0] and "the file was deleted" in err[0], err
    assert not list(_cache().rglob(f"snapshots/*/{key[1]}"))
    with pytest.raises(MissingWeightsError, match=r"style adapter 'h94/IP-Adapter' not found .*`instantid download "
                                                  r"--style-adapter` fetches the published one"):
        resolve_style_adapter(STYLE, local_only=True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(ONLY_STYLE) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: offline (HF_HUB_OFFLINE is set)")
