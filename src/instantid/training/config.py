"""Training configuration: one dataclass, one comment per field; command-line flags and their help are derived
from it.

Defaults follow the paper's recipe (SDXL frozen; Resampler + decoupled cross-attention + IdentityNet trained,
batch 2 per GPU, epsilon MSE) and diffusers' ``train_controlnet_sdxl.py`` where the paper is silent.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instantid.errors import InvalidInputError


@dataclass
class TrainConfig:
    # ---- data ----
    data_dir: str = ""  # a folder written by `instantid prepare` (manifest.jsonl, images/, embeddings/)
    output_dir: str = "instantid-training"  # checkpoints, logs, samples and the exported release go here
    resolution: int = 1024  # images are resized (short side) and centre-cropped to this square
    dataloader_num_workers: int = 2  # DataLoader worker processes (image decoding + keypoint pictures)
    # ---- models ----
    pretrained_model: str = "stabilityai/stable-diffusion-xl-base-1.0"  # frozen SDXL, diffusers layout
    pretrained_vae: str | None = None  # e.g. madebyollin/sdxl-vae-fp16-fix; SDXL's own VAE overflows in fp16
    identitynet: str | None = None  # a ControlNetModel folder to fine-tune; None: a copy of the UNet (from_unet)
    adapter: str | None = None  # an ip-adapter.bin/.safetensors to fine-tune; None: a fresh adapter
    resampler_width: int = 1280  # fresh adapter only: Resampler width (published 1280)
    resampler_depth: int = 4  # fresh adapter only: Resampler layers (published 4; diffusers' loader needs 4)
    num_tokens: int = 16  # fresh adapter only: face tokens per image (published 16)
    embedding_space: str = "antelopev2-512"  # face model of the data; recorded in the exported adapter
    embedding_dim: int = 512  # face-embedding size (antelopev2 512, dlib 128)
    # ---- objective ----
    text_dropout: float = 0.05  # fraction of captions replaced by "" (classifier-free guidance on text)
    face_dropout: float = 0.05  # fraction of face embeddings zeroed (the pipeline's negative branch)
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' --snr_gamma, 5 there)
    # ---- optimisation ----
    train_batch_size: int = 2  # per device (paper: 2 on each of 48 GPUs)
    max_train_steps: int = 100_000  # optimizer steps
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-5  # AdamW learning rate (IP-Adapter / ControlNet recipes use 1e-5..1e-4)
    scale_lr: bool = False  # multiply the learning rate by batch * accumulation * processes
    lr_scheduler: str = "constant_with_warmup"  # any diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = 500  # warm-up optimizer steps
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    adam_weight_decay: float = 1e-2  # AdamW decoupled weight decay
    adam_epsilon: float = 1e-8  # AdamW epsilon
    use_8bit_adam: bool = False  # bitsandbytes' 8-bit AdamW (GPU only; about 1/4 of the optimizer memory)
    max_grad_norm: float = 1.0  # gradient clipping
    mixed_precision: str = "no"  # "no", "fp16" or "bf16"; frozen modules are cast, trained ones stay fp32
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, ~30% slower)
    use_ema: bool = False  # keep an exponential moving average of the trained weights; exported if set
    ema_decay: float = 0.9999  # EMA decay per optimizer step
    seed: int = 0  # seeds initialisation, data order, noise, timesteps and dropout
    # ---- checkpoints, logs, samples ----
    checkpointing_steps: int = 1000  # save a resumable checkpoint every N optimizer steps
    checkpoints_total_limit: int | None = None  # keep at most this many checkpoints (oldest deleted)
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "latest" in output_dir
    report_to: str = "jsonl"  # "jsonl" (always written) or also an accelerate tracker: "tensorboard", "wandb"
    validation_steps: int = 1000  # write sample images every N optimizer steps (0: never)
    num_validation_images: int = 2  # samples per validation, from the first dataset records
    validation_inference_steps: int = 30  # sampler steps per validation image
    export_format: str = "bin"  # adapter file written at the end: "bin" (published) or "safetensors"

    def validate(self) -> None:
        """Refuse settings that would fail late (after loading models) with a clear one-line error."""
        if not self.data_dir:
            raise InvalidInputError("--data-dir is required: a folder written by `instantid prepare`")
        if self.resolution <= 0 or self.resolution % 8:
            raise InvalidInputError(f"--resolution must be a positive multiple of 8, got {self.resolution}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise InvalidInputError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.export_format not in ("bin", "safetensors"):
            raise InvalidInputError(f"--export-format must be bin or safetensors, got {self.export_format!r}")
        for name in ("text_dropout", "face_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise InvalidInputError(f"{flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise InvalidInputError(f"--snr-gamma must be positive, got {self.snr_gamma}")
        if self.resampler_depth != 4:
            raise InvalidInputError("--resampler-depth must be 4: diffusers' IP-Adapter-Plus loader builds 4 layers")
        if min(self.train_batch_size, self.max_train_steps, self.gradient_accumulation_steps) < 1:
            raise InvalidInputError(
                "--train-batch-size, --max-train-steps and --gradient-accumulation-steps must be >= 1"
            )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """A saved config (``--config``); a missing, unreadable or foreign file is one line, not a traceback."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidInputError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"--config {path}: not a JSON config ({exc})") from None
        if not isinstance(values, dict):
            raise InvalidInputError(f"--config {path}: expected a JSON object of config fields")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InvalidInputError(f"--config {path}: unknown field(s) {', '.join(unknown)}")
        return cls(**values)


def flag(name: str) -> str:
    """The command-line spelling of a config field (errors name what the user typed)."""
    return "--" + name.replace("_", "-")


def _flag_type(annotation: object) -> type:
    """The scalar type of a field annotation such as ``int``, ``str | None``."""
    hint = annotation
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint  # type: ignore[return-value]


def field_help() -> dict[str, str]:
    """Each field's trailing comment in the class body above: the one description of a field, shown by --help."""
    found = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        match = re.match(r"\s{4}(\w+): [^=]+=.*?  # (.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).replace("%", "%%")  # argparse formats help with %
    return found


class _ClickLikeHelp(argparse.HelpFormatter):
    """argparse help laid out as the other ``instantid`` commands' (click): ``Usage:``, 2-space indents."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, indent_increment=2, max_help_position=34)

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, prefix="Usage: ")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """``--field-name value`` flags for every config field (``--use-ema`` / ``--no-use-ema`` for booleans);
    the underscore spellings (``--data_dir``) of earlier releases and diffusers' scripts still work, unlisted.
    ``--config run.json`` reads a saved config first, flags then override it."""
    parser = argparse.ArgumentParser(
        prog="instantid train", usage="%(prog)s [OPTIONS]", allow_abbrev=False, add_help=False,
        description="Train the face adapter and IdentityNet (multi-GPU / multi-node: `accelerate launch ... -m "
        "instantid.training.trainer <same options>`).", formatter_class=_ClickLikeHelp)
    options = parser.add_argument_group("Options")
    options.add_argument("--config", metavar="<path>",
                         help="A JSON config (e.g. output_dir/train_config.json); options override it.")
    hints = typing.get_type_hints(TrainConfig)
    helps = field_help()
    for f in dataclasses.fields(TrainConfig):
        kind = _flag_type(hints[f.name])
        hyphen, underscore = flag(f.name), "--" + f.name
        spec: dict[str, Any] = {"action": argparse.BooleanOptionalAction} if kind is bool else {
            "type": kind, "metavar": f"<{kind.__name__}>"}
        shown = "" if f.default == "" else f"  [default: {'none' if f.default is None else f.default}]"
        text = helps.get(f.name, "")
        options.add_argument(hyphen, dest=f.name, default=None, help=text[:1].upper() + text[1:] + shown, **spec)
        if underscore != hyphen:
            options.add_argument(underscore, dest=f.name, default=None, help=argparse.SUPPRESS, **spec)
    options.add_argument("--help", "-h", action="help", help="Show this message and exit.")
    args = parser.parse_args(argv)
    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    overrides = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    config = dataclasses.replace(config, **overrides)
    config.validate()
    return config
