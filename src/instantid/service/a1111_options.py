"""A1111's ``/sdapi/v1/options`` as far as this server has them: the model (one per server), the answer's image
format, and the values it runs fixed. Each API key has its own options (without keys, every caller shares one
set, as in A1111), kept in the server's memory: one key's options never change another key's answers, and no
option reaches the server's own settings (keys, limits, paths), which only its command line and environment set.

    sd_model_checkpoint         must name the server's model (title, name or "name [hash]"); nothing to switch to
    samples_format              png (default), jpg / jpeg or webp: the format of the txt2img / img2img images
    jpeg_quality                1-100 (default 80, A1111's), for jpg and webp
    sd_checkpoint_hash, CLIP_stop_at_last_layers, eta_noise_seed_delta
                                what this server runs; another value is refused (nothing here can honour it)

Anything else is ignored, as A1111 ignores options it does not apply, and named in the answer's ``ignored``.
"""

from __future__ import annotations

import io
import threading
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from instantid.errors import InvalidInputError

if TYPE_CHECKING:
    from instantid.service.core import JobService, ServerSettings

DEFAULTS: dict[str, Any] = {"samples_format": "png", "jpeg_quality": 80}
FIXED: dict[str, Any] = {"CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0}  # what our pipeline runs
EXIF_UNICODE = b"UNICODE\0"  # the EXIF UserComment prefix A1111 writes its infotext under (UTF-16 big-endian)


class OptionsUpdate(BaseModel):
    """The body of ``POST /sdapi/v1/options``: the options this server knows, strictly typed (a wrong type is
    422); any other option is accepted and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)
    sd_model_checkpoint: str | None = Field(None, description="The server's model (GET /sdapi/v1/sd-models).")
    sd_checkpoint_hash: str | None = Field(None, description="Read-only: the model's hash, or leave it out.")
    samples_format: Literal["png", "jpg", "jpeg", "webp"] | None = Field(
        None, description="The format of the images txt2img / img2img answer with (this API key's).")
    jpeg_quality: int | None = Field(None, ge=1, le=100, description="JPEG / WebP quality.")
    CLIP_stop_at_last_layers: int | None = Field(None, description="1 only (no clip skip here).")
    eta_noise_seed_delta: int | None = Field(None, description="0 only.")


class A1111Options:
    """The settable options of each API key (thread-safe; the defaults until a key sets one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_owner: dict[str, dict[str, Any]] = {}

    def values(self, owner: str) -> dict[str, Any]:
        with self._lock:
            return {**DEFAULTS, **self._by_owner.get(owner, {})}

    def update(self, owner: str, body: dict[str, Any], model: tuple[str, str, str | None]) -> list[str]:
        """Check every option, then set them all for ``owner`` (nothing is set when one is refused); the names
        ignored."""
        try:
            update = OptionsUpdate.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInputError(f"{where}: {first['msg']}, got {first.get('input')!r}"[:300]) from None
        title, name, short_hash = model
        asked = update.sd_model_checkpoint
        if asked is not None and asked.split(" [", 1)[0].strip() != name:
            raise InvalidInputError(f"sd_model_checkpoint: unknown model {asked!r}; this server runs {title!r}")
        if update.sd_checkpoint_hash is not None and update.sd_checkpoint_hash != short_hash:
            raise InvalidInputError(f"sd_checkpoint_hash is read-only (the model's: {short_hash!r})")
        for option, value in FIXED.items():
            if getattr(update, option) not in (None, value):
                raise InvalidInputError(f"{option}: this server runs {value} only, got {getattr(update, option)}")
        chosen = {k: getattr(update, k) for k in DEFAULTS if getattr(update, k) is not None}
        with self._lock:
            self._by_owner[owner] = {**self._by_owner.get(owner, {}), **chosen}
        return sorted(update.model_extra or {})


def model_title(service: JobService, settings: ServerSettings) -> tuple[str, str, str | None]:
    """A1111's ``title`` ("name [hash]"), name and short hash of the base model: the loaded model's, or (workers
    run it elsewhere) the configured one's name without a hash."""
    from instantid.io.models import DEFAULT_BASE, public_ref

    model = service.model
    if model is not None and not settings.queue and model.model_name:
        name, short_hash = model.model_name, model.model_hash
    else:
        name, short_hash = public_ref(settings.base or DEFAULT_BASE), None
    return (f"{name} [{short_hash}]" if short_hash else name), name, short_hash


def encode_image(png: bytes, options: dict[str, Any]) -> bytes:
    """One answer image in the caller's ``samples_format``: the PNG as written (settings in its ``parameters``
    chunk), or a JPEG / WebP with that text in EXIF UserComment, where A1111 puts it."""
    if options["samples_format"] == "png":
        return png
    from PIL import ExifTags, Image

    with Image.open(io.BytesIO(png)) as image:
        exif = Image.Exif()
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = (
            EXIF_UNICODE + str(image.info.get("parameters", "")).encode("utf-16-be"))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="WEBP" if options["samples_format"] == "webp" else "JPEG",
                                  quality=options["jpeg_quality"], exif=exif)
    return out.getvalue()


__all__ = ["A1111Options", "OptionsUpdate", "encode_image", "model_title"]
