"""The published demo's resize rule (the output size taken from the face or pose photo)."""

from __future__ import annotations

import pytest

from instantid.core.keypoints import demo_resize_size


@pytest.mark.parametrize(
    ("size", "expected"),
    [((512, 512), (1280, 1280)), ((640, 480), (1280, 960)), ((480, 640), (960, 1280)), ((1000, 333), (1280, 384))],
)
def test_demo_resize_size(size, expected):
    assert demo_resize_size(*size) == expected
    w, h = demo_resize_size(*size)
    assert w % 64 == 0 and h % 64 == 0 and max(w, h) <= 1280


def test_resize_rejects_empty_images():
    with pytest.raises(ValueError, match="positive"):
        demo_resize_size(0, 10)
