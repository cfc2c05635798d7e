"""The demo/tiny stack's IdentityNet acts: its zero convolutions are drawn (seeded), so its residuals are non-zero
and follow the keypoint picture, and a pose changes the demo's picture. Without this every pose, keypoint, layout
and group test through the demo would pass with IdentityNet bypassed."""

from __future__ import annotations

import numpy as np
import torch
from _demo import FACES
from PIL import Image

from instantid.core.denoise import face_tokens
from instantid.core.keypoints import draw_kps
from instantid.io.tiny import draw_identitynet_weights

SIZE = 64
KPS = np.array([[20.0, 24], [44, 24], [32, 36], [22, 48], [42, 48]])


def _drawn(net) -> list[torch.Tensor]:
    """Weight and bias of every convolution draw_identitynet_weights draws: conditioning embedding (input, hidden,
    output), then the zero convolutions."""
    embedding = net.controlnet_cond_embedding
    convs = [embedding.conv_in, *embedding.blocks, embedding.conv_out, *net.controlnet_down_blocks,
             net.controlnet_mid_block]
    return [p.detach().clone() for conv in convs for p in (conv.weight, conv.bias)]


def _residuals(app, picture: Image.Image, embedding: np.ndarray) -> list[torch.Tensor]:
    pipe = app.pipe
    picture = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    tokens = face_tokens(pipe.unet, torch.as_tensor(embedding, dtype=torch.float32)[None])
    sample = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    added = {"text_embeds": torch.zeros(1, pipe.text_encoder_2.config.projection_dim),
             "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)}
    with torch.no_grad():
        down, mid = pipe.controlnet(sample, torch.tensor(500), encoder_hidden_states=tokens, controlnet_cond=picture,
                                    conditioning_scale=0.8, added_cond_kwargs=added, return_dict=False)
    return [*down, mid]


def test_demo_identitynet_residuals_are_non_zero_and_follow_the_keypoints(demo_app, obama) -> None:
    kps = _residuals(demo_app, draw_kps(Image.new("RGB", (SIZE, SIZE)), KPS), obama.embedding)
    blank = _residuals(demo_app, Image.new("RGB", (SIZE, SIZE)), obama.embedding)
    assert len(kps) == len(demo_app.pipe.controlnet.controlnet_down_blocks) + 1
    for index, (with_kps, without) in enumerate(zip(kps, blank, strict=True)):
        assert with_kps.abs().amax() > 0, f"residual {index} is zero"
        # The keypoints are a sizeable part of each residual, not a rounding-level trace of it.
        assert (with_kps - without).std() > 0.2 * with_kps.std(), f"residual {index} barely sees the keypoints"


def test_identitynet_weights_are_drawn_from_the_seed(demo_app) -> None:
    net = demo_app.pipe.controlnet
    drawn = _drawn(net)
    hidden = 2 + 2 * len(net.controlnet_cond_embedding.blocks)  # conditioning embedding before its output conv
    zero_convs = drawn[hidden:]
    assert all(w.abs().amax() > 0 for w in zero_convs[0::2])
    # Zero convolutions as the shared fixture's builder drew them: weights N(0, 0.2), the embedding output's bias 0.
    assert 0.15 < torch.cat([w.flatten() for w in zero_convs[0::2]]).std() < 0.25 and not zero_convs[1].any()
    for weight, bias in zip(drawn[:hidden:2], drawn[1:hidden:2], strict=True):  # He: N(0, 2 / fan_in), no bias
        assert 0.7 < weight.std() * (weight[0].numel() / 2) ** 0.5 < 1.3 and not bias.any()
    copy = type(net).from_config(net.config)
    draw_identitynet_weights(copy, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(_drawn(copy), drawn, strict=True))
    draw_identitynet_weights(copy, seed=1)
    assert not torch.equal(_drawn(copy)[2], drawn[2])


def test_the_pose_changes_the_demo_picture(demo_app) -> None:
    """Same identity and size, no face-region mask (which would also move with the pose): only IdentityNet sees
    the pose, so a different pose photo must give a different picture."""
    settings = dict(steps=2, seed=3, width=SIZE, height=SIZE, enhance_face_region=False)
    pictures = [
        np.asarray(demo_app.generate(demo_app.prepare_identity(FACES / "obama_1.jpg", pose=pose), **settings).images[0],
                   dtype=float)
        for pose in (FACES / "obama_1.jpg", FACES / "pose_1.jpg")
    ]
    assert np.abs(pictures[0] - pictures[1]).mean() > 1
