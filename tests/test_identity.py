"""Identity: photos analysed once, fused (mean / weighted / robust), then handed to generation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from instantid.api.identity import face_quality, fuse
from instantid.errors import InvalidInputError
from instantid.faces import Face, create_face_analyzer, load_image

SAME = ["obama_1.jpg", "obama_2.jpg", "edge_obama_small.jpg", "edge_rgba_32bit.png"]
INTRUDER = "alex_lacamoire_1.png"


@pytest.fixture(scope="module")
def analyzer():
    return create_face_analyzer("dlib")


@pytest.fixture(scope="module")
def photos(analyzer, faces_dir):
    found = {}
    for name in [*SAME, INTRUDER]:
        image = load_image(faces_dir / name)
        found[name] = (name, image, analyzer.get_face(image, name))
    return found


def test_robust_fusion_drops_and_names_another_person(analyzer, photos):
    """Four photos of one person plus one of another: robust fusion lands on the person, the mean does not."""
    items = [photos[n] for n in [*SAME, INTRUDER]]
    truth = np.mean([photos[n][2].embedding for n in SAME], axis=0)
    mean, _, used_mean, _ = fuse(analyzer, items, "mean")
    robust, refs, used, warnings = fuse(analyzer, items, "auto")
    d_mean, d_robust = analyzer.distance(mean, truth), analyzer.distance(robust, truth)
    print(f"distance to the true person: mean {d_mean:.4f}, robust {d_robust:.4f}")
    assert (used_mean, used) == ("mean", "robust")  # auto = robust for 3+ photos
    assert d_robust < d_mean / 10
    rejected = [r.name for r in refs if r.rejected]
    assert rejected == [INTRUDER]
    assert any(INTRUDER in w and "left out" in w for w in warnings)
    assert [r.weight for r in refs if r.name == INTRUDER] == [0.0]
    assert sum(r.weight for r in refs) == pytest.approx(1.0)


def test_robust_fusion_keeps_a_consistent_set(analyzer, photos):
    items = [photos[n] for n in SAME]
    _, refs, _, warnings = fuse(analyzer, items, "robust")
    assert not any(r.rejected for r in refs) and not warnings


def test_mean_warns_when_references_look_like_different_people(analyzer, photos):
    _, refs, used, warnings = fuse(analyzer, [photos["obama_1.jpg"], photos[INTRUDER]], "auto")
    assert used == "mean"  # two photos cannot outvote each other
    assert not any(r.rejected for r in refs)
    assert len(warnings) == 1 and "different people" in warnings[0] and INTRUDER in warnings[0]


def test_mean_of_one_photo_is_its_embedding_and_weights_are_checked(analyzer, photos):
    item = photos["obama_1.jpg"]
    fused, *_ = fuse(analyzer, [item], "auto")
    assert np.allclose(fused, item[2].embedding)
    a, b = photos["obama_1.jpg"], photos["obama_2.jpg"]
    weighted, _, used, _ = fuse(analyzer, [a, b], "mean", weights=[3, 1])
    assert used == "weighted"
    assert np.allclose(weighted, 0.75 * a[2].embedding + 0.25 * b[2].embedding, atol=1e-6)
    with pytest.raises(InvalidInputError, match="one non-negative weight per photo"):
        fuse(analyzer, [a, b], "mean", weights=[1])
    with pytest.raises(InvalidInputError) as caught:
        fuse(analyzer, [a], "median")
    assert str(caught.value) == "fusion must be one of auto, mean, weighted, robust, got 'median'"
    with pytest.raises(InvalidInputError) as caught:
        fuse(analyzer, [])
    assert str(caught.value) == "give at least one face photo"


def test_quality_prefers_sharp_large_faces(photos):
    name, image, face = photos["obama_1.jpg"]
    sharp = face_quality(image, face)
    blurred = face_quality(image.filter(ImageFilter.GaussianBlur(6)), face)
    assert sharp > 2 * blurred
    small = image.resize((image.width // 8, image.height // 8))
    small_face = type(face)(tuple(v / 8 for v in face.bbox), face.score, face.kps / 8, face.embedding, face.space)
    assert face_quality(small, small_face) < sharp
    assert face_quality(Image.new("RGB", (4, 4)), face) == 0.0  # box outside the picture


def test_several_faces_say_which_was_used_and_how_many(analyzer, faces_dir):
    """A photo with several faces: the Identity's warnings (printed by the CLI, shown by the web UI, recorded in
    the metadata) say which face was used and how many were found; each reference records both (issue 18 item 4).
    """
    from instantid.api.face_side import prepare_identity

    group = faces_dir / "group_two_people.jpg"
    largest = prepare_identity(analyzer, group)
    assert largest.warnings[0].startswith("group_two_people.jpg: 2 faces found, used face 0 (the largest)")
    details = largest.metadata()["reference_details"][0]
    assert (details["face_index"], details["faces_found"]) == (0, 2)
    chosen = prepare_identity(analyzer, group, face_index=1)
    assert chosen.warnings == () and chosen.references[0].face_index == 1
    assert chosen.metadata()["reference_details"][0]["faces_found"] == 2
    assert not np.array_equal(chosen.embedding, largest.embedding)
    alone = prepare_identity(analyzer, faces_dir / "obama_1.jpg", pose=group)
    assert alone.warnings == ("group_two_people.jpg: 2 faces found, the pose is taken from face 0 (the largest)",)
    assert prepare_identity(analyzer, faces_dir / "obama_1.jpg").warnings == ()


def _face(side: float, score: float = 1.0, embedding: np.ndarray | None = None) -> Face:
    return Face(bbox=(10.0, 10.0, 10.0 + side, 10.0 + side), score=score, kps=np.zeros((5, 2), np.float32),
                embedding=np.zeros(128, np.float32) if embedding is None else embedding, space="dlib-128")


def test_quality_terms_saturate_at_112_px_a_sharp_crop_and_a_sure_detection() -> None:
    """README: weighted by detector score x face size (full at 112 px) x sharpness (Laplacian)."""
    checker = np.indices((300, 300)).sum(0) % 2 * 255  # as sharp as a crop gets
    sharp = Image.fromarray(checker.astype(np.uint8)).convert("RGB")
    assert face_quality(sharp, _face(112)) == 1.0 and face_quality(sharp, _face(200)) == 1.0
    assert face_quality(sharp, _face(56)) == pytest.approx(0.5, abs=1e-2)  # int pixel box: 56/112
    assert face_quality(sharp, _face(112, score=0.25)) == pytest.approx(0.25)
    assert face_quality(sharp, _face(112, score=3.0)) == 1.0  # backend margins above 1 count as sure
    assert face_quality(sharp, _face(112, score=-1.0)) == pytest.approx(0.05)  # floored, never 0
    flat = Image.new("RGB", (300, 300), "gray")
    assert face_quality(flat, _face(112)) == pytest.approx(0.05)  # no detail at all: the sharpness floor
    ramp = Image.fromarray(np.tile((np.arange(300) % 3 * 2).astype(np.uint8), (300, 1))).convert("RGB")
    lap_var = 24.0  # columns 0/2/4 repeat: Laplacian 0/-6/+6, variance 24, below the 100 of a sharp crop
    assert face_quality(ramp, _face(112)) == pytest.approx(lap_var / 100, rel=0.1)


def test_mix_interpolates_from_you_to_them_and_is_recorded() -> None:
    from dataclasses import replace

    from instantid.api.identity import Identity

    a_emb, b_emb = np.full(128, 2.0, np.float32), np.full(128, 4.0, np.float32)
    me = Identity(embedding=a_emb, space="dlib-128", pose_face=_face(100, embedding=a_emb), pose_size=(200, 200),
                  references=(), fusion="mean", pose_name="me.jpg")
    friend = replace(me, embedding=b_emb, pose_name="friend.jpg", pose_size=(50, 50))
    mixed = me.mix(friend, 0.25, "friend")
    assert np.allclose(mixed.embedding, 2.5) and mixed.embedding.dtype == np.float32
    assert mixed.pose_size == (200, 200) and mixed.pose_name == "me.jpg"  # the pose stays yours
    assert mixed.mix(friend, 1.0, "again").mixed_with == (("friend", 0.25), ("again", 1.0))
    assert np.allclose(me.mix(friend, 0.0).embedding, 2.0) and np.allclose(me.mix(friend, 1.0).embedding, 4.0)
    assert me.mix(friend, 0.5).mixed_with == (("other", 0.5),)  # the default name
    assert mixed.metadata()["mixed_with"] == [{"name": "friend", "weight": 0.25}]
    for bad in (-0.01, 1.01):
        with pytest.raises(InvalidInputError, match=f"mix weight must be between 0 and 1, got {bad}"):
            me.mix(friend, bad)
    with pytest.raises(InvalidInputError, match="cannot mix dlib-128 and antelopev2-512 embeddings"):
        me.mix(replace(friend, space="antelopev2-512"), 0.5)
