"""Evaluation: metrics on real photos, reports, ONNX recogniser, protocol, benchmark run, speed script."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from instantid.api.settings import GenerationSettings
from instantid.cli import main
from instantid.errors import InvalidInputError
from instantid.evaluation import (
    Sample,
    collect_samples,
    create_recogniser,
    evaluate,
    load_protocol,
    run_protocol,
    write_report,
)
from instantid.faces import load_image
from instantid.faces.arcface import ArcFaceAnalyzer
from instantid.io.models import ModelRefs
from instantid.io.outputs import png_bytes

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason=f"shared photos not found at {FACES}")


@pytest.fixture(scope="module")
def recogniser():
    return create_recogniser()


@pytest.fixture(scope="module")
def evaluation(recogniser):
    samples = collect_samples(
        [FACES / "obama_2.jpg", FACES / "biden_1.jpg", FACES / "edge_no_face_noise.png"], [FACES / "obama_1.jpg"]
    )
    return evaluate(samples, recogniser)


def test_identity_similarity_separates_people_and_counts_undetected_faces(evaluation):
    same, other, noise = evaluation.images
    assert same.identity_distance < 0.6 < other.identity_distance  # dlib's calibrated threshold
    assert same.identity_similarity == pytest.approx(1 - same.identity_distance)
    assert same.same_person is True and other.same_person is False
    assert noise.face_detected is False and noise.identity_similarity is None
    assert evaluation.summary["face_detection_rate"] == pytest.approx(2 / 3)
    assert evaluation.summary["same_person_rate"] == pytest.approx(1 / 3)
    assert evaluation.identities["obama_1"]["identity_diversity"] is not None


def test_clip_is_reported_as_skipped_without_weights(evaluation, monkeypatch):
    monkeypatch.delenv("INSTANTID_CLIP_WEIGHTS", raising=False)
    assert evaluation.summary["clip_score"].startswith("skipped: no CLIP weights")
    assert evaluation.settings["clip"].startswith("skipped: no CLIP weights")
    assert all(score.clip_score is None for score in evaluation.images)


def test_report_files_hold_the_scores(evaluation, tmp_path):
    paths = write_report(evaluation, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert [i["face_detected"] for i in data["images"]] == [True, True, False]
    assert data["summary"]["clip_score"].startswith("skipped: no CLIP weights")
    page = paths["html"].read_text()
    assert page.count("data:image/jpeg;base64,") == 4  # the reference and three generations, inlined
    assert f"{evaluation.images[0].identity_similarity:.3f}" in page and "skipped: no CLIP weights" in page
    with Image.open(paths["grid"]) as grid:
        assert grid.size == (4 * 160, 190)  # reference + 3 cells, one row with its label strip
    assert len(list(tmp_path.glob(".*"))) == 0  # no temporary files left behind


def test_arcface_crop_puts_keypoints_on_the_arcface_template(tmp_path, recogniser):
    from insightface.utils.face_align import arcface_dst

    analyzer = ArcFaceAnalyzer(_tiny_arcface(tmp_path / "tiny_arcface.onnx"), detector=recogniser)
    kps = arcface_dst * 2.5 + np.array([40.0, 25.0])
    image = np.zeros((400, 400, 3), np.uint8)
    for x, y in kps:
        cv2.circle(image, (int(round(x)), int(round(y))), 6, (255, 255, 255), -1)
    crop = analyzer.recognizer.crop(image, kps)
    assert crop.shape == (112, 112, 3)
    for x, y in arcface_dst:
        assert crop[int(round(y)), int(round(x))].min() > 200
    assert crop[5, 5].max() == 0


def _tiny_arcface(path: Path) -> Path:
    """A random ONNX recogniser with ArcFace's interface: (N, 3, 112, 112) -> (N, 512)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    conv = numpy_helper.from_array(rng.standard_normal((8, 3, 8, 8)).astype(np.float32), "conv_w")
    fc = numpy_helper.from_array(rng.standard_normal((8 * 14 * 14, 512)).astype(np.float32) * 0.01, "fc_w")
    nodes = [
        helper.make_node("Conv", ["input.1", "conv_w"], ["c"], strides=[8, 8]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "fc_w"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_arcface", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [None, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [None, 512])], [conv, fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # insightface's scikit-image call
def test_arcface_recogniser_is_insightface_get_feat_on_the_norm_crop(tmp_path, recogniser):
    from insightface.model_zoo import get_model
    from insightface.utils.face_align import norm_crop

    model = _tiny_arcface(tmp_path / "tiny_arcface.onnx")
    analyzer = ArcFaceAnalyzer(model, same_person_threshold=0.5, detector=recogniser)
    photo = load_image(FACES / "edge_obama_small.jpg")
    face = analyzer.get_face(photo)
    # Independently: dlib's keypoints, insightface's own alignment and feature on the BGR photo.
    kps = recogniser.get_face(photo).kps
    bgr = np.asarray(photo)[:, :, ::-1]
    expected = get_model(str(model), providers=["CPUExecutionProvider"]).get_feat(norm_crop(bgr, kps)).reshape(-1)
    np.testing.assert_allclose(face.embedding, expected, rtol=1e-6, atol=1e-6)
    assert face.space == "arcface:tiny_arcface.onnx" and face.embedding.shape == (512,)
    assert analyzer.analyze(load_image(FACES / "edge_no_face_noise.png")) == []
    other = analyzer.get_face(load_image(FACES / "biden_1.jpg")).embedding
    cosine = float(face.embedding @ other / np.linalg.norm(face.embedding) / np.linalg.norm(other))
    assert analyzer.distance(face.embedding, other) == pytest.approx(1 - cosine)
    assert analyzer.similarity(face.embedding, other) == pytest.approx(cosine)


def test_cli_evaluate_with_onnx_id_model(tmp_path, capsys, recogniser):
    model = _tiny_arcface(tmp_path / "tiny_arcface.onnx")
    out = tmp_path / "report"
    code = main(["evaluate", str(FACES / "edge_obama_small.jpg"), "--refs", str(FACES / "obama_2.jpg"),
                 "--id-model", str(model), "--id-threshold", "0.3", "-o", str(out)])
    assert code == 0
    data = json.loads((out / "evaluation.json").read_text())
    assert data["settings"]["recogniser"] == "arcface:tiny_arcface.onnx"
    assert data["settings"]["distance"] == "cosine distance (1 - cosine similarity)"
    assert data["settings"]["same_person_distance"] == 0.3
    analyzer = ArcFaceAnalyzer(model, detector=recogniser)
    expected = analyzer.distance(analyzer.get_face(FACES / "edge_obama_small.jpg").embedding,
                                 analyzer.get_face(FACES / "obama_2.jpg").embedding)
    (image,) = data["images"]
    assert image["identity_distance"] == pytest.approx(expected)
    assert image["identity_similarity"] == pytest.approx(1 - expected)
    assert image["same_person"] is (expected <= 0.3)


def test_cli_evaluate_without_references_is_one_line_error(tmp_path, capsys):
    code = main(["evaluate", str(FACES / "obama_2.jpg"), "-o", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nothing to evaluate: every image was skipped") and "\n" not in err
    assert "obama_2.jpg: no InstantID metadata (give --refs PHOTO" in err
    assert not (tmp_path / "r").exists()


def test_cli_evaluate_an_unreadable_reference_is_one_line_before_any_work(tmp_path, capsys):
    """A reference that is no image is named before a folder is made, a scorer loads or the bar starts."""
    meta = {"prompt": "a portrait", "seed": 7, "references": ["bad.png"]}
    (tmp_path / "gen_s7.png").write_bytes(png_bytes(load_image(FACES / "obama_2.jpg"), meta))
    (tmp_path / "bad.png").write_bytes(b"junk")
    code = main(["evaluate", str(tmp_path / "gen_s7.png"), "--refs", str(tmp_path / "bad.png"), "-o",
                 str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read image ") and "\n" not in err
    assert err.endswith("bad.png: not an image file (unknown or unsupported format)")
    assert not (tmp_path / "r").exists()


def test_cli_evaluate_skips_what_is_not_a_generation_and_shows_progress(tmp_path, capsys):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    meta = {"prompt": "a portrait", "seed": 7, "references": [str(FACES / "obama_1.jpg")]}
    # One generation with the metadata inside the PNG, one with a JSON sidecar only.
    (outputs / "gen_s7.png").write_bytes(png_bytes(load_image(FACES / "obama_2.jpg"), meta))
    (outputs / "gen_s8.jpg").write_bytes((FACES / "biden_1.jpg").read_bytes())
    (outputs / "gen_s8.json").write_text(json.dumps({**meta, "seed": 8}))
    Image.new("RGB", (64, 64), "white").save(outputs / "contact_sheet.png")
    (outputs / "holiday.jpg").write_bytes((FACES / "obama_1.jpg").read_bytes())
    report = tmp_path / "report"
    assert main(["evaluate", str(outputs), "-o", str(report)]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 image(s) that are not generations" in err
    assert f"{outputs / 'contact_sheet.png'}: a batch contact sheet, not a generation" in err
    assert f"{outputs / 'holiday.jpg'}: no InstantID metadata" in err
    assert "scoring" in err and "2/2" in err, "a progress bar"
    data = json.loads((report / "evaluation.json").read_text())
    assert [(Path(i["image"]).name, i["seed"], i["same_person"]) for i in data["images"]] == [
        ("gen_s7.png", 7, True), ("gen_s8.jpg", 8, False)]
    # With --refs any picture is scored, but a contact sheet still is not a generation.
    assert main(["evaluate", str(outputs), "--refs", str(FACES / "obama_1.jpg"), "-o", str(report)]) == 0
    assert "skipped 1 image(s)" in capsys.readouterr().err
    assert json.loads((report / "evaluation.json").read_text())["summary"]["images"] == 3


def test_pulid_protocol_ships_20_prompts_in_8_categories_with_4_seeds():
    protocol = load_protocol("pulid")
    assert len(protocol.prompts) == 20 and len(protocol.seeds) == 4
    assert sorted(protocol.categories) == sorted(
        ["clothing", "accessory", "action", "attribute", "view", "background", "style", "complex"]
    )
    assert protocol.face_prompt.category == "face"
    assert [p.id for p in protocol.all_prompts(limit=2)] == ["face", protocol.prompts[0].id]


def test_run_protocol_resumes_without_regenerating(tmp_path):
    calls = []

    analysed = []

    def generate(identity, settings):
        assert identity == ("identity", [FACES / "obama_1.jpg"])
        calls.append((settings.prompt, settings.seed))
        result = SimpleNamespace(images=[Image.new("RGB", (8, 8))])
        result.image_metadata = lambda index: {"prompt": settings.prompt, "seed": settings.seed}
        return result

    def prepare_identity(photos):
        analysed.append(photos)
        return ("identity", photos)

    app = SimpleNamespace(refs=ModelRefs(), demo=True, generate=generate, prepare_identity=prepare_identity)
    protocol = load_protocol("pulid")
    photos = {"obama": [FACES / "obama_1.jpg"]}
    first = run_protocol(app, protocol, photos, tmp_path, GenerationSettings(), limit=1)
    assert len(calls) == 4 and len(first) == 4
    assert len(analysed) == 1, "the reference photos are analysed once, not per image"
    (tmp_path / "images" / "obama" / "face-s42.json").unlink()  # an unfinished image is redone
    second = run_protocol(app, protocol, photos, tmp_path, GenerationSettings(), limit=1)
    assert len(calls) == 5 and calls[-1][1] == 42 and [s.image for s in second] == [s.image for s in first]
    sidecar = json.loads((tmp_path / "images" / "obama" / "face-s42.json").read_text())
    assert sidecar["references"] == [str((FACES / "obama_1.jpg").resolve())]
    assert sidecar["category"] == "face" and sidecar["prompt_id"] == "face"
    with pytest.raises(InvalidInputError, match="different settings"):
        run_protocol(app, protocol, photos, tmp_path, GenerationSettings(steps=4), limit=1)
    assert collect_samples([tmp_path / "images"])[0] == Sample(
        image=tmp_path / "images" / "obama" / "face-s1234.png", identity="obama",
        references=((FACES / "obama_1.jpg").resolve(),), prompt=protocol.face_prompt.text, prompt_id="face",
        category="face", seed=1234,
    )


def test_benchmark_run_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INSTANTID_DEMO_DIR", str(tmp_path / "demo"))
    out = tmp_path / "bench"
    code = main(["benchmark", "run", "--demo", "--limit", "2", "--steps", "1", "--refs",
                 str(FACES / "edge_obama_small.jpg"), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    pngs = sorted((out / "images" / "edge_obama_small").glob("*.png"))
    assert len(pngs) == 8 and all(p.with_suffix(".json").is_file() for p in pngs)
    data = json.loads((out / "evaluation.json").read_text())
    assert data["summary"]["images"] == 8
    assert set(data["summary"]["per_category"]) == {"face", "clothing"}
    assert {i["seed"] for i in data["images"]} == set(load_protocol("pulid").seeds)
    assert (out / "report.html").is_file() and (out / "grid.png").is_file()


def test_speed_benchmark_writes_json(tmp_path):
    spec = importlib.util.spec_from_file_location("speed_benchmark", REPO / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    result = speed.main(["--device", "cpu", "--steps", "2", "--warmup-steps", "1", "--repeats", "1",
                         "--height", "64", "--width", "64", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "speed-cpu.json").read_text())
    assert data == json.loads(json.dumps(result))
    assert set(data["stages"]) == {"face_analysis", "prompt_encoding_s", "vae_decode_s"}
    for name in ("instantid", "stock_controlnet"):
        keys = {"end_to_end_s", "step_mean_s", "step_p50_s", "outside_denoising_s", "peak_memory_mb", "steps_s"}
        assert keys <= set(data["pipelines"][name])
        assert len(data["pipelines"][name]["steps_s"]) == 1
    assert set(data["ratio_ours_over_stock"]) == {"step_mean_s", "step_p50_s", "end_to_end_s"}
    assert (tmp_path / "speed-cpu.png").is_file()


def test_references_recorded_by_file_name_are_found_beside_the_image_or_here(tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    meta = {"prompt": "a portrait", "seed": 1, "references": ["obama_1.jpg"]}  # what generate records by default
    (outputs / "gen_s1.png").write_bytes(png_bytes(load_image(FACES / "obama_2.jpg"), meta))
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(outputs), "-o", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: reference photo obama_1.jpg of {outputs / 'gen_s1.png'} is not beside it or in the "
                   "working directory (outputs record file names and content hashes, not paths): give --refs PHOTO, "
                   "or --refs FOLDER holding it")
    monkeypatch.chdir(FACES)  # where the user ran `generate obama_1.jpg`
    (sample,) = collect_samples([outputs])
    assert sample.references == (Path("obama_1.jpg"),) and sample.seed == 1


def test_readme_generate_then_evaluate_finds_the_reference_by_content(tmp_path, monkeypatch, capsys):
    """The README's sequence (issue 18 item 5): `generate --demo examples/face.jpg --out outputs`, then `evaluate
    outputs/ --refs examples/`. Outputs record the photo's file name and SHA-256, never its folder; evaluate finds
    it by content among the photos of the folder given, and refuses a folder without it in one line."""
    from _demo import FACE

    monkeypatch.setenv("INSTANTID_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.chdir(tmp_path)
    examples = tmp_path / "examples"
    examples.mkdir()
    for photo in (FACE, FACES / "lecun_1.jpg", FACES / "obama_1.jpg"):  # a folder of several people
        (examples / photo.name).write_bytes(photo.read_bytes())
    assert main(["generate", "--demo", "examples/face.jpg", "--steps", "1", "--seed", "1", "--width", "64",
                 "--height", "64", "--out", "outputs"]) == 0
    (png,) = (tmp_path / "outputs").glob("*.png")
    recorded = json.loads(png.with_suffix(".json").read_text())
    assert recorded["references"] == ["face.jpg"] and str(tmp_path) not in png.with_suffix(".json").read_text()
    assert recorded["reference_details"][0]["sha256"] == hashlib.sha256(FACE.read_bytes()).hexdigest()
    capsys.readouterr()
    assert main(["evaluate", "outputs/", "--refs", "examples/", "-o", "evaluation"]) == 0
    (scored,) = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())["images"]
    assert scored["identity"] == "face"  # matched to examples/face.jpg, not to the other people in the folder
    (sample,) = collect_samples([tmp_path / "outputs"], [examples])
    assert sample.references == (examples / "face.jpg",)
    # A copy under another name is the same photo; a folder without it is one clear line.
    other = tmp_path / "other"
    other.mkdir()
    (other / "lecun_1.jpg").write_bytes((FACES / "lecun_1.jpg").read_bytes())
    with pytest.raises(InvalidInputError, match="none of the --refs photos is a reference of .* records face.jpg"):
        collect_samples([tmp_path / "outputs"], [other])
    (other / "renamed.jpg").write_bytes(FACE.read_bytes())
    assert collect_samples([tmp_path / "outputs"], [other])[0].references == (other / "renamed.jpg",)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb as Pillow sees it), tiny on disk."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + ihdr + end


def test_cli_evaluate_names_a_huge_picture_in_one_line(tmp_path, capsys):
    """A picture past Pillow's bomb limit (over 179 megapixels) is skipped with one line, not a traceback."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "huge.png").write_bytes(_png_claiming(20_000, 20_000))
    status = main(["evaluate", str(outputs), "--refs", str(FACES / "obama_1.jpg"), "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "DecompressionBomb" not in err
    assert "huge.png" in err
    assert status in (0, 2)


@pytest.mark.parametrize("command", [
    ["evaluate", str(FACES / "obama_2.jpg"), "--refs", str(FACES / "obama_1.jpg")],
    ["benchmark", "run", "--demo", "--limit", "1", "--steps", "1", "--refs", str(FACES / "obama_1.jpg")],
])
def test_an_output_folder_under_a_file_is_one_line_before_the_work(command, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([*command, "-o", str(blocker / "report")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --out {blocker / 'report'}: {blocker} is a file, not a folder; give another folder"
