"""The denoising step's plumbing with recording stand-in nets (the numbers are pinned against the published
pipeline in tests/test_exactness.py): which half of the batch the nets see, counts that must match, the residual
masks' dtype and their per-call memo."""

from __future__ import annotations

import pytest
import torch

from instantid.core.attention import FaceCall, FaceRegion
from instantid.core.denoise import StepInputs, _resized_mask, control_residuals


class RecordingNet(torch.nn.Module):
    """Returns residuals that carry the first value of its inputs, and records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, torch.Tensor]] = []

    def forward(self, sample, t, *, encoder_hidden_states, controlnet_cond, conditioning_scale, guess_mode,
                added_cond_kwargs, return_dict):
        self.seen.append({"sample": sample, "states": encoder_hidden_states, "image": controlnet_cond,
                          **added_cond_kwargs})
        down = [torch.full((sample.shape[0], 2, 4, 4), float(conditioning_scale))]
        return down, torch.full((sample.shape[0], 2, 2, 2), float(conditioning_scale))


def _inputs(rows: int, regions: int = 1, images: int | None = None) -> StepInputs:
    marks = torch.arange(rows, dtype=torch.float32)  # row i holds the value i everywhere
    faces = FaceCall(regions=tuple(FaceRegion(marks[:, None, None].expand(rows, 3, 8).clone())
                                   for _ in range(regions)), cache={})
    return StepInputs(
        prompt_embeds=marks[:, None, None].expand(rows, 5, 8).clone(),
        added_cond={"text_embeds": marks[:, None].expand(rows, 4).clone(), "time_ids": marks[:, None].expand(rows, 6)},
        faces=faces, identity_images=tuple(torch.zeros(1, 3, 32, 32) for _ in range(images or regions)),
    )


def test_conditional_only_gives_every_net_the_conditional_half() -> None:
    """Guess mode under guidance: the second half of the UNet batch, for any batch size (3 images here)."""
    net = RecordingNet()
    inputs = _inputs(6)
    down, mid = control_residuals([net], torch.zeros(3, 4, 4, 4), torch.tensor(1), inputs, [0.5], True)
    seen = net.seen[0]
    for name in ("states", "text_embeds", "time_ids"):
        assert seen[name][:, 0].flatten().tolist()[:1] == [3.0] and seen[name].shape[0] == 3, name
    assert down[0].shape[0] == 3 and float(mid.flatten()[0]) == 0.5
    control_residuals([net], torch.zeros(6, 4, 4, 4), torch.tensor(1), inputs, [0.5], False)
    assert net.seen[1]["states"].shape[0] == 6  # both halves without guess mode


def test_counts_that_must_match_are_checked() -> None:
    net = RecordingNet()
    with pytest.raises(ValueError):  # a keypoint picture per identity
        control_residuals([net], torch.zeros(2, 4, 4, 4), torch.tensor(1), _inputs(2, regions=2, images=1), [1.0],
                          False)
    with pytest.raises(ValueError):  # a strength per extra net
        control_residuals([net, RecordingNet()], torch.zeros(2, 4, 4, 4), torch.tensor(1), _inputs(2), [1.0, 1.0],
                          False)


def test_residual_masks_take_the_residuals_dtype_and_are_made_once_per_call() -> None:
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1.0
    like = torch.zeros(1, dtype=torch.float64)
    faces = FaceCall(regions=(), cache={})
    first = _resized_mask(faces, 0, mask, torch.Size((4, 4)), like)
    assert first.dtype == torch.float64 and first.shape == (1, 1, 4, 4)
    assert _resized_mask(faces, 0, mask, torch.Size((4, 4)), like) is first  # memoised for the call
    assert _resized_mask(faces, 1, mask, torch.Size((4, 4)), like) is not first  # per identity
    assert _resized_mask(FaceCall(regions=(), cache=None), 0, mask, torch.Size((4, 4)), like) is not first


def test_nets_outside_their_window_add_nothing_at_all() -> None:
    """Strength 0 (outside the guidance window): the net is not run and no residual, not even a zero one."""
    net = RecordingNet()
    assert control_residuals([net], torch.zeros(2, 4, 4, 4), torch.tensor(1), _inputs(2), [0.0], False) == (None, None)
    assert net.seen == []
