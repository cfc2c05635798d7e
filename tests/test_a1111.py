"""The A1111 / Forge API (/sdapi/v1, /controlnet) over real HTTP on the demo model: payloads as A1111 clients send
them (the webuiapi client itself, and hand-written JSON in sd-webui-controlnet's unit shapes), the same pixels as
/v1/generate, the same keys, limits and queue; and ``seed: -1`` on our own API."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from _demo import FACE, FACES
from _service import serving
from PIL import Image

from instantid.api.settings import SCHEDULERS
from instantid.errors import InvalidInputError
from instantid.service.a1111_payload import SAMPLERS, scheduler_of
from instantid.service.auth import hash_key

FACE_B64 = base64.b64encode(FACE.read_bytes()).decode()
KEY = "iid_a1111-test-key"


def units(*, face: Any = FACE_B64, pose: Any = FACE_B64, **keypoints: Any) -> dict[str, Any]:
    """``alwayson_scripts`` as sd-webui-controlnet's InstantID examples send it."""
    return {"controlnet": {"args": [
        {"enabled": True, "module": "instant_id_face_embedding", "model": "ip-adapter_instant_id_sdxl [eb2d3ec0]",
         "image": face, "weight": 0.6, "resize_mode": "Crop and Resize", "pixel_perfect": False,
         "control_mode": "Balanced", "processor_res": 512, "threshold_a": -1, "threshold_b": -1},
        {"enabled": True, "module": "instant_id_face_keypoints", "model": "control_instant_id_sdxl [c5c25a50]",
         "image": pose, "weight": 0.9, "guidance_start": 0.2, "guidance_end": 0.8, "control_mode": "Balanced",
         **keypoints},
    ]}}


def txt2img(**fields: Any) -> dict[str, Any]:
    # 4 steps: IdentityNet's window 0.2-0.8 holds steps 1 and 2 (with 2 steps it would hold none).
    return {"prompt": "a knight", "negative_prompt": "blurry", "steps": 4, "cfg_scale": 3.0, "width": 64,
            "height": 64, "seed": 7, "sampler_name": "Euler a", "scheduler": "automatic", "batch_size": 1,
            "n_iter": 1, "alwayson_scripts": units(), **fields}


# What txt2img() with units() asks, in our own API's words: the same pixels are expected.
OUR_CALL = {
    "face": [FACE_B64], "prompt": "a knight", "negative_prompt": "blurry", "steps": 4, "guidance_scale": 3.0,
    "width": 64, "height": 64, "seed": 7, "scheduler": "euler_a", "adapter_strength": 0.6,
    "identitynet_strength": 0.9, "control_guidance_start": 0.2, "control_guidance_end": 0.8}


def pixels(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1]))) as png:
        return np.asarray(png.convert("RGB"))


@pytest.fixture(scope="module")
def client(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    from instantid.service.server import ServerSettings, create_app

    settings = ServerSettings(out_dir=tmp_path_factory.mktemp("a1111-jobs"), max_upload_mb=2,
                              mount_ui=False)
    with serving(create_app(settings, model=model)) as http:
        yield http


@pytest.fixture(scope="module")
def api(client: httpx.Client) -> Any:
    import webuiapi

    return webuiapi.WebUIApi(baseurl=str(client.base_url).rstrip("/") + "/sdapi/v1", steps=2)


def test_webuiapi_client_txt2img_with_instantid_units(api: Any) -> None:
    import webuiapi

    face = Image.open(FACE)
    result = api.txt2img(prompt="a knight", width=64, height=68, seed=-1, batch_size=2, n_iter=2, cfg_scale=4,
                         sampler_name="DPM++ 2M", controlnet_units=[
                             webuiapi.ControlNetUnit(image=face, module="instant_id_face_embedding",
                                                     model="ip-adapter_instant_id_sdxl", weight=0.7),
                             webuiapi.ControlNetUnit(image=face, module="instant_id_face_keypoints",
                                                     model="control_instant_id_sdxl", weight=0.5,
                                                     guidance_start=0.1, guidance_end=0.9)])
    info = result.info  # webuiapi json-decodes the info string
    assert len(result.images) == 4 and all(image.size == (64, 64) for image in result.images)  # 68 -> 64
    seed = info["seed"]
    assert 0 <= seed <= 2**32 - 1 and info["all_seeds"] == [seed + i for i in range(4)]  # -1 = random, reported
    used = info["instantid"]["settings"]
    assert (used["seed"], used["num_images"], used["guidance_scale"], used["scheduler"]) == (seed, 4, 4.0,
                                                                                            "dpm++_karras")
    assert (used["adapter_strength"], used["identitynet_strength"]) == (0.7, 0.5)
    assert (used["control_guidance_start"], used["control_guidance_end"]) == (0.1, 0.9)
    assert info["sampler_name"] == "DPM++ 2M Karras" and f"Seed: {seed + 3}," in info["infotexts"][3]
    # webuiapi sends every A1111 field at its default: none is refused, and none of them is reported as unknown.
    assert info["ignored"] == [] and result.parameters["seed"] == -1


def test_same_pixels_as_our_own_api_and_the_answer_shape(client: httpx.Client) -> None:
    answer = client.post("/sdapi/v1/txt2img", json=txt2img(tiling=False, my_field=1))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    info = json.loads(body["info"])
    assert base64.b64decode(body["images"][0])[:8] == b"\x89PNG\r\n\x1a\n"  # plain base64, no data: prefix
    assert info["seed"] == 7 and info["all_seeds"] == [7] and info["prompt"] == "a knight"
    assert info["negative_prompt"] == "blurry" and info["ignored"] == ["my_field"]
    assert body["parameters"]["alwayson_scripts"]["controlnet"]["args"][0]["image"] is None  # photos left out
    ours = client.post("/v1/generate?wait=true", json=OUR_CALL)
    assert ours.status_code == 200, ours.text
    assert np.array_equal(pixels(body["images"][0]), pixels(ours.json()["images"][0]))
    assert client.get(f"/v1/jobs/{info['job_id']}").json()["status"] == "done"  # a job like any other


def test_extra_controlnet_units_are_the_extra_controlnets_of_our_api(client: httpx.Client) -> None:
    """sd-webui-controlnet's canny / openpose / depth units add the published demo's extra ControlNets at the
    unit's weight, as our own ``canny_strength`` does: the same pixels; a unit with another source photo is 422."""
    with_canny = units()
    with_canny["controlnet"]["args"].append({"enabled": True, "module": "canny", "model": "diffusers_xl_canny_full",
                                             "weight": 0.7, "image": None})
    answer = client.post("/sdapi/v1/txt2img", json=txt2img(alwayson_scripts=with_canny))
    assert answer.status_code == 200, answer.text
    ours = client.post("/v1/generate?wait=true", json={**OUR_CALL, "canny_strength": 0.7})
    assert ours.status_code == 200, ours.text
    assert np.array_equal(pixels(answer.json()["images"][0]), pixels(ours.json()["images"][0]))
    plain = client.post("/sdapi/v1/txt2img", json=txt2img()).json()
    assert not np.array_equal(pixels(plain["images"][0]), pixels(answer.json()["images"][0]))
    other = units()
    other["controlnet"]["args"].append({"module": "depth_midas", "model": "x", "image": base64.b64encode(
        (FACES / "biden_1.jpg").read_bytes()).decode()})
    refused = client.post("/sdapi/v1/txt2img", json=txt2img(alwayson_scripts=other))
    assert refused.status_code == 422 and "made from the pose photo" in refused.json()["detail"]
    assert "canny" in client.get("/controlnet/module_list").json()["module_list"]


def test_an_ip_adapter_unit_is_a_style_reference(client: httpx.Client) -> None:
    """sd-webui-controlnet's IP-Adapter unit (``ip-adapter_clip_sdxl``) is InstantStyle's style picture at the
    unit's weight: the same pixels as our own ``style_image`` + ``style_strength``."""
    style = base64.b64encode((FACES / "biden_1.jpg").read_bytes()).decode()
    with_style = units()
    with_style["controlnet"]["args"].append({"module": "ip-adapter_clip_sdxl", "model": "ip-adapter_sdxl [7d943a46]",
                                             "weight": 0.8, "image": style})
    answer = client.post("/sdapi/v1/txt2img", json=txt2img(alwayson_scripts=with_style))
    assert answer.status_code == 200, answer.text
    ours = client.post("/v1/generate?wait=true", json={**OUR_CALL, "style_image": [style], "style_strength": 0.8})
    assert ours.status_code == 200, ours.text
    assert np.array_equal(pixels(answer.json()["images"][0]), pixels(ours.json()["images"][0]))
    assert json.loads(answer.json()["info"])["instantid"]["style_reference"]["strength"] == 0.8
    without = units()
    without["controlnet"]["args"].append({"module": "ip-adapter_clip_sdxl", "model": "ip-adapter_sdxl"})
    refused = client.post("/sdapi/v1/txt2img", json=txt2img(alwayson_scripts=without))
    assert refused.status_code == 422 and "style reference picture" in refused.json()["detail"]


def test_sd_webui_controlnet_unit_shapes_and_weights_reach_the_model(client: httpx.Client) -> None:
    """Several faces as a list of {image, mask} dicts, a data: URI, the old input_image name, a "ControlNet" key:
    all the same person; a different keypoints weight changes the picture, so the unit's weight is used."""
    several = [{"image": "data:image/jpeg;base64," + FACE_B64, "mask": None}, {"image": FACE_B64}]
    shaped = units(face=several)
    shaped["ControlNet"] = shaped.pop("controlnet")
    shaped["ControlNet"]["args"][1]["input_image"] = shaped["ControlNet"]["args"][1].pop("image")
    shaped["ControlNet"]["args"].append({"enabled": False, "module": "canny", "model": "x"})  # skipped
    first = client.post("/sdapi/v1/txt2img", json=txt2img(alwayson_scripts=shaped))
    assert first.status_code == 200, first.text
    references = json.loads(first.json()["info"])["instantid"]["references"]
    assert references == ["controlnet.args[0].image[0]", "controlnet.args[0].image[1]"]
    plain = client.post("/sdapi/v1/txt2img", json=txt2img()).json()
    weaker = units()
    weaker["controlnet"]["args"][1]["weight"] = 0.1
    changed = client.post("/sdapi/v1/txt2img", json=txt2img(alwayson_scripts=weaker)).json()
    assert not np.array_equal(pixels(plain["images"][0]), pixels(changed["images"][0]))


def test_img2img_starts_from_the_init_image(client: httpx.Client, api: Any, model: Any) -> None:
    import webuiapi

    init = Image.open(FACE).convert("RGB")
    empty = [webuiapi.ControlNetUnit(module="instant_id_face_embedding", model="ip-adapter_instant_id_sdxl"),
             webuiapi.ControlNetUnit(module="instant_id_face_keypoints", model="control_instant_id_sdxl")]
    result = api.img2img(images=[init], prompt="a knight", width=64, height=64, seed=3, steps=4,
                         denoising_strength=0.5, cfg_scale=3, sampler_name="Euler", controlnet_units=empty)
    instantid = result.info["instantid"]
    # Units without an image take the init image, as in sd-webui-controlnet.
    assert instantid["references"] == ["init_images[0]"] and instantid["init_image"] == "init_image"
    assert instantid["settings"]["denoising_strength"] == 0.5
    assert result.info["denoising_strength"] == 0.5
    settings = model.call_settings(None, prompt="a knight", width=64, height=64, seed=3, steps=4,
                                   guidance_scale=3.0, scheduler="euler", adapter_strength=1.0,
                                   identitynet_strength=1.0, denoising_strength=0.5)
    identity = model.prepare_identity([FACE.read_bytes()])
    direct = model.generate(identity, settings, init_image=init).images[0]
    assert np.array_equal(np.asarray(result.images[0].convert("RGB")), np.asarray(direct))
    other = api.img2img(images=[init.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], prompt="a knight", width=64,
                        height=64, seed=3, steps=4, denoising_strength=0.5, cfg_scale=3, sampler_name="Euler",
                        controlnet_units=empty)
    assert not np.array_equal(np.asarray(other.images[0]), np.asarray(result.images[0]))


def test_an_img2img_job_keeps_its_start_picture_in_the_job_folder(model: Any, tmp_path: Any) -> None:
    """A worker elsewhere runs the analysed job from the job folder: the start picture and its name come back
    exactly (the strength is a setting, kept with the settings)."""
    import io

    from instantid.api.settings import GenerationSettings
    from instantid.apps.swap import SwapOptions
    from instantid.apps.tasks import JobRequest, prepare
    from instantid.service.jobs import JobFiles
    from instantid.service.stored import load_prepared, save_prepared

    start = Image.open(FACE).convert("RGB").resize((48, 40))
    png = io.BytesIO()
    start.save(png, format="PNG")
    job = JobRequest("generate", GenerationSettings(seed=1, denoising_strength=0.6),
                     faces=(("me.jpg", FACE.read_bytes()),), init_image=("init_images[0]", png.getvalue()))
    files = JobFiles(tmp_path)
    save_prepared(files, "0" * 32, prepare(model.faces, job))
    kept = load_prepared(files, "0" * 32)
    assert kept.init_name == "init_images[0]" and np.array_equal(np.asarray(kept.init_image), np.asarray(start))
    with pytest.raises(InvalidInputError, match="init_image"):
        JobRequest("swap", GenerationSettings(), faces=job.faces, scene=("s", b"s"), swap=SwapOptions(),
                   init_image=job.init_image)


@pytest.mark.parametrize(
    ("path", "change", "message"),
    [
        ("txt2img", {"sampler_name": "Heun"}, "sampler_name: unknown sampler 'Heun'; this server has Euler"),
        ("txt2img", {"scheduler": "exponential"}, "scheduler: unknown scheduler 'exponential'"),
        ("txt2img", {"sampler_name": "Euler", "scheduler": "karras"}, "Euler runs without Karras sigmas here"),
        ("txt2img", {"cfg_scale": 99}, "cfg_scale must be between 0 and 30, got 99"),
        ("txt2img", {"batch_size": 8, "n_iter": 4}, "batch_size * n_iter must be between 1 and 16, got 32"),
        ("txt2img", {"styles": ["Watercolor", "Mars"]}, "styles: at most one style name"),
        ("txt2img", {"styles": ["Cubism"]}, "unknown style"),
        ("txt2img", {"enable_hr": True}, "enable_hr: not supported by this server"),
        ("txt2img", {"restore_faces": True}, "restore_faces: not supported"),
        ("txt2img", {"override_settings": {"sd_model_checkpoint": "sd_xl_turbo"}},
         "override_settings.sd_model_checkpoint: unknown model 'sd_xl_turbo'; this server runs 'base'"),
        ("txt2img", {"alwayson_scripts": {}}, "send the face photo in an instant_id_face_embedding unit"),
        ("txt2img", {"alwayson_scripts": {"controlnet": {"args": [{"module": "lineart", "model": "control_lineart"}]}}},
         "args[0].module: unknown module 'lineart'"),
        ("txt2img", {"alwayson_scripts": {"controlnet": {"args": [
            {"module": "instant_id_face_embedding", "model": "control_instant_id_sdxl", "image": FACE_B64}]}}},
         "args[0].model: module instant_id_face_embedding takes model ip-adapter_instant_id_sdxl"),
        ("txt2img", {"alwayson_scripts": units(face="not base64!")}, "args[0].image[0] is not valid base64"),
        ("txt2img", {"alwayson_scripts": units(face=base64.b64encode(b"text").decode())},
         "cannot read image controlnet.args[0].image[0]"),
        ("txt2img", {"alwayson_scripts": units(control_mode="ControlNet is more important")},
         "args[1].control_mode: only Balanced is supported"),
        ("txt2img", {"alwayson_scripts": units(guidance_start=0.9, guidance_end=0.1)},
         "instant_id_face_keypoints unit guidance_start must be below"),
        ("txt2img", {"sampler_name": None, "scheduler": "Nope"}, "scheduler: unknown scheduler 'Nope'; this server "
         "has automatic, uniform, karras"),
        ("img2img", {}, "init_images: send the picture to start from"),
        ("img2img", {"init_images": [FACE_B64], "denoising_strength": 0}, "denoising_strength must be above 0"),
        ("img2img", {"init_images": [FACE_B64], "denoising_strength": 0.2}, "denoising strength 0.2 of 4 steps runs "
         "no step"),
        ("img2img", {"init_images": [FACE_B64, FACE_B64]}, "init_images: one picture per request, got 2"),
        ("img2img", {"init_images": [FACE_B64], "mask": FACE_B64}, "mask: not supported"),
    ],
)
def test_what_cannot_be_honoured_is_one_line_422(client: httpx.Client, path: str, change: dict[str, Any],
                                                 message: str) -> None:
    answer = client.post(f"/sdapi/v1/{path}", json=txt2img(**change))
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert message in detail and "\n" not in detail, detail


def test_every_sampler_we_list_maps_onto_its_scheduler() -> None:
    for label, name in SAMPLERS.items():
        assert SCHEDULERS[name][2] == label
        assert scheduler_of({"sampler_name": label}) == name  # pre-1.9 clients: no scheduler field
        assert scheduler_of({"sampler_name": label.upper(), "scheduler": "uniform"}) == name.removesuffix("_karras")
    assert scheduler_of({"sampler_name": "DPM++ 2M", "scheduler": "automatic"}) == "dpm++_karras"  # A1111 1.9+
    assert scheduler_of({"sampler_name": "DPM++ 2M", "scheduler": "karras"}) == "dpm++_karras"
    assert scheduler_of({"sampler_index": "k_euler_a"}) == "euler_a" and scheduler_of({}) is None
    with pytest.raises(InvalidInputError, match="unknown sampler 'DPM\\+\\+ SDE'"):
        scheduler_of({"sampler_name": "DPM++ SDE"})


def test_read_only_endpoints_clients_call_first(client: httpx.Client) -> None:
    samplers = client.get("/sdapi/v1/samplers").json()
    assert [s["name"] for s in samplers] == [label for _, _, label in SCHEDULERS.values()]
    assert [s["name"] for s in client.get("/sdapi/v1/schedulers").json()] == ["automatic", "uniform", "karras"]
    (checkpoint,) = client.get("/sdapi/v1/sd-models").json()
    assert checkpoint["model_name"] == "base" and checkpoint["title"] == f"base [{checkpoint['hash']}]"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == checkpoint["title"]
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    assert client.get("/controlnet/version").json() == {"version": 2}
    assert client.get("/controlnet/module_list").json()["module_list"][:2] == ["instant_id_face_embedding",
                                                                               "instant_id_face_keypoints"]
    assert client.get("/controlnet/model_list").json() == {"model_list": ["ip-adapter_instant_id_sdxl",
                                                                          "control_instant_id_sdxl"]}
    named = client.post("/sdapi/v1/txt2img", json=txt2img(override_settings={
        "sd_model_checkpoint": checkpoint["title"], "CLIP_stop_at_last_layers": 2}))
    assert json.loads(named.json()["info"])["ignored"] == ["override_settings.CLIP_stop_at_last_layers"]


def test_same_keys_limits_and_queue_as_our_api(model: Any, tmp_path: Path) -> None:
    import webuiapi

    from instantid.service.server import ServerSettings, create_app

    keys = tmp_path / "keys.txt"
    keys.write_text(f"alice {hash_key(KEY)} rate=1\n")
    settings = ServerSettings(out_dir=tmp_path / "jobs", api_key_file=keys, mount_ui=False)
    with serving(create_app(settings, model=model)) as http:
        for path in ("/sdapi/v1/samplers", "/sdapi/v1/options", "/controlnet/model_list"):
            assert http.get(path).status_code == 401
        assert http.post("/sdapi/v1/txt2img", json=txt2img()).status_code == 401
        assert http.get("/sdapi/v1/samplers", headers={"Authorization": "Bearer wrong"}).status_code == 403
        api = webuiapi.WebUIApi(baseurl=str(http.base_url).rstrip("/") + "/sdapi/v1")
        api.set_auth("alice", KEY)  # A1111's --api-auth: HTTP Basic, the key as the password
        face = Image.open(FACE)
        embedding = webuiapi.ControlNetUnit(image=face, module="instant_id_face_embedding",
                                            model="ip-adapter_instant_id_sdxl")
        result = api.txt2img(prompt="x", width=64, height=64, steps=2, seed=1, controlnet_units=[embedding])
        assert result.info["all_seeds"] == [1] and result.info["instantid"]["settings"]["identitynet_strength"] == 0
        jobs = http.get("/v1/jobs", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert [job["job_id"] for job in jobs["jobs"]] == [result.info["job_id"]]  # owned by the key
        again = http.post("/sdapi/v1/txt2img", json=txt2img(), headers={"X-API-Key": KEY})
        assert again.status_code == 429 and "rate limit" in again.json()["detail"]  # the key's rate=1


@pytest.mark.parametrize("form", ["json", "multipart"])
def test_our_api_takes_seed_minus_one_as_random_and_records_the_seed_used(client: httpx.Client, form: str) -> None:
    fields = {"steps": 2, "width": 64, "height": 64, "seed": -1, "num_images": 2}
    if form == "json":
        answer = client.post("/v1/generate?wait=true", json={**fields, "face": [FACE_B64]})
    else:
        answer = client.post("/v1/generate?wait=true", files=[("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))],
                             data={k: str(v) for k, v in fields.items()})
    assert answer.status_code == 200, answer.text
    out = answer.json()
    seed = out["seeds"][0]
    assert 0 <= seed and out["seeds"] == [seed, seed + 1] and out["parameters"]["seed"] == seed
    assert out["info"]["settings"]["seed"] == seed
    assert client.post("/v1/generate", json={**fields, "seed": -2, "face": [FACE_B64]}).json()["detail"] == (
        "seed must be between -1 and 4294967295, got -2")
