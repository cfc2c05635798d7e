"""Face analysis on the shared real photos (dlib backend) and on tiny antelopev2 stand-ins."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pytest
from PIL import Image

import instantid.faces.images as images_module
from instantid.errors import (
    EmbeddingSpaceError,
    ImageReadError,
    IncompatibleWeightsError,
    InvalidInputError,
    MissingWeightsError,
    NoFaceError,
)
from instantid.faces import (
    EMBEDDING_DIMS,
    MIN_IMAGE_SIDE,
    SPACE_ANTELOPEV2,
    SPACE_DLIB,
    Face,
    FaceAnalyzer,
    create_face_analyzer,
    load_image,
)
from instantid.faces.antelopev2 import ENV_VAR, RECOGNIZER_FILE
from instantid.faces.tiny import FACE_STRIDE, KPS_OFFSETS, write_tiny_antelopev2

FACES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
needs_photos = pytest.mark.skipif(not FACES_DIR.is_dir(), reason=f"shared photos not found at {FACES_DIR}")
LABELS = json.loads((FACES_DIR / "labels.json").read_text()) if FACES_DIR.is_dir() else {}
WITH_FACES = sorted(name for name, label in LABELS.items() if label["faces"])
IDENTITIES = sorted(name for name, label in LABELS.items() if label["identity"])


@pytest.fixture(scope="module")
def dlib_analyzer() -> FaceAnalyzer:
    return create_face_analyzer("dlib")


@pytest.fixture(scope="module")
def analyzed(dlib_analyzer: FaceAnalyzer) -> dict[str, list[Face]]:
    return {name: dlib_analyzer.analyze(FACES_DIR / name) for name in WITH_FACES}


@needs_photos
@pytest.mark.parametrize("name", WITH_FACES)
def test_every_labelled_face_is_found(analyzed: dict[str, list[Face]], name: str) -> None:
    faces = analyzed[name]
    assert len(faces) == LABELS[name]["faces"]
    areas = [face.area for face in faces]
    assert areas == sorted(areas, reverse=True)
    for face in faces:
        assert face.space == SPACE_DLIB
        assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
        assert face.kps.shape == (5, 2) and face.kps.dtype == np.float32


@needs_photos
@pytest.mark.parametrize("name", WITH_FACES)
def test_keypoints_sit_where_a_face_has_them(analyzed: dict[str, list[Face]], name: str) -> None:
    for face in analyzed[name]:
        left_eye, right_eye, nose, mouth_left, mouth_right = face.kps
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0], "image-left points first"
        # "Below" in the face's own frame, perpendicular to the eye line (pose_1's head is rolled).
        eye_axis = (right_eye - left_eye) / np.linalg.norm(right_eye - left_eye)
        down = np.array([-eye_axis[1], eye_axis[0]])
        eyes, mouth = (left_eye + right_eye) / 2, (mouth_left + mouth_right) / 2
        assert 0 < (nose - eyes) @ down < (mouth - eyes) @ down, "eyes above nose tip above mouth"
        x1, y1, x2, y2 = face.bbox
        margin = 0.1 * (x2 - x1)
        assert np.all(face.kps[:, 0] >= x1 - margin) and np.all(face.kps[:, 0] <= x2 + margin)
        assert np.all(face.kps[:, 1] >= y1 - margin) and np.all(face.kps[:, 1] <= y2 + margin)


@needs_photos
def test_same_people_are_same_and_different_people_different(
    dlib_analyzer: FaceAnalyzer, analyzed: dict[str, list[Face]]
) -> None:
    for i, a in enumerate(IDENTITIES):
        for b in IDENTITIES[i + 1:]:
            same = LABELS[a]["identity"] == LABELS[b]["identity"]
            ea, eb = analyzed[a][0].embedding, analyzed[b][0].embedding
            assert dlib_analyzer.is_same(ea, eb) == same, (a, b, dlib_analyzer.distance(ea, eb))


@needs_photos
def test_no_face_and_unreadable_photo_errors(dlib_analyzer: FaceAnalyzer) -> None:
    noise = str(FACES_DIR / "edge_no_face_noise.png")
    assert dlib_analyzer.analyze(noise) == []
    with pytest.raises(NoFaceError) as no_face:
        dlib_analyzer.get_face(noise)
    assert str(no_face.value) == f"no face found in {noise}"
    corrupt = str(FACES_DIR / "edge_corrupt.jpg")
    with pytest.raises(ImageReadError) as unreadable:
        dlib_analyzer.get_face(corrupt)
    assert str(unreadable.value).startswith(f"cannot read image {corrupt}: ")


@needs_photos
def test_face_index_picks_by_size_and_reports_count(dlib_analyzer: FaceAnalyzer) -> None:
    group = FACES_DIR / "group_two_people.jpg"
    assert dlib_analyzer.get_face(group, index=1).area < dlib_analyzer.get_face(group).area
    with pytest.raises(InvalidInputError, match="2 face"):
        dlib_analyzer.get_face(group, index=2)


@needs_photos
def test_exif_orientation_is_applied(dlib_analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    upright = load_image(FACES_DIR / "edge_obama_small.jpg")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "sideways.jpg"
    sideways.save(path, quality=98, exif=exif)
    restored = load_image(path)
    assert restored.size == upright.size
    expected = dlib_analyzer.get_face(upright)
    got = dlib_analyzer.get_face(path)
    np.testing.assert_allclose(got.kps, expected.kps, atol=3.0)


@needs_photos
@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "LA"])
def test_unusual_pixel_formats_load_as_rgb_and_show_the_face(
    dlib_analyzer: FaceAnalyzer, tmp_path: Path, mode: str
) -> None:
    photo = load_image(FACES_DIR / "edge_obama_small.jpg")
    grey = np.asarray(photo.convert("L"))
    if mode == "I;16":
        variant = Image.fromarray(grey.astype(np.uint16) * 257)  # full 16-bit range
    elif mode == "LA":
        variant = photo.convert("LA")
    else:
        variant = photo.convert(mode)
    path = tmp_path / f"variant.{'jpg' if mode == 'CMYK' else 'png'}"
    variant.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == photo.size
    if mode == "I;16":
        assert np.abs(np.asarray(loaded)[..., 0].astype(int) - grey).max() <= 1
    assert len(dlib_analyzer.analyze(path)) == 1


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    loaded = load_image(rgba)
    assert loaded.getpixel((0, 0)) == (255, 255, 255) and loaded.getpixel((1, 0)) == (10, 20, 30)


def test_load_image_errors_name_the_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageReadError, match=f"^cannot read image {missing}: no such file$"):
        load_image(missing)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        load_image(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(ImageReadError, match="not an image"):
        load_image(text)
    with pytest.raises(ImageReadError, match="^cannot read image upload.png: "):
        load_image(b"\x89PNG garbage", name="upload.png")
    monkeypatch.setattr(images_module, "MAX_PIXELS", 100)
    with pytest.raises(ImageReadError, match="20x20 is 0 megapixels, over the 0-megapixel limit; downscale"):
        load_image(Image.new("RGB", (20, 20)))


def test_face_to_dict_is_json_and_distance_checks_space(dlib_analyzer: FaceAnalyzer) -> None:
    face = Face(bbox=(1.0, 2.0, 5.0, 6.0), score=0.5, kps=np.zeros((5, 2), np.float32),
                embedding=np.ones(128, np.float32), space=SPACE_DLIB)
    data = json.loads(json.dumps(face.to_dict()))
    assert data["bbox"] == [1.0, 2.0, 5.0, 6.0] and len(data["embedding"]) == EMBEDDING_DIMS[SPACE_DLIB]
    assert face.area == 16.0
    assert dlib_analyzer.distance(face.embedding, face.embedding) == 0.0
    with pytest.raises(EmbeddingSpaceError, match="512 values"):
        dlib_analyzer.distance(face.embedding, np.ones(512, np.float32))
    with pytest.raises(InvalidInputError, match="unknown face backend"):
        create_face_analyzer("retinaface")


# --- antelopev2 routing, on stand-in ONNX files with the real signatures -------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_antelopev2(root / "antelopev2" / "antelopev2")  # the nested layout of the zip
    return root


@pytest.fixture(scope="module")
def tiny_analyzer(tiny_root: Path) -> FaceAnalyzer:
    return create_face_analyzer("antelopev2", root=tiny_root)


def _white_cell_image(size: tuple[int, int], cell: tuple[int, int], side: int) -> Image.Image:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    x, y = cell
    pixels[y:y + side, x:x + side] = 255
    return Image.fromarray(pixels)


def test_antelopev2_detects_aligns_and_embeds(tiny_analyzer: FaceAnalyzer) -> None:
    faces = tiny_analyzer.analyze(_white_cell_image((640, 640), (320, 320), 32))
    assert len(faces) == 1
    face = faces[0]
    assert face.space == SPACE_ANTELOPEV2 and tiny_analyzer.embedding_dim == 512
    # One stride-32 anchor at (320, 320): box +-64 px, keypoints at the model's fixed offsets.
    assert face.bbox == pytest.approx((256, 256, 384, 384))
    np.testing.assert_allclose(face.kps, 320 + KPS_OFFSETS * FACE_STRIDE, atol=1e-3)
    assert face.score > 0.99
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) > 0.1, "raw embedding, not normed"
    again = tiny_analyzer.get_face(_white_cell_image((640, 640), (320, 320), 32))
    np.testing.assert_array_equal(again.embedding, face.embedding)
    shifted_content = _white_cell_image((640, 640), (320, 320), 32)
    shifted_content.paste((90, 90, 90), (280, 280, 300, 300))  # inside the aligned crop, outside the cell
    assert tiny_analyzer.distance(tiny_analyzer.get_face(shifted_content).embedding, face.embedding) > 0


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # insightface's scikit-image call
def test_antelopev2_embedding_is_insightface_get_feat_on_the_norm_crop(
    tiny_analyzer: FaceAnalyzer, tiny_root: Path
) -> None:
    from insightface.model_zoo import get_model
    from insightface.utils.face_align import norm_crop

    photo = _white_cell_image((640, 640), (320, 320), 32)
    photo.paste((200, 40, 90), (300, 330, 340, 350))  # colour inside the crop: a channel swap would show
    face = tiny_analyzer.get_face(photo)
    recogniser = get_model(str(tiny_root / "antelopev2" / "antelopev2" / RECOGNIZER_FILE),
                           providers=["CPUExecutionProvider"])
    bgr = np.asarray(photo)[:, :, ::-1]
    expected = recogniser.get_feat(norm_crop(bgr, face.kps)).reshape(-1)
    np.testing.assert_allclose(face.embedding, expected, rtol=1e-6, atol=1e-5)


def test_antelopev2_maps_boxes_back_to_large_photos(tiny_analyzer: FaceAnalyzer) -> None:
    # 1280x960 is letterboxed to 640x480 inside the detector: the 64 px block becomes one 32 px cell.
    face = tiny_analyzer.get_face(_white_cell_image((1280, 960), (640, 640), 64))
    assert face.bbox == pytest.approx((512, 512, 768, 768))
    np.testing.assert_allclose(face.kps, 640 + 2 * KPS_OFFSETS * FACE_STRIDE, atol=1e-3)


def test_antelopev2_missing_or_broken_files(tiny_root: Path, tmp_path: Path) -> None:
    partial = write_tiny_antelopev2(tmp_path / "partial")
    (partial / RECOGNIZER_FILE).unlink()
    with pytest.raises(MissingWeightsError) as missing:
        create_face_analyzer("antelopev2", root=partial)
    message = str(missing.value)
    assert str(partial) in message and "scrfd_10g_bnkps.onnx" in message and "glintr100.onnx" in message
    assert "antelopev2" in message
    broken = write_tiny_antelopev2(tmp_path / "broken")
    (broken / RECOGNIZER_FILE).write_bytes(b"not onnx")
    with pytest.raises(IncompatibleWeightsError, match="cannot load"):
        create_face_analyzer("antelopev2", root=broken)


def test_auto_backend_prefers_antelopev2_when_found(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.insightface here
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert create_face_analyzer("auto").space == SPACE_DLIB
    monkeypatch.setenv(ENV_VAR, str(tiny_root))
    assert create_face_analyzer("auto").space == SPACE_ANTELOPEV2


@needs_photos
def test_large_photo_is_detected_downscaled_and_mapped_back(dlib_analyzer: FaceAnalyzer) -> None:
    small = load_image(FACES_DIR / "edge_obama_small.jpg")
    large = small.resize((small.width * 8, small.height * 8), Image.BICUBIC)  # 2560x1920
    expected = dlib_analyzer.get_face(small)
    got = dlib_analyzer.get_face(large)
    side = expected.bbox[2] - expected.bbox[0]
    np.testing.assert_allclose(np.asarray(got.bbox) / 8, expected.bbox, atol=0.15 * side)
    np.testing.assert_allclose(got.kps / 8, expected.kps, atol=0.05 * side)
    assert dlib_analyzer.is_same(got.embedding, expected.embedding)


@needs_photos
def test_cnn_detector_on_request() -> None:
    cnn = create_face_analyzer("dlib", detector="cnn")
    face = cnn.get_face(FACES_DIR / "edge_obama_small.jpg")
    assert face.score > 0.5 and face.space == SPACE_DLIB
    with pytest.raises(InvalidInputError, match="'hog' or 'cnn'"):
        create_face_analyzer("dlib", detector="yolo")


@pytest.mark.parametrize("side", [1, 2, 8])
def test_tiny_images_are_refused_with_a_clear_error(dlib_analyzer: FaceAnalyzer, side: int) -> None:
    # Before the size check these reached dlib's CNN retry, which aborts ("Filter windows must be small
    # enough to fit into the padded image") or corrupts memory.
    tiny = Image.new("RGB", (side, side), (120, 100, 90))
    with pytest.raises(ImageReadError, match=rf"too small \({side}x{side}\).*at least {MIN_IMAGE_SIDE} pixels"):
        dlib_analyzer.analyze(tiny, "tiny.png")
    with pytest.raises(ImageReadError, match="tiny.png"):
        dlib_analyzer.get_face(tiny, "tiny.png")


@pytest.mark.parametrize("detector", ["hog", "cnn"])
def test_thin_strips_skip_the_cnn_instead_of_crashing(detector: str) -> None:
    # 20x3000 passes the size check, but the CNN would see it downscaled to 7 px across.
    analyzer = create_face_analyzer("dlib", detector=detector)
    assert analyzer.analyze(Image.new("RGB", (20, 3000), (120, 100, 90))) == []
    assert analyzer.analyze(Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), (120, 100, 90))) == []


class _Counting(FaceAnalyzer):
    """A backend whose answer is a function of the pixels, counting how often it really looks."""

    space, embedding_dim, metric, same_person_threshold = SPACE_DLIB, 128, "test", None

    def __init__(self, key: tuple | None = ("counting",)) -> None:
        self.key, self.looked = key, 0

    def _memo_key(self) -> tuple | None:
        return self.key

    def _metric(self, a: np.ndarray, b: np.ndarray) -> float:
        return 0.0

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        self.looked += 1
        value = float(rgb.mean())
        return [Face(bbox=(0.0, 0.0, 10.0, 10.0), score=value, kps=np.full((5, 2), value, np.float32),
                     embedding=np.full(128, value, np.float32), space=SPACE_DLIB)]


def _photo(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 40, 3), dtype=np.uint8))


def test_a_photo_is_analysed_once_per_weights_and_settings() -> None:
    from instantid.faces.base import MEMO_PHOTOS

    first, second, other = _Counting(), _Counting(), _Counting(("counting", "other settings"))
    photo = _photo(1)
    found = first.analyze(photo)
    found[0].kps[:] = -1  # a caller changing what it got does not change what the next caller gets
    again = second.analyze(photo.copy())  # same pixels, another analyser on the same weights
    assert (first.looked, second.looked) == (1, 0)
    assert again[0].score == found[0].score and again[0].kps.min() >= 0
    other.analyze(photo)
    assert other.looked == 1  # other settings: looked again
    changed = np.asarray(photo).copy()
    changed[0, 0, 0] ^= 1  # one bit of one pixel
    first.analyze(Image.fromarray(changed))
    assert first.looked == 2
    for seed in range(100, 100 + MEMO_PHOTOS):  # more photos than are remembered: the oldest is forgotten
        first.analyze(_photo(seed))
    first.analyze(photo)
    assert first.looked == 2 + MEMO_PHOTOS + 1
    unkeyed = _Counting(key=None)
    unkeyed.analyze(photo), unkeyed.analyze(photo)
    assert unkeyed.looked == 2  # a backend without a key always looks


@needs_photos
def test_dlib_analysers_share_their_models_and_answers(dlib_analyzer: FaceAnalyzer) -> None:
    from instantid.faces.dlib_backend import DlibAnalyzer, _borrowed, _spare

    files = dlib_analyzer._files
    dlib_analyzer.analyze(FACES_DIR / "obama_1.jpg")
    spare = list(_spare[files])
    twin = DlibAnalyzer()  # another analyser on the same files loads nothing: it shares the spare set
    assert twin._files == files and _spare[files] == spare
    with _borrowed(files) as first, _borrowed(files) as second:  # two calls at once never share one set
        assert first is not second and first in spare
    with _borrowed(files) as again:
        assert again in (first, second)  # kept for the next call
    assert twin._memo_key() == dlib_analyzer._memo_key() != DlibAnalyzer(num_jitters=2)._memo_key()
    assert DlibAnalyzer(detector="cnn")._memo_key() != twin._memo_key()
