"""The published demo's resize rule, applied to images and keypoints together."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from instantid.keypoints import demo_resize_size, resize_with_kps


@pytest.mark.parametrize(
    ("size", "expected"),
    [((512, 512), (1280, 1280)), ((640, 480), (1280, 960)), ((480, 640), (960, 1280)), ((1000, 333), (1280, 384))],
)
def test_demo_resize_size(size, expected):
    assert demo_resize_size(*size) == expected
    w, h = demo_resize_size(*size)
    assert w % 64 == 0 and h % 64 == 0 and max(w, h) <= 1280


def test_resize_moves_keypoints_with_the_image():
    image = Image.new("RGB", (640, 480))
    kps = np.array([[100.0, 120.0], [200.0, 120.0], [150.0, 160.0], [110.0, 200.0], [190.0, 200.0]])
    resized, moved = resize_with_kps(image, kps)
    assert resized.size == (1280, 960)
    assert np.allclose(moved, kps * 2.0)
    assert resize_with_kps(image)[1] is None


def test_resize_rejects_empty_images():
    with pytest.raises(ValueError, match="positive"):
        demo_resize_size(0, 10)
