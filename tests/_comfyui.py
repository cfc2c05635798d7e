"""The tiny SDXL-layout stack that ComfyUI and diffusers both hold exactly, and ComfyUI imported for tests
(tests/test_comfyui.py).

ComfyUI fixes SDXL's head size (64), its GroupNorm groups (32), its size embedding (256 per number) and
IdentityNet's hint encoder (16, 32, 96, 256), so the tiny UNet uses those, with widths 64/128 and two
transformers in the deepest level and the middle block (17 cross-attention layers).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

SIZE = 128  # picture side; latents are 16 x 16
POOLED = 32
CONTEXT = 64
UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": POOLED + 6 * 256, "in_channels": 4, "model_channels": 64,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 1, 1, 2, 2], "channel_mult": [1, 2, 2],
    "transformer_depth_middle": 2, "use_linear_in_transformer": True, "context_dim": CONTEXT,
    "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
KPS = np.array([[44.0, 50.0], [84.0, 50.0], [64.0, 70.0], [48.0, 92.0], [80.0, 92.0]])


def torchvision_stand_in(folder: Path) -> None:
    """ComfyUI's cosmos model imports ``torchvision.transforms`` at import time; PyPI's torchvision does not load
    beside the CPU torch used here, and nothing these tests run uses it."""
    package = folder / "torchvision"
    (package / "transforms" / "v2").mkdir(parents=True)
    (package / "__init__.py").write_text('"""Test-only stand-in (tests/test_comfyui.py)."""\n')
    (package / "transforms" / "__init__.py").write_text("")
    (package / "transforms" / "v2" / "__init__.py").write_text("class ToTensor:\n    pass\n")


def tiny_unet():
    """The tiny diffusers UNet, seeded: ComfyUI's UNet is loaded from its weights (``unet_to_diffusers``)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(64, 128, 128), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2, 2),
        transformer_layers_per_block=(1, 1, 2), cross_attention_dim=CONTEXT, norm_num_groups=32,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=POOLED + 6 * 256,
    ).eval()


def make_identity(seed: int):
    """An antelopev2-space identity with a random embedding, posed by ``KPS`` on a ``SIZE`` picture."""
    from instantid.api.identity import Identity
    from instantid.faces import Face

    embedding = np.random.default_rng(seed).standard_normal(512).astype(np.float32) * 5
    face = Face(bbox=(32.0, 32.0, 96.0, 96.0), score=1.0, kps=KPS.astype(np.float32), embedding=embedding,
                space="antelopev2-512")
    return Identity(embedding=embedding, space="antelopev2-512", pose_face=face, pose_size=(SIZE, SIZE),
                    references=(), fusion="mean")


def make_conditioning(seed: int) -> tuple[list, list, dict]:
    """Positive and negative CONDITIONING written directly (no CLIP), and their tensors for our pipeline."""
    gen = torch.Generator().manual_seed(seed)
    size = {"width": SIZE, "height": SIZE}
    text = {k: torch.randn(1, 77, CONTEXT, generator=gen) for k in ("positive", "negative")}
    pooled = {k: torch.randn(1, POOLED, generator=gen) for k in ("positive", "negative")}
    positive = [[text["positive"], {"pooled_output": pooled["positive"], **size}]]
    negative = [[text["negative"], {"pooled_output": pooled["negative"], **size}]]
    return positive, negative, {"text": text, "pooled": pooled}


@contextmanager
def comfyui(vendor: Path, root: Path) -> Iterator[SimpleNamespace]:
    """ComfyUI imported in CPU mode from the read-only copy at ``vendor``, every folder it writes or searches
    under ``root``, its model folders registered (with the tiny antelopev2 face model in ``insightface``)."""
    import instantid.pipelines.sdxl  # noqa: F401  (diffusers and transformers decide about torchvision once, before the stand-in)
    from instantid.faces.tiny import write_tiny_antelopev2

    stand_in = None
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:
        stand_in = str(root / "stand-ins")
        torchvision_stand_in(root / "stand-ins")
        sys.modules.pop("torchvision", None)
    sys.path[:0] = [str(vendor)] + ([stand_in] if stand_in else [])
    try:
        import comfy.options

        comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        # main.py imports ComfyUI's utils package (its server's routes need it) before nodes.py puts comfy/ first on
        # sys.path, where comfy/utils.py would shadow it
        importlib.import_module("utils.json_util")
        import comfy.controlnet
        import comfy.model_management
        import comfy.model_patcher
        import comfy.sample
        import comfy.samplers
        import comfy.supported_models
        import comfy.utils
        import folder_paths
        import nodes as comfy_nodes

        if stand_in:  # imported by ComfyUI's cosmos model only; no other library may see it
            sys.path.remove(stand_in)
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]
        for kind in ("output", "temp", "input", "user"):
            (root / kind).mkdir()
        folder_paths.set_output_directory(str(root / "output"))
        folder_paths.set_temp_directory(str(root / "temp"))
        folder_paths.set_input_directory(str(root / "input"))
        folder_paths.set_user_directory(str(root / "user"))
        from instantid.comfyui import nodes as ours

        models = root / "models"
        for name in ("instantid", "controlnet", "insightface"):
            (models / name).mkdir(parents=True)
            folder_paths.add_model_folder_path(name, str(models / name), is_default=True)
        write_tiny_antelopev2(models / "insightface" / "models" / "antelopev2")
        yield SimpleNamespace(comfy=comfy, folder_paths=folder_paths, nodes=comfy_nodes, ours=ours, models=models)
    finally:
        sys.path.remove(str(vendor))


def one_evaluation(comfy, model, positive, negative, sigma: float, cfg: float = 5.0):
    """ComfyUI's own sampling path for exactly one model evaluation: (x it was given, guided denoised)."""
    seen = {}

    def once(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        seen["x"] = x.clone()
        seen["denoised"] = model_k(x, sigmas[0] * x.new_ones(x.shape[0]), **(extra_args or {}))
        return seen["denoised"]

    c = comfy.comfy
    noise = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(3))
    c.sample.sample_custom(model, noise, cfg, c.samplers.KSAMPLER(once), torch.tensor([sigma, 0.0]), positive,
                           negative, torch.zeros_like(noise), disable_pbar=True, seed=0)
    return seen["x"], seen["denoised"]


def ksampler(comfy, model, positive, negative) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
    (out,) = comfy.nodes.KSampler().sample(model, 7, 2, 5.0, "euler", "normal", positive, negative, latent)
    return out["samples"]


def pipeline_denoised(pipe, x: torch.Tensor, t: int, sigma: float, people: list, ip_weight: float,
                       cn_strength: float) -> torch.Tensor:
    """Our pipeline's guided denoise step as ComfyUI's denoised: ``x - sigma * eps`` (EPS model); ``people``
    holds (embedding (E,), keypoint IMAGE at the picture size, mask at the picture size or None)."""
    from instantid.core.attention import FaceCall, FaceRegion
    from instantid.core.denoise import StepInputs, denoise_step, face_tokens

    _, _, text = make_conditioning(1)
    regions, images = [], []
    with torch.no_grad():
        for embedding, kps, mask in people:
            embedding = embedding[None]
            tokens = torch.cat([face_tokens(pipe.unet, torch.zeros_like(embedding)), face_tokens(pipe.unet, embedding)])
            regions.append(FaceRegion(tokens, mask))
            images.append(kps.movedim(-1, 1).repeat(2, 1, 1, 1))
        inputs = StepInputs(
            prompt_embeds=torch.cat([text["text"]["negative"], text["text"]["positive"]]),
            added_cond={"text_embeds": torch.cat([text["pooled"]["negative"], text["pooled"]["positive"]]),
                        "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)},
            faces=FaceCall(tuple(regions), scale=ip_weight), identity_images=tuple(images), guidance_scale=5.0,
        )
        eps = denoise_step(pipe.unet, [pipe.controlnet], x / (sigma**2 + 1) ** 0.5, torch.tensor(float(t)), inputs,
                           [cn_strength])
    return x - sigma * eps


def agree(denoised: torch.Tensor, expected: torch.Tensor, plain: torch.Tensor) -> None:
    error = (denoised - expected).abs().max()
    assert torch.allclose(denoised, expected, atol=1e-4, rtol=1e-4), error
    assert (denoised - plain).abs().max() > 100 * error, "InstantID changes the step: the check is not vacuous"


# The UI ("workflow") format the ComfyUI frontend loads from a dropped file, and what it queues from it
# (Comfy-Org/ComfyUI_frontend: widgets built per INPUT_TYPES input in order, graphToPrompt in executionUtil.ts).
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its ``pos``


def input_slots(cls) -> list[tuple[str, object, dict, bool]]:
    """A node class's inputs in the frontend's order: (name, type, options, is it a widget)."""
    spec = cls.INPUT_TYPES()
    slots = []
    for section in ("required", "optional"):
        for name, (kind, *rest) in spec.get(section, {}).items():
            options = rest[0] if rest else {}
            widget = (isinstance(kind, list | tuple) or kind in WIDGET_TYPES) and not options.get("forceInput")
            slots.append((name, kind, options, widget))
    return slots


def unsent_widgets(name: str, kind: object, options: dict) -> int:
    """Widgets the frontend adds after this one and keeps in ``widgets_values`` but never queues: the seed's
    ``control_after_generate`` combo (useIntWidget) and an image input's upload button (useImageUploadWidget)."""
    control = options.get("control_after_generate", kind == "INT" and name in ("seed", "noise_seed"))
    return int(bool(control)) + int(bool(options.get("image_upload")))


def ui_to_api(workflow: dict, classes: dict) -> dict:
    """The API prompt the frontend queues for a UI-format workflow: widget values mapped onto each class's widget
    inputs in order, linked inputs as ``[origin id, origin slot]``, a node's own title as ``_meta``."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        assert node["mode"] == 0, f"node {node['id']} is muted or bypassed: the frontend would not queue it"
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, kind, options, widget in input_slots(classes[node["type"]]):
            if widget:
                assert values, f"node {node['id']} ({node['type']}): no widget value for {name}"
                inputs[name] = values.pop(0)
                unsent = unsent_widgets(name, kind, options)
                assert len(values) >= unsent, f"node {node['id']}: the frontend saves {unsent} more after {name}"
                del values[:unsent]
        assert not values, f"node {node['id']} ({node['type']}): widget values left over: {values}"
        for slot in node["inputs"]:
            if slot["link"] is not None:  # a link wins over a widget of the same name
                _, origin, origin_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(origin), origin_slot]
        meta = {"_meta": {"title": node["title"]}} if "title" in node else {}
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, **meta}
    return prompt


def check_ui_slots_and_links(workflow: dict, classes: dict, validate_node_input) -> None:
    """Each node's sockets and outputs are its class's, and every link joins matching types at both ends."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert workflow["last_node_id"] == max(nodes)
    assert workflow["last_link_id"] == max(link[0] for link in workflow["links"])
    for node in nodes.values():
        cls = classes[node["type"]]
        sockets = [(name, kind) for name, kind, _, widget in input_slots(cls) if not widget]
        assert [(s["name"], s["type"]) for s in node["inputs"]] == sockets, node["id"]
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        assert [(o["name"], o["type"]) for o in node["outputs"]] == list(zip(names, cls.RETURN_TYPES, strict=True))
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        output, slot = nodes[origin]["outputs"][origin_slot], nodes[target]["inputs"][target_slot]
        assert link_id in output["links"] and slot["link"] == link_id, link_id
        assert kind == output["type"] == classes[nodes[origin]["type"]].RETURN_TYPES[origin_slot], link_id
        wanted = {name: kind for name, kind, _, _ in input_slots(classes[nodes[target]["type"]])}[slot["name"]]
        assert validate_node_input(kind, wanted), f"link {link_id}: {kind} into {slot['name']} ({wanted})"
    ends = sorted(s["link"] for n in nodes.values() for s in n["inputs"] if s["link"] is not None)
    starts = sorted(i for n in nodes.values() for o in n["outputs"] for i in o["links"] or [])
    assert ends == starts == sorted(link[0] for link in workflow["links"]), "links listed once at each end"


def check_ui_layout(workflow: dict) -> None:
    """Readable on the canvas: no two nodes (title bar included) overlap, every link runs left to right, and the
    stored execution order puts each node after its inputs."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    boxes = {i: (n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for i, n in nodes.items()}
    for a in boxes:
        for b in boxes:
            x0, y0, x1, y1 = boxes[a]
            u0, v0, u1, v1 = boxes[b]
            assert a == b or x1 <= u0 or u1 <= x0 or y1 <= v0 or v1 <= y0, f"nodes {a} and {b} overlap"
    for _, origin, _, target, _, _ in workflow["links"]:
        assert boxes[origin][2] < boxes[target][0], f"link {origin} -> {target} runs right to left"
        assert nodes[origin]["order"] < nodes[target]["order"], f"order puts {target} before {origin}"
