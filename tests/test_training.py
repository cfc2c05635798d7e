"""Training: data preparation, the trainer (learning, exact resume), and export to the published layout."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instantid.faces.base import Face
from instantid.io.tiny import TinyConfig, build_tiny_components, build_tiny_instantid
from instantid.training.config import TrainConfig, parse_args
from instantid.training.data import FaceDataset, collate, read_manifest
from instantid.training.export import adapter_state_dict, export_release
from instantid.training.model import build_modules, diffusion_loss, encode_text, time_ids
from instantid.training.prepare import PrepareConfig, prepare
from instantid.training.synthetic import SPACE, make_identities, make_vae_like_trained, write_synthetic_dataset
from instantid.training.trainer import LOG_FILE, main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)
FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "instantid-tiny"
FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
RES = 64
DIM = 128


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("training")
    release = build_tiny_instantid(root / "tiny", TinyConfig(embedding_dim=DIM, embedding_space=SPACE))
    write_synthetic_dataset(root / "data", make_identities(4, DIM), per_identity=2, size=RES)
    # Latents that hold the picture rather than the random VAE's posterior noise (see make_vae_like_trained).
    make_vae_like_trained(release / "base", FaceDataset(root / "data", RES, SPACE, DIM))
    return {"root": root, "base": release / "base", "data": root / "data"}


def _config(setup: dict, out: str, **kw) -> TrainConfig:
    defaults = dict(
        data_dir=str(setup["data"]), output_dir=str(setup["root"] / out), resolution=RES,
        pretrained_model=str(setup["base"]), resampler_width=128, embedding_space=SPACE, embedding_dim=DIM,
        train_batch_size=4, learning_rate=1e-3, lr_scheduler="constant", lr_warmup_steps=0,
        checkpointing_steps=4, validation_steps=0, dataloader_num_workers=0,
    )
    return TrainConfig(**(defaults | kw))


def test_export_inverts_diffusers_conversion_on_the_published_fixture() -> None:
    """Published file -> diffusers modules -> our export gives back every key and tensor of the fixture."""
    from diffusers import UNet2DConditionModel

    from instantid.core.adapter import install_face_adapter, load_adapter_state_dict

    published, _ = load_adapter_state_dict(FIXTURE / "ip-adapter.bin")
    unet = UNet2DConditionModel.from_pretrained(FIXTURE / "base", subfolder="unet")
    install_face_adapter(unet, published, scale=1.0)
    exported = adapter_state_dict(unet)
    for group in ("image_proj", "ip_adapter"):
        assert set(exported[group]) == set(published[group])
        for key, tensor in published[group].items():
            assert torch.equal(exported[group][key], tensor.to(exported[group][key].dtype)), key


def _fixed_noise_loss(modules, batch: dict, timesteps=(200, 400, 600, 800)) -> float:
    """eps-MSE of every example at each of ``timesteps`` with noise fixed by a seed: the same draws before and
    after training, so the difference is the training, not the sampling."""
    with torch.no_grad():
        latents = modules.vae.encode(batch["pixel_values"]).latent_dist.mean * modules.vae.config.scaling_factor
        text, pooled = encode_text(batch["caption"], modules)
        gen, losses = torch.Generator().manual_seed(123), []
        for t in timesteps:
            steps = torch.full((latents.shape[0],), t)
            noise = torch.randn(latents.shape, generator=gen)
            noisy = modules.noise_scheduler.add_noise(latents, noise, steps)
            pred = modules.net(noisy, steps, text, pooled, time_ids(batch, RES), batch["embedding"], batch["kps_image"])
            losses.append(torch.nn.functional.mse_loss(pred, noise))
    return float(torch.stack(losses).mean())


def test_trainer_learns_resumes_exactly_and_exports(setup: dict) -> None:
    config = _config(setup, "run_a", max_train_steps=16, checkpointing_steps=8, learning_rate=3e-3)
    modules = build_modules(config)
    dataset = FaceDataset(config.data_dir, RES, SPACE, DIM)
    batch = collate([dataset[i] for i in range(len(dataset))])
    resampler = modules.net.unet.encoder_hid_proj.image_projection_layers[0]
    proj_in = resampler.proj_in.weight.detach().clone()

    before = _fixed_noise_loss(modules, batch)
    result = main(config)
    assert result["global_step"] == 16
    modules.net.load_trainable(Path(config.output_dir) / "checkpoint-16")
    after = _fixed_noise_loss(modules, batch)
    # Measured 0.75 (lr 0: 1.0).
    assert after < 0.9 * before, (before, after)
    # The face embedding reaches the loss: its gradient trains the Resampler's input projection. Measured a
    # relative change of ~0.7; with the embedding ignored (always zeroed) only weight decay moves it (~1e-4).
    moved = float((resampler.proj_in.weight.detach() - proj_in).norm() / proj_in.norm())
    assert moved > 0.05, moved

    # Resume from step 8 in another folder: steps 9..16 must repeat the uninterrupted run's losses.
    resumed = main(_config(setup, "run_b", max_train_steps=16, checkpointing_steps=8, learning_rate=3e-3,
                           resume_from_checkpoint=str(Path(config.output_dir) / "checkpoint-8")))
    assert sorted(resumed["losses"]) == list(range(9, 17))
    for step, loss in resumed["losses"].items():
        assert loss == pytest.approx(result["losses"][step], rel=1e-5, abs=1e-7), step
    log = [json.loads(line) for line in (Path(config.output_dir) / LOG_FILE).read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 17))

    # The release the trainer wrote has exactly the published key patterns and loads as plain data.
    raw = torch.load(result["release"] / "ip-adapter.bin", weights_only=True)
    fixture = torch.load(FIXTURE / "ip-adapter.bin", weights_only=True)
    pattern = {g: {re.sub(r"\d+", "N", k) for k in fixture[g]} for g in ("image_proj", "ip_adapter")}
    assert {g: {re.sub(r"\d+", "N", k) for k in raw[g]} for g in pattern} == pattern
    assert raw["meta"] == {"embedding_space": SPACE, "embedding_dim": str(DIM)}
    assert (result["release"] / "ControlNetModel" / "config.json").is_file()


@pytest.mark.parametrize("adapter_format", ["bin", "safetensors"])
def test_exported_release_reproduces_the_in_memory_model(setup: dict, tmp_path: Path, adapter_format: str) -> None:
    """export -> load_ip_adapter_instantid: the pipeline's output equals the in-memory (trained) model's."""
    from diffusers import ControlNetModel

    from instantid.core.adapter import inspect_adapter
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDPipeline

    modules = build_modules(_config(setup, "unused"))
    for p in modules.net.trainable_parameters():  # move away from the initialisation, as training does
        p.data.add_(0.01 * torch.randn_like(p))
    parts = build_tiny_components()
    export_release(modules.net.unet, modules.net.identitynet, tmp_path, SPACE, adapter_format, dtype=torch.float32)

    def pipe(unet, controlnet) -> StableDiffusionXLInstantIDPipeline:
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(setup["base"], subfolder="tokenizer")
        return StableDiffusionXLInstantIDPipeline(
            vae=modules.vae, text_encoder=modules.text_encoders[0], text_encoder_2=modules.text_encoders[1],
            tokenizer=tok, tokenizer_2=tok, unet=unet, controlnet=controlnet, scheduler=parts["scheduler"],
            add_watermarker=False,
        )

    memory = pipe(modules.net.unet, modules.net.identitynet)
    memory.adapter_spec = inspect_adapter(adapter_state_dict(modules.net.unet), "memory", {})
    fresh_unet = type(modules.net.unet).from_pretrained(setup["base"], subfolder="unet")
    loaded = pipe(fresh_unet, ControlNetModel.from_pretrained(tmp_path / "ControlNetModel"))
    spec = loaded.load_ip_adapter_instantid(tmp_path / f"ip-adapter.{adapter_format}", scale=1.0)
    assert spec.embedding_space == SPACE
    kps = Image.new("RGB", (RES, RES))
    args = dict(prompt="a person", image=kps, image_embeds=np.ones(DIM), num_inference_steps=2, output_type="latent")
    a = memory(**args, generator=torch.Generator().manual_seed(0)).images
    b = loaded(**args, generator=torch.Generator().manual_seed(0)).images
    # Same tensors, but BLAS may sum in another order for differently aligned buffers: ~1e-6 apart, not 0.
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


class _FakeAnalyzer:
    """Faces decided by image width: 64 -> one face, 65 -> two, 66 -> none, 67 -> a tiny face."""

    space = "fake-8"
    embedding_dim = 8
    calls = 0

    def analyze(self, image: Image.Image, name: str | None = None) -> list[Face]:
        _FakeAnalyzer.calls += 1
        count, side = {64: (1, 40), 65: (2, 40), 66: (0, 40), 67: (1, 5)}[image.width]
        kps = np.array([[20, 20], [40, 20], [30, 30], [22, 40], [38, 40]], np.float32)
        return [Face((10, 10, 10 + side, 10 + side), 0.9, kps, np.full(8, i, np.float32), self.space)
                for i in range(count)]


def _png(width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, 64), (200, 100, 50)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_prepare_filters_resumes_and_reads_tar_shards(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, width in (("one", 64), ("two", 65), ("none", 66), ("tiny", 67), ("uncaptioned", 64)):
        (photos / f"{name}.png").write_bytes(_png(width))
        if name != "uncaptioned":
            (photos / f"{name}.txt").write_text(f"a photo of {name}")
    (photos / "broken.jpg").write_bytes(b"not an image")
    (photos / "broken.txt").write_text("broken")
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for member, data in (("s1.png", _png(64)), ("s1.txt", b"from a shard")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "prepared"
    config = PrepareConfig(min_face_px=16, workers=2)
    summary = prepare([photos, shard], out, _FakeAnalyzer, config, progress=False)
    assert summary["kept"] == 2
    assert summary["dropped_by_reason"] == {
        "no_caption": 1, "no_face": 1, "small_face": 1, "too_many_faces": 1, "unreadable": 1,
    }
    records = {r["key"]: r for r in read_manifest(out)}
    assert set(records) == {"photos/one.png", "shard-000.tar/s1"}
    assert records["shard-000.tar/s1"]["caption"] == "from a shard"
    assert np.load(out / records["photos/one.png"]["embedding"]).shape == (8,)
    assert json.loads((out / "summary.json").read_text())["kept"] == 2

    _FakeAnalyzer.calls = 0
    again = prepare([photos, shard], out, _FakeAnalyzer, config, progress=False)
    # The kept ones are skipped; the drops are decided again (the same way), counted once, not twice.
    assert again["skipped_already_done"] == 2 and again["kept"] == 2
    assert again["dropped_by_reason"] == summary["dropped_by_reason"]
    assert _FakeAnalyzer.calls == 3, "only the captioned, readable drops are analysed again"


def test_prepare_on_real_photos_with_dlib(tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    from instantid.faces import create_face_analyzer

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("obama_1.jpg", "group_two_people.jpg"):
        (photos / name).write_bytes((FACES / name).read_bytes())
    captions = tmp_path / "captions.jsonl"
    captions.write_text("\n".join(json.dumps({"file": n, "caption": "a person"})
                                  for n in ("obama_1.jpg", "group_two_people.jpg")))
    summary = prepare([photos], tmp_path / "out", lambda: create_face_analyzer("dlib"), captions_jsonl=captions,
                      progress=False)
    assert summary["kept"] == 1 and summary["dropped_by_reason"] == {"too_many_faces": 1}
    (record,) = read_manifest(tmp_path / "out")
    assert record["space"] == "dlib-128" and record["embedding_dim"] == 128 and len(record["kps"]) == 5


def test_train_refuses_data_of_another_embedding_space(setup: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from instantid.cli import main as cli

    code = cli(["train", "--data_dir", str(setup["data"]), "--pretrained_model", str(setup["base"]),
                "--embedding_space", "antelopev2-512", "--embedding_dim", "512", "--output_dir",
                str(setup["root"] / "refused")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: the data in {setup['data']} holds {DIM}-d {SPACE} embeddings but training is set up for "
        f"--embedding-space antelopev2-512 --embedding-dim 512: pass --embedding-space {SPACE} --embedding-dim {DIM}, "
        "or prepare the data with the matching --face-backend")


def test_export_takes_a_run_folder_or_says_which_folder_to_give(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from instantid.cli import main as cli
    from instantid.training.export import find_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    _config({"data": "d", "root": tmp_path, "base": "b"}, "run").save(run / "train_config.json")
    assert cli(["export", str(run), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: the training run {run} has no checkpoint-N folder yet (its "
                                               f"final weights are in {run / 'release'} once training ends)")
    for step in (2, 10, 9):
        (run / f"checkpoint-{step}").mkdir()
    assert find_checkpoint(run) == run / "checkpoint-10", "by number, not by name"
    assert find_checkpoint(run / "checkpoint-2") == run / "checkpoint-2"
    assert cli(["export", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path} is neither a training run (a folder with train_config.json) nor one of its "
        "checkpoint-N folders: give the run's --output-dir or run/checkpoint-N")


@pytest.mark.parametrize(("text", "why"), [
    (None, "cannot read it (No such file or directory)"),
    ("not json", "not a JSON config (Expecting value: line 1 column 1 (char 0))"),
    ("[1, 2]", "expected a JSON object of config fields"),
    ('{"learning_rate": 0.1, "lr": 1}', "unknown field(s) lr"),
])
def test_a_bad_train_config_file_is_one_line(text: str | None, why: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from instantid.cli import main as cli

    config = tmp_path / "run.json"
    if text is not None:
        config.write_text(text)
    assert cli(["train", "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --config {config}: {why}"


def test_prepare_into_a_folder_under_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from instantid.cli import main as cli

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli(["prepare", str(tmp_path), "-o", str(blocker / "data")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --out {blocker / 'data'}: {blocker} is a file, not a "
                                               "folder; give another folder")


@pytest.mark.parametrize(("flag", "value", "line"), [
    ("--max-faces", "0", "--max-faces must be >= 1, got 0"),
    ("--min-face-px", "nan", "--min-face-px must be a number >= 0, got nan"),
    ("--min-face-fraction", "2", "--min-face-fraction must be between 0 and 1, got 2.0"),
    ("--min-score", "nan", "--min-score must be a finite number, got nan"),
    ("--workers", "0", "--workers must be >= 1, got 0"),
])
def test_a_prepare_filter_out_of_range_is_one_line_before_the_analysis(
        flag: str, value: str, line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from instantid.cli import main as cli

    assert cli(["prepare", str(tmp_path), "-o", str(tmp_path / "data"), flag, value]) == 2
    assert capsys.readouterr().err.strip() == f"error: {line}"
    assert not (tmp_path / "data").exists()


def test_parse_args_reads_every_field() -> None:
    config = parse_args(["--data_dir", "d", "--use_ema", "--resolution", "512", "--checkpoints_total_limit", "3"])
    assert (config.use_ema, config.resolution, config.checkpoints_total_limit) == (True, 512, 3)


def test_training_forward_is_the_pipelines_denoising_step(fixture_pipe) -> None:
    """InstantIDNet.forward on the inputs of a pipeline step gives that step's noise prediction, and runs the
    Resampler once (its tokens feed IdentityNet and the UNet)."""
    from instantid import draw_kps
    from instantid.training.model import InstantIDNet

    pipe = fixture_pipe
    emb = np.load(FIXTURE / "face_embedding.npy")
    kps = draw_kps(Image.new("RGB", (64, 64)), [[22, 24], [42, 24], [32, 34], [24, 44], [40, 44]])
    seen: dict = {}

    def capture(module, args, kwargs, output):
        seen.setdefault("sample", args[0].clone())
        seen.setdefault("t", args[1])
        seen.setdefault("pred", output[0].clone())

    hook = pipe.unet.register_forward_hook(capture, with_kwargs=True)
    try:
        pipe(prompt="a person", image=kps, image_embeds=emb, num_inference_steps=1, guidance_scale=1.0,
             controlnet_conditioning_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="latent")
    finally:
        hook.remove()
    text, _, pooled, _ = pipe.encode_prompt("a person", device=torch.device("cpu"), do_classifier_free_guidance=False)
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])  # original size, crop, target: as in training
    kps_tensor = torch.from_numpy(np.asarray(kps, np.float32) / 255.0).permute(2, 0, 1)[None]
    calls = []
    resampler = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    counter = resampler.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            pred = InstantIDNet(pipe.unet, pipe.controlnet)(
                seen["sample"], seen["t"].reshape(1), text, pooled, time_ids, torch.from_numpy(emb)[None], kps_tensor
            )
    finally:
        counter.remove()
    assert len(calls) == 1
    torch.testing.assert_close(pred, seen["pred"], rtol=0, atol=1e-5)


def test_min_snr_weighting_scales_each_example_by_min_snr_gamma_over_snr(setup: dict) -> None:
    """--snr-gamma weights an example at timestep t by min(SNR(t), gamma) / SNR(t) (epsilon prediction), as
    diffusers' scripts do; the draws (noise, timesteps) are the same with and without it."""
    modules = build_modules(_config(setup, "unused"))
    dataset = FaceDataset(setup["data"], RES, SPACE, DIM)
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        plain = diffusion_loss(modules, batch, torch.Generator().manual_seed(7), RES)
        weighted = diffusion_loss(modules, batch, torch.Generator().manual_seed(7), RES, snr_gamma=1.0)
    timesteps = torch.randint(0, 1000, (len(dataset),), generator=_after_latents_and_noise(batch))
    alpha_bar = modules.noise_scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    torch.testing.assert_close(weighted, plain * snr.clamp(max=1.0) / snr)
    assert (weighted < plain).any() and (weighted == plain).any()  # low-noise examples down-weighted, others kept


def _after_latents_and_noise(batch: dict) -> torch.Generator:
    """The generator diffusion_loss used, advanced past its two normal draws (VAE sample, noise) to the timesteps."""
    gen = torch.Generator().manual_seed(7)
    shape = (batch["pixel_values"].shape[0], 4, RES // 8, RES // 8)
    torch.randn(shape, generator=gen)
    torch.randn(shape, generator=gen)
    return gen
