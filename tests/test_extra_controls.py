"""The published demo's extra ControlNets (pose, canny, depth) and image-to-image, through the public API and the CLI.

Stand-ins: the demo's tiny random ControlNets and map models (the real diffusers / transformers classes in their
published layouts, :func:`instantid.io.tiny.build_tiny_controls`); the real weights (thibaud's OpenPose ControlNet,
diffusers' canny and depth ControlNets, ViTPose, Depth-Anything) load through the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _demo import FACE, FACES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from instantid.api.regions import face_region_mask
from instantid.cli import main
from instantid.core.control_maps import DepthMapper, PoseMapper, canny_map, draw_openpose
from instantid.core.keypoints import draw_kps
from instantid.errors import IncompatibleWeightsError, InvalidInputError, MissingWeightsError

POSE = FACES / "obama_1.jpg"
FAST: dict[str, Any] = {"steps": 2, "width": 64, "height": 64, "seed": 5}


def pixels(result: Any) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.fixture(scope="module")
def me(demo_app: Any) -> Any:
    return demo_app.prepare_identity(FACE)


def test_each_extra_controlnet_changes_the_picture_and_zero_loads_nothing(
        demo_app: Any, me: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = pixels(demo_app.generate(me, **FAST))
    with monkeypatch.context() as patch:
        patch.setattr(demo_app.controls, "load", lambda *a: pytest.fail("strength 0 must load no extra net"))
        again = pixels(demo_app.generate(me, **FAST, pose_strength=0.0, canny_strength=0.0, depth_strength=0.0))
    assert (again == plain).all(), "strength 0 must be plain InstantID, bit for bit"
    for kind in ("pose", "canny", "depth"):
        one = pixels(demo_app.generate(me, **FAST, **{f"{kind}_strength": 0.8}))
        assert np.abs(one - plain).max() > 0, f"the {kind} ControlNet did not reach the picture"


def test_the_api_runs_exactly_the_multicontrolnet_pipeline_with_the_demo_maps(demo_app: Any, me: Any) -> None:
    """generate() == StableDiffusionXLInstantIDPipeline with MultiControlNetModel([IdentityNet, pose, canny]) called
    by hand with the maps made as the published demo makes them (photo resized to the output size, then mapped)."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDPipeline

    ours = demo_app.generate(me, **FAST, pose_strength=0.6, canny_strength=0.4, identitynet_strength=0.7)
    pose_net, pose_map = demo_app.controls.load(demo_app.pipe, "pose")
    canny_net, _ = demo_app.controls.load(demo_app.pipe, "canny")
    pipe = StableDiffusionXLInstantIDPipeline.from_pipe(
        demo_app.pipe, controlnet=MultiControlNetModel([demo_app.pipe.controlnet, pose_net, canny_net]))
    pipe.set_progress_bar_config(disable=True)
    photo = Image.open(FACE).convert("RGB").resize((64, 64), Image.LANCZOS)
    scale = np.array((64 / me.pose_size[0], 64 / me.pose_size[1]))
    kps = draw_kps(Image.new("RGB", (64, 64)), me.pose_face.kps * scale)
    images = pipe(
        prompt="", image=[kps, pose_map(photo), canny_map(photo)], image_embeds=me.embedding,
        control_mask=face_region_mask(me.pose_face, (64, 64), tuple(scale)),
        controlnet_conditioning_scale=[0.7, 0.6, 0.4],
        ip_adapter_scale=0.8, num_inference_steps=2, guidance_scale=5.0, height=64, width=64,
        generator=[torch.Generator().manual_seed(5)],
    ).images
    assert (np.asarray(images[0], dtype=np.int16) == pixels(ours)).all()
    assert ours.metadata["models"]["pose_controlnet"].endswith("controlnet-pose")
    assert ours.metadata["settings"]["canny_strength"] == 0.4


def test_maps_come_from_the_pose_photo_else_the_face_photo(demo_app: Any, me: Any) -> None:
    posed = demo_app.prepare_identity(FACE, pose=POSE)
    size = (64, 80)
    from_face = demo_app.controls.maps(demo_app.pipe, me, ("canny",), size)[0]
    from_pose = demo_app.controls.maps(demo_app.pipe, posed, ("canny",), size)[0]
    expected = canny_map(Image.open(POSE).convert("RGB").resize(size, Image.LANCZOS))
    assert from_pose.size == size and (np.asarray(from_pose) == np.asarray(expected)).all()
    assert (np.asarray(from_face) != np.asarray(from_pose)).any()


def test_canny_map_is_the_published_demos() -> None:
    import cv2

    photo = Image.open(FACE).convert("RGB")
    demo = cv2.Canny(cv2.cvtColor(np.array(photo), cv2.COLOR_RGB2BGR), 100, 200)  # gradio_demo get_canny_image
    ours = np.asarray(canny_map(photo))
    assert ours.shape == (*demo.shape, 3) and (ours[..., 0] == demo).all() and demo.any()


def test_openpose_drawing_puts_each_point_in_its_colour_and_skips_unsure_points() -> None:
    points = np.zeros((17, 2))
    points[0] = (50, 20)  # nose
    points[5], points[6] = (70, 60), (30, 60)  # left, right shoulder: the neck is drawn between them
    scores = np.zeros(17)
    scores[[0, 5, 6]] = 0.9
    picture = np.asarray(draw_openpose((100, 120), points, scores))
    assert picture.shape == (120, 100, 3)
    assert tuple(picture[20, 50]) == (255, 0, 0)  # nose: OpenPose point 0's colour
    assert tuple(picture[60, 50]) == (255, 85, 0)  # neck: point 1
    assert tuple(picture[60, 30]) == (255, 170, 0)  # right shoulder: point 2 (x, y not swapped)
    scores[0] = 0.1
    assert not np.asarray(draw_openpose((100, 120), points, scores))[20, 50].any()


def test_map_models_are_the_real_transformers_classes(demo_app: Any) -> None:
    photo = Image.open(FACE).convert("RGB").resize((90, 70))
    refs = demo_app.controls.refs
    pose = PoseMapper.from_pretrained(refs.map_model("pose"))
    depth = DepthMapper.from_pretrained(refs.map_model("depth"))
    assert type(pose.model).__name__ == "VitPoseForPoseEstimation"
    assert type(depth.model).__name__ == "DepthAnythingForDepthEstimation"
    drawn, deep = np.asarray(pose(photo)), np.asarray(depth(photo))
    assert drawn.shape == deep.shape == (70, 90, 3)
    assert deep.min() == 0 and deep.max() == 255  # min-max scaled as the demo does


def test_a_pose_model_with_other_keypoints_is_one_line(demo_app: Any, tmp_path: Path) -> None:
    from transformers import VitPoseConfig, VitPoseForPoseEstimation

    pose = PoseMapper.from_pretrained(demo_app.controls.refs.map_model("pose"))
    pose.model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=pose.model.config.backbone_config,
                                                        num_labels=5)).eval()
    with pytest.raises(IncompatibleWeightsError, match="5 keypoints, not COCO's 17"):
        pose(Image.open(FACE))


def test_missing_controlnet_names_it_and_the_download_command(demo_app: Any, tmp_path: Path) -> None:
    from instantid.io.loading import load_controlnet

    with pytest.raises(MissingWeightsError, match=r"depth ControlNet '.*nope'.*instantid download --controlnet depth"):
        load_controlnet("depth", str(tmp_path / "nope"), dtype=torch.float32)


def test_image_to_image_starts_from_the_init_picture(demo_app: Any, me: Any) -> None:
    from instantid.pipelines.inpaint import img2img_pipeline

    init = Image.open(POSE).convert("RGB")
    half = demo_app.generate(me, **{**FAST, "steps": 4}, init_image=init, denoising_strength=0.5)
    most = demo_app.generate(me, **{**FAST, "steps": 4}, init_image=init, denoising_strength=0.9)
    assert np.abs(pixels(half) - pixels(most)).max() > 0 and half.metadata["init_image"] == "init image"
    scale = np.array((64 / me.pose_size[0], 64 / me.pose_size[1]))
    by_hand = img2img_pipeline(demo_app.pipe)(
        prompt="", image=init.resize((64, 64), Image.LANCZOS),
        control_image=draw_kps(Image.new("RGB", (64, 64)), me.pose_face.kps * scale), strength=0.5,
        image_embeds=me.embedding, control_mask=face_region_mask(me.pose_face, (64, 64), tuple(scale)),
        controlnet_conditioning_scale=0.8, ip_adapter_scale=0.8, num_inference_steps=4, guidance_scale=5.0,
        height=64, width=64, generator=[torch.Generator().manual_seed(5)],
    ).images
    assert (np.asarray(by_hand[0], dtype=np.int16) == pixels(half)).all()
    with_depth = demo_app.generate(me, **{**FAST, "steps": 4}, init_image=init, denoising_strength=0.5,
                                   depth_strength=0.9)
    assert np.abs(pixels(with_depth) - pixels(half)).max() > 0
    with pytest.raises(InvalidInputError, match="denoising_strength is for image-to-image"):
        demo_app.generate(me, **FAST, denoising_strength=0.5)


@pytest.mark.usefixtures("demo_loads")
def test_cli_runs_the_extra_controlnets_and_image_to_image(tmp_path: Path) -> None:
    import json

    assert main(["generate", str(FACE), "--pose", str(POSE), "-p", "x", "--steps", "2", "--width", "64", "--height",
                 "64", "--seed", "3", "--canny-strength", "0.4", "--init-image", str(POSE), "--denoising-strength",
                 "0.7", "-o", str(tmp_path)]) == 0
    metadata = json.loads((tmp_path / "x_s3.json").read_text())
    assert metadata["settings"]["canny_strength"] == 0.4 and metadata["settings"]["denoising_strength"] == 0.7
    assert metadata["init_image"] == POSE.name and metadata["models"]["canny_controlnet"] == "controlnet-canny"


@pytest.mark.parametrize(("args", "message"), [
    (["--denoising-strength", "0.5"], "--denoising-strength is for image-to-image: give --init-image too"),
    (["--pose-strength", "2"], "--pose-strength must be between 0 and 1.5"),
    (["--init-image", "missing.png"], "missing.png"),
    (["--demo", "--depth-controlnet", "x/y"], "--demo uses its own tiny weights; drop --depth-controlnet"),
])
def test_cli_bad_input_is_one_line_exit_2(args: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(FACE), "-o", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_cli_refuses_extra_controls_for_several_people(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--person", str(FACE), "--person", str(POSE), "--canny-strength", "0.3", "-o",
                 str(tmp_path)]) == 2
    assert "one-person pictures" in capsys.readouterr().err


def test_http_takes_the_strengths_and_refuses_bad_ones_with_422(model: Any, tmp_path: Path) -> None:
    """No request-parsing code of its own: the fields derive from the settings, the maps from the pose photo."""
    from _service import serving

    from instantid.service.server import ServerSettings, create_app

    fast = {"steps": "2", "width": "64", "height": "64", "seed": "4"}
    files = [("face", ("me.jpg", FACE.read_bytes(), "image/jpeg")), ("pose", ("pose.jpg", POSE.read_bytes(),
                                                                                "image/jpeg"))]
    with serving(create_app(ServerSettings(out_dir=tmp_path), model=model)) as http:
        done = http.post("/v1/generate?wait=true", files=files, data={**fast, "depth_strength": "0.5"})
        assert done.status_code == 200, done.text
        assert done.json()["info"]["settings"]["depth_strength"] == 0.5
        assert done.json()["info"]["models"]["depth_controlnet"].endswith("controlnet-depth")
        bad = http.post("/v1/generate", files=files, data={**fast, "canny_strength": "1.6"})
        assert bad.status_code == 422 and "canny_strength must be between 0 and 1.5" in bad.json()["detail"]
        group = http.post("/v1/group", files=[("person0", ("a.jpg", FACE.read_bytes(), "image/jpeg")),
                                              ("person1", ("b.jpg", POSE.read_bytes(), "image/jpeg"))],
                          data={**fast, "pose_strength": "0.4"})
        assert group.status_code == 422 and "pose_strength is not used by /v1/group" in group.json()["detail"]
        assert "pose_strength" in http.get("/openapi.json").text


def test_web_ui_takes_an_init_image_and_the_strengths(model: Any, tmp_path: Path) -> None:
    from instantid.io.outputs import read_metadata
    from instantid.webui import UIContext
    from instantid.webui.portrait import PortraitTab
    from instantid.webui.who import WhoPanel

    ctx = UIContext(get_model=lambda: model, out_dir=tmp_path)
    tab = PortraitTab(ctx, WhoPanel(ctx))
    assert {"pose_strength", "canny_strength", "depth_strength", "denoising_strength"} <= set(tab.by_name)
    photos, *_ = tab.who.upload([str(FACE)], (), None, "", "auto")
    values = {"steps": 2, "width": "64", "height": "64", "seed": "6", "canny_strength": 0.5,
              "denoising_strength": 0.6}
    gallery, _ = tab.generate(photos, None, values, init=Image.open(POSE))
    metadata = read_metadata(Path(gallery[0][0]))
    assert metadata["init_image"] == "init image" and metadata["settings"]["canny_strength"] == 0.5
    with pytest.raises(InvalidInputError, match="denoising_strength is for image-to-image"):
        tab.generate(photos, None, values)


def test_an_analysed_job_keeps_the_control_photo_and_init_image(model: Any, tmp_path: Path) -> None:
    """A UI job run by a worker elsewhere (or after a restart) reads both back from the job folder."""
    from instantid.api.settings import make_settings
    from instantid.apps.tasks import Prepared
    from instantid.service.jobs import JobFiles, new_job_id
    from instantid.service.stored import load_prepared, save_prepared

    identity = model.prepare_identity(FACE, pose=POSE)
    init = Image.open(FACE).convert("RGB")
    files, job_id = JobFiles(tmp_path), new_job_id()
    save_prepared(files, job_id, Prepared("generate", identity=identity, init_image=init, init_name="start.png"))
    back = load_prepared(files, job_id)
    assert np.array_equal(np.asarray(back.identity.control_photo), np.asarray(identity.control_photo))
    assert np.array_equal(np.asarray(back.init_image), np.asarray(init)) and back.init_name == "start.png"
    settings = {"steps": 2, "width": 64, "height": 64, "seed": 2, "depth_strength": 0.5, "denoising_strength": 0.7}
    ran = back.run(model, make_settings(settings))
    direct = model.generate(identity, **settings, init_image=init)
    assert np.array_equal(pixels(ran), pixels(direct))


def test_http_image_to_image_multipart_and_json(model: Any, tmp_path: Path) -> None:
    import base64
    import io

    from _service import serving

    from instantid.service.server import ServerSettings, create_app

    fast = {"steps": "2", "width": "64", "height": "64", "seed": "8", "denoising_strength": "0.6"}
    face = ("face", ("me.jpg", FACE.read_bytes(), "image/jpeg"))
    with serving(create_app(ServerSettings(out_dir=tmp_path), model=model)) as http:
        form = http.post("/v1/generate?wait=true", files=[face, ("init_image", ("start.jpg", POSE.read_bytes(),
                                                                                "image/jpeg"))], data=fast)
        assert form.status_code == 200, form.text
        assert form.json()["info"]["init_image"] == "start.jpg"
        body = {"face": [base64.b64encode(FACE.read_bytes()).decode()], **{k: float(v) for k, v in fast.items()},
                "init_image": base64.b64encode(POSE.read_bytes()).decode()}
        body["steps"], body["width"], body["height"], body["seed"] = 2, 64, 64, 8
        as_json = http.post("/v1/generate?wait=true", json=body)
        assert as_json.status_code == 200, as_json.text
        decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0].split(",", 1)[1]))))
                   for r in (form, as_json)]
        assert np.array_equal(*decoded), "the same picture either way"
        refused = http.post("/v1/generate", files=[face], data=fast)
        assert refused.status_code == 422 and "give an init_image too" in refused.json()["detail"]
        swap = http.post("/v1/swap", files=[face, ("scene", ("s.jpg", POSE.read_bytes(), "image/jpeg")),
                                            ("init_image", ("i.jpg", POSE.read_bytes(), "image/jpeg"))])
        assert swap.status_code == 422 and "init_image" in swap.json()["detail"]
        schema = http.get("/openapi.json").text
        assert '"init_image"' in schema


def test_an_identity_keeps_its_map_photo_at_most_the_largest_output_side() -> None:
    from instantid.api.face_side import MAP_PHOTO_SIDE, for_maps

    small = Image.new("RGB", (640, 480))
    assert for_maps(small) is small
    big = for_maps(Image.new("RGB", (4000, 3000)))
    assert big.size == (MAP_PHOTO_SIDE, 1536)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(8, 40).map(lambda n: n * 8), height=st.integers(8, 40).map(lambda n: n * 8),
       photo_w=st.integers(40, 400), photo_h=st.integers(40, 400))
def test_every_map_has_the_output_size_and_is_made_at_it(demo_app: Any, me: Any, width: int, height: int,
                                                          photo_w: int, photo_h: int) -> None:
    from dataclasses import replace

    photo = Image.open(FACE).convert("RGB").resize((photo_w, photo_h))
    identity = replace(me, control_photo=photo)
    maps = demo_app.controls.maps(demo_app.pipe, identity, ("canny", "pose"), (width, height))
    assert [m.size for m in maps] == [(width, height)] * 2
    expected = canny_map(photo.resize((width, height), Image.LANCZOS))
    assert np.array_equal(np.asarray(maps[0]), np.asarray(expected))
