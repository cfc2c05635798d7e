"""Identity: photos analysed once, fused (mean / weighted / robust), then handed to generation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from instantid.errors import InvalidInputError
from instantid.faces import create_face_analyzer, load_image
from instantid.identity import face_quality, fuse

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
    with pytest.raises(InvalidInputError, match="fusion must be"):
        fuse(analyzer, [a], "median")


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
    from instantid.generator import prepare_identity

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
