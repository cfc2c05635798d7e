"""A1111 / Forge txt2img and img2img payloads, as sd-webui-controlnet takes InstantID, turned into our own
``/v1/generate`` JSON body (then checked by the same :func:`~instantid.service.requests.job_request` as that
endpoint; img2img adds the start picture).

The InstantID units sit in ``alwayson_scripts.controlnet.args`` (the script key matched case-insensitively, as
A1111 matches script titles): an ``instant_id_face_embedding`` unit (model ``ip-adapter_instant_id_sdxl``; its
image(s) = the face photo(s); weight = adapter strength) and an ``instant_id_face_keypoints`` unit (model
``control_instant_id_sdxl``; its image = the pose photo, or none for the face's own pose; weight = IdentityNet
strength; guidance_start / guidance_end = IdentityNet's window). The field mapping is :data:`SETTINGS_FROM`.

What A1111 would honour but we cannot (hires fix, face restoration, tiling, variation seeds, other ControlNet
models, a prompt/ControlNet balance) is refused with one line when it is asked for, never silently dropped; fields
that do not change the picture, and names A1111 does not know, are ignored as A1111 ignores them, and listed in
the answer's ``info`` under ``ignored`` so a client can see what was not used.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from instantid.api.settings import MAX_IMAGES, RANDOM_SEED, SCHEDULERS, make_settings
from instantid.errors import InvalidInputError

SCRIPT = "controlnet"
EMBEDDING, KEYPOINTS = "instant_id_face_embedding", "instant_id_face_keypoints"
UNIT_MODELS = {EMBEDDING: "ip-adapter_instant_id_sdxl", KEYPOINTS: "control_instant_id_sdxl"}
# sd-webui-controlnet's preprocessors for the published demo's extra ControlNets: a unit with one of these adds that
# net at the unit's weight (the server's own pose/canny/depth ControlNet, whatever model name the unit gives).
EXTRA_MODULES = {"openpose": "pose", "openpose_full": "pose", "dw_openpose_full": "pose", "canny": "canny",
                 "depth_midas": "depth", "depth_anything": "depth", "depth_anything_v2": "depth", "depth_zoe": "depth"}
# sd-webui-controlnet's IP-Adapter preprocessors: a unit with one of these is a style reference (InstantStyle),
# its image(s) the style pictures and its weight the style strength (the server's own SDXL IP-Adapter).
STYLE_MODULES = ("ip-adapter_clip_sdxl", "ip-adapter_clip_g", "ip-adapter_clip_sdxl_plus_vith", "ip-adapter-auto")
PLACEHOLDER = ("none", "")  # module and model of an unused unit (clients send a few): skipped
CONTROL_MODES = ("Balanced", 0, "0")
DENOISING_STRENGTH = 0.75  # A1111's img2img default
# A1111 field -> our setting; weights and the IdentityNet window come from the units.
SETTINGS_FROM = {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps",
                 "cfg_scale": "guidance_scale", "seed": "seed", "width": "width", "height": "height"}
SPELLING = {ours: theirs for theirs, ours in SETTINGS_FROM.items()} | {
    "num_images": "batch_size * n_iter", "adapter_strength": f"{EMBEDDING} unit weight",
    "identitynet_strength": f"{KEYPOINTS} unit weight", "control_guidance_start": f"{KEYPOINTS} unit guidance_start",
    "control_guidance_end": f"{KEYPOINTS} unit guidance_end", "style": "styles", "scheduler": "sampler_name",
    **{f"{kind}_strength": f"{kind} unit weight" for kind in ("pose", "canny", "depth", "style")}}
# A1111 fields that change the picture when set, and their "off" values: anything else is refused (one line).
UNSUPPORTED = {"enable_hr": (False, None), "restore_faces": (False, None), "tiling": (False, None),
               "subseed_strength": (0, None), "script_name": (None, ""), "mask": (None, ""),
               "refiner_checkpoint": (None, "", "None"), "resize_mode": (0, "Just resize", None)}
# The rest of A1111's own fields: no effect here (saving, hires-fix-only values, k-diffusion noise knobs that
# our samplers do not read); ignored without comment, as they are sent by every client at their defaults.
KNOWN = {"sampler_name", "sampler_index", "scheduler", "batch_size", "n_iter", "styles", "override_settings",
         "alwayson_scripts", "denoising_strength", "init_images", "send_images", "save_images", "do_not_save_samples",
         "do_not_save_grid", "override_settings_restore_afterwards", "script_args", "subseed", "seed_resize_from_h",
         "seed_resize_from_w", "eta", "s_churn", "s_tmax", "s_tmin", "s_noise", "firstphase_width",
         "firstphase_height", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
         "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
         "include_init_images", "image_cfg_scale", "mask_blur", "inpainting_fill", "inpaint_full_res",
         "inpaint_full_res_padding", "inpainting_mask_invert", "initial_noise_multiplier", "force_task_id",
         "infotext", "comments", "disable_extra_networks", "sampler", "user", "mask_round", "latent_mask", "hr_scale",
         "refiner_switch_at"}
# Sampler names as A1111 spells them (ours carry that label in SCHEDULERS) and the k-diffusion aliases it takes.
ALIASES = {"Euler a": ("k_euler_a", "k_euler_ancestral"), "Euler": ("k_euler",), "DPM++ 2M": ("k_dpmpp_2m",),
           "DPM++ 2M Karras": ("k_dpmpp_2m_ka",), "LCM": ("k_lcm",)}
SAMPLERS = {label: name for name, (_, _, label) in SCHEDULERS.items()}
SCHEDULES = ("automatic", "uniform", "karras")  # A1111 1.9+'s separate "scheduler" field, as far as we have them
AUTOMATIC_KARRAS = {"DPM++ 2M"}  # A1111 1.9+ runs these with Karras sigmas under "automatic"


@dataclass
class Translated:
    """A txt2img / img2img payload as our ``/v1/generate`` JSON body (img2img: with its ``init_image`` and
    ``denoising_strength``), and what the answer reports back."""

    body: dict[str, Any]
    ignored: list[str] = field(default_factory=list)


def decode(value: Any, where: str) -> bytes:
    """One base64 photo as sent (``data:`` URI or plain)."""
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{where} must be a base64-encoded photo")
    try:
        return base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{where} is not valid base64") from None


def photo(value: Any, where: str) -> str:
    """One base64 photo as sent, checked to decode."""
    decode(value, where)
    return value


def unit_photos(unit: dict[str, Any], where: str) -> list[str]:
    """A unit's photos in every shape sd-webui-controlnet takes (``image`` or its old name ``input_image``: a
    string, ``{"image": ..., "mask": ...}`` or a list of either) plus ``images`` (a list of strings)."""
    found: list[str] = []
    entries: list[Any] = []
    for raw in (unit.get("image", unit.get("input_image")), unit.get("images")):
        entries += raw if isinstance(raw, list) else [raw]
    for i, entry in enumerate(entries):
        if entry is None or entry == "":
            continue
        if isinstance(entry, dict):
            entry = entry.get("image")
        found.append(photo(entry, f"{where}.image[{i}]"))
    return found


def _model_name(value: Any) -> str:
    """A model name without the " [hash]" A1111 lists append."""
    return str(value or "").split(" [", 1)[0].strip()


def instantid_units(payload: dict[str, Any]
                    ) -> tuple[dict[str, Any], dict[str, Any] | None, list[str], dict[str, dict[str, Any]]]:
    """The embedding unit, the keypoints unit (or None), the other scripts' names (ignored) and the extra
    ControlNet units by kind (pose, canny, depth)."""
    scripts = payload.get("alwayson_scripts") or {}
    if not isinstance(scripts, dict):
        raise InvalidInputError("alwayson_scripts must be an object of {script name: {args: [...]}}")
    ours = {k: v for k, v in scripts.items() if str(k).lower() == SCRIPT}
    others = [f"alwayson_scripts.{k}" for k in scripts if str(k).lower() != SCRIPT]
    args = next(iter(ours.values()), None) or {"args": []}
    args = args.get("args") if isinstance(args, dict) else args
    if not isinstance(args, list):
        raise InvalidInputError("alwayson_scripts.controlnet.args must be a list of ControlNet units")
    units: dict[str, dict[str, Any]] = {}
    for i, unit in enumerate(args):
        where = f"alwayson_scripts.controlnet.args[{i}]"
        if not isinstance(unit, dict):
            raise InvalidInputError(f"{where} must be a ControlNet unit (an object)")
        module = str(unit.get("module") or "none")
        if unit.get("enabled") is False or (module.lower() in PLACEHOLDER
                                            and _model_name(unit.get("model")).lower() in PLACEHOLDER):
            continue
        if module in STYLE_MODULES:
            if "style" in units:
                raise InvalidInputError(f"{where}: one style unit per request (it takes several images)")
            units["style"] = {**unit, "where": where, "index": i}
            continue
        if module in EXTRA_MODULES:
            kind = EXTRA_MODULES[module]
            if kind in units:
                raise InvalidInputError(f"{where}: one {kind} unit per request")
            if (unit.get("guidance_start") or 0) != 0 or unit.get("guidance_end", 1) not in (1, None):
                raise InvalidInputError(f"{where}: the extra ControlNets act on every step; leave guidance_start 0 "
                                        "and guidance_end 1")
            units[kind] = {**unit, "where": where, "index": i}
            continue
        if module not in UNIT_MODELS:
            raise InvalidInputError(f"{where}.module: unknown module {module!r}; this server takes "
                                    f"{EMBEDDING}, {KEYPOINTS} and {', '.join(EXTRA_MODULES)}")
        if _model_name(unit.get("model")) != UNIT_MODELS[module]:
            raise InvalidInputError(f"{where}.model: module {module} takes model {UNIT_MODELS[module]}, got "
                                    f"{unit.get('model')!r}")
        if module in units:
            raise InvalidInputError(f"{where}: one {module} unit per request (one person)")
        if unit.get("control_mode", "Balanced") not in CONTROL_MODES:
            raise InvalidInputError(f"{where}.control_mode: only Balanced is supported, got {unit['control_mode']!r}")
        units[module] = {**unit, "where": where, "index": i}
    if EMBEDDING not in units:
        raise InvalidInputError(f"send the face photo in an {EMBEDDING} unit ({UNIT_MODELS[EMBEDDING]}) in "
                                "alwayson_scripts.controlnet.args; this server makes InstantID pictures only")
    embedding = units[EMBEDDING]
    if (embedding.get("guidance_start") or 0) != 0 or embedding.get("guidance_end", 1) not in (1, None):
        raise InvalidInputError(f"{embedding['where']}: the face adapter acts on every step; leave guidance_start 0 "
                                "and guidance_end 1 (IdentityNet's window is the keypoints unit's)")
    extra = {kind: units[kind] for kind in ("pose", "canny", "depth", "style") if kind in units}
    return embedding, units.get(KEYPOINTS), others, extra


def scheduler_of(payload: dict[str, Any]) -> str | None:
    """Our scheduler for A1111's ``sampler_name`` (or the old ``sampler_index``) and ``scheduler``."""
    schedule = str(payload.get("scheduler") or "").lower() or None
    if schedule is not None and schedule not in SCHEDULES:  # checked with or without a sampler: never ignored
        raise InvalidInputError(f"scheduler: unknown scheduler {payload['scheduler']!r}; this server has "
                                f"{', '.join(SCHEDULES)}")
    asked = payload.get("sampler_name") or payload.get("sampler_index")
    if not asked:
        return None
    by_name = {label.lower(): label for label in SAMPLERS} | {
        alias: label for label, aliases in ALIASES.items() for alias in aliases} | {
        name: label for label, name in SAMPLERS.items()}
    label = by_name.get(str(asked).lower())
    if label is None:
        raise InvalidInputError(f"sampler_name: unknown sampler {asked!r}; this server has {', '.join(SAMPLERS)}")
    karras = label.endswith(" Karras")
    plain = label.removesuffix(" Karras")
    if schedule == "karras" or (schedule == "automatic" and plain in AUTOMATIC_KARRAS):
        if f"{plain} Karras" not in SAMPLERS:
            raise InvalidInputError(f"scheduler: {plain} runs without Karras sigmas here; send scheduler 'automatic'")
        return SAMPLERS[f"{plain} Karras"]
    if schedule == "uniform" and karras:
        return SAMPLERS[plain]
    return SAMPLERS[label]


def check_model(payload: dict[str, Any], model_name: str) -> None:
    """``override_settings.sd_model_checkpoint`` must name the model this server runs (there is one)."""
    overrides = payload.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise InvalidInputError("override_settings must be an object")
    asked = overrides.get("sd_model_checkpoint")
    if asked and _model_name(asked) != model_name:
        raise InvalidInputError(f"override_settings.sd_model_checkpoint: unknown model {asked!r}; this server runs "
                                f"{model_name!r}")


def translate(payload: dict[str, Any], model_name: str, image_to_image: bool = False) -> Translated:
    """Our ``/v1/generate`` JSON body for an A1111 txt2img (img2img) payload; errors name A1111's fields.

    As sd-webui-controlnet in img2img, a unit without an image takes the init image (the face, the pose)."""
    if not isinstance(payload, dict):
        raise InvalidInputError("the JSON body must be an object")
    for name, allowed in UNSUPPORTED.items():
        if name in payload and payload[name] not in allowed:
            raise InvalidInputError(f"{name}: not supported by this server (send {allowed[0]!r} or leave it out)")
    embedding, keypoints, ignored, extra = instantid_units(payload)
    check_model(payload, model_name)
    init = _init_image(payload) if image_to_image else None
    faces = unit_photos(embedding, embedding["where"])
    names = [f"controlnet.args[{embedding['index']}].image[{i}]" for i in range(len(faces))]
    if not faces and init is not None:
        faces, names = [init], ["init_images[0]"]
    if not faces:
        raise InvalidInputError(f"{embedding['where']}.image: send the face photo(s)")
    values: dict[str, Any] = {ours: payload[theirs] for theirs, ours in SETTINGS_FROM.items()
                              if payload.get(theirs) is not None}
    if isinstance(values.get("seed"), int) and values["seed"] < RANDOM_SEED:  # A1111 takes any negative as random
        values["seed"] = RANDOM_SEED
    for side in ("width", "height"):  # A1111 rounds the size down to the latent grid (8 px)
        if isinstance(values.get(side), int) and not isinstance(values[side], bool):
            values[side] -= values[side] % 8
    count = _count(payload, "batch_size") * _count(payload, "n_iter")
    values.update(num_images=count, scheduler=scheduler_of(payload), style=_style(payload.get("styles")))
    values["adapter_strength"] = embedding.get("weight", 1.0)
    pose: str | None = None
    if keypoints is None:  # sd-webui-controlnet without the keypoints unit: no IdentityNet
        values["identitynet_strength"] = 0.0
    else:
        values["identitynet_strength"] = keypoints.get("weight", 1.0)
        values["control_guidance_start"] = keypoints.get("guidance_start", 0.0)
        values["control_guidance_end"] = keypoints.get("guidance_end", 1.0)
        poses = unit_photos(keypoints, keypoints["where"])
        if len(poses) > 1:
            raise InvalidInputError(f"{keypoints['where']}.image: one pose photo, got {len(poses)}")
        poses = poses or ([init] if init is not None else [])
        pose = poses[0] if poses and poses[0] != faces[0] else None  # the face's own pose without a second look
    style = extra.pop("style", None)
    if style is not None:
        values["style_strength"] = style.get("weight", 1.0)
    for kind, unit in extra.items():  # their maps come from the pose photo, else the face: ours has one source
        values[f"{kind}_strength"] = unit.get("weight", 1.0)
        sources = unit_photos(unit, unit["where"])
        if sources and sources[0] not in (pose or faces[0], faces[0]):
            raise InvalidInputError(f"{unit['where']}.image: the extra ControlNets' maps are made from the pose "
                                    f"photo (the {KEYPOINTS} unit's) or the face photo; send one of those or none")
    settings = make_settings({k: v for k, v in values.items() if v is not None}, lambda f: SPELLING.get(f, f))
    body = {**settings.model_dump(exclude_unset=True), "face": faces, "face_names": names,
            **({"pose": pose} if pose else {})}
    ignored += sorted(k for k in payload if k not in SETTINGS_FROM and k not in KNOWN and k not in UNSUPPORTED)
    ignored += sorted(f"override_settings.{k}" for k in payload.get("override_settings") or {}
                      if k != "sd_model_checkpoint")
    if not image_to_image and payload.get("init_images"):
        ignored.append("init_images")  # A1111's txt2img does not read them either
    if style is not None:
        pictures = unit_photos(style, style["where"])
        if not pictures:
            raise InvalidInputError(f"{style['where']}.image: send the style reference picture(s)")
        body["style_image"] = pictures
    if image_to_image and init is not None:  # our own image-to-image fields: the picture and the strength knob
        body.update(init_image=init, denoising_strength=_strength(payload))
    return Translated(body, ignored)


def _init_image(payload: dict[str, Any]) -> str:
    images = payload.get("init_images")
    if not isinstance(images, list) or not images:
        raise InvalidInputError("init_images: send the picture to start from (a list of one base64 image)")
    if len(images) > 1:
        raise InvalidInputError(f"init_images: one picture per request, got {len(images)}")
    return photo(images[0], "init_images[0]")


def _strength(payload: dict[str, Any]) -> float:
    value = payload.get("denoising_strength")
    if value is None:
        return DENOISING_STRENGTH
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise InvalidInputError(f"denoising_strength must be above 0 and at most 1, got {value!r}")
    return float(value)


def _count(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name, 1)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGES:
        raise InvalidInputError(f"{name} must be an integer between 1 and {MAX_IMAGES}, got {value!r}")
    return value


def _style(styles: Any) -> str | None:
    """A1111's ``styles`` list: at most one of our style templates (``GET /v1/models`` lists them)."""
    if styles in (None, "", []):
        return None
    if isinstance(styles, str):
        styles = [styles]
    if not isinstance(styles, list) or len(styles) > 1 or not isinstance(styles[0], str):
        raise InvalidInputError(f"styles: at most one style name, got {styles!r}")
    return styles[0]


__all__ = ["EMBEDDING", "KEYPOINTS", "SAMPLERS", "SCHEDULES", "UNIT_MODELS", "Translated", "scheduler_of",
           "translate"]
