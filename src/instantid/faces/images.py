"""Reading photos for face analysis: any common file or in-memory image becomes 8-bit RGB, upright.

Phones store portraits sideways with an EXIF orientation tag, PNG cut-outs carry alpha, scanners write
16-bit greyscale, print workflows write CMYK: each would otherwise reach the detector wrong (rotated,
black background, clipped to white) and quietly produce no face or a worse embedding.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from instantid.errors import ImageReadError

# Far above any photo (a 50 MP camera frame is half of it) yet small enough that a crafted file cannot
# make us allocate gigabytes: PIL's own bomb check fires later and only warns below 2x its limit.
MAX_PIXELS = 100_000_000
# Transparent pixels become this colour: cut-out portraits are meant to sit on a plain backdrop, and the
# RGB values hidden under alpha 0 are arbitrary (often black), which hurts detection.
BACKGROUND_RGB = (255, 255, 255)

ImageSource = str | Path | bytes | Image.Image
# File suffixes taken as photos wherever a folder is searched (prepare, evaluate, benchmark references).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def describe_source(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return "<bytes>" if isinstance(source, bytes) else "<image>"


def check_file(path: str | Path, name: str | None = None) -> Path:
    """``path`` names a non-empty file (what can be said without decoding it); returns it as a Path."""
    label = describe_source(path, name)
    path = Path(path)
    if not path.exists():
        raise ImageReadError(label, "no such file")
    if not path.is_file():
        raise ImageReadError(label, "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(label, "the file is empty")
    return path


def _open(source: str | Path | bytes, label: str) -> Image.Image:
    if isinstance(source, bytes):
        if not source:
            raise ImageReadError(label, "the data is empty")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = check_file(source, label)
    try:
        with warnings.catch_warnings():
            # MAX_PIXELS is checked right after opening, with a one-line error; Pillow's own warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(stream)
    except UnidentifiedImageError:
        raise ImageReadError(label, "not an image file (unknown or unsupported format)") from None
    except Image.DecompressionBombError:
        # Pillow refuses above twice its own limit before telling us the size: still our limit, our words.
        raise ImageReadError(label, _too_large(f"over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels")) from None
    except OSError as exc:
        raise ImageReadError(label, f"the file is corrupt or truncated ({exc})") from None


def _too_large(size: str) -> str:
    return f"{size}, over the {MAX_PIXELS // 1_000_000}-megapixel limit; downscale it first"


def check_image(path: str | Path, name: str | None = None) -> Path:
    """``path`` opens as an image of an allowed size: its header is read, its pixels are not decoded (a check before
    a long run, cheap enough for every row of a batch); returns it as a Path."""
    label = describe_source(path, name)
    with _open(path, label) as image:
        _check_size(image, label)
    return Path(path)


def _check_size(image: Image.Image, label: str) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageReadError(label, f"the image has zero size ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageReadError(label, _too_large(f"{width}x{height} is {width * height / 1e6:.0f} megapixels"))


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float greyscale to 8 bits (PIL's convert('L') clips instead)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scale = 257.0  # 65535 -> 255
    elif image.mode == "F":
        scale = 1.0 / 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
    else:
        # Mode "I" holds 16-bit PNGs in older Pillow releases, and sometimes plain 8-bit data.
        scale = 257.0 if values.max(initial=0.0) > 255 else 1.0
    return Image.fromarray(np.clip(np.rint(values / scale), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_bit_depth_to_l(image)
    return image.convert("RGB")


def load_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Decode ``source`` fully into a new upright 8-bit RGB image.

    ``name`` is what error messages call the input (defaults to the path, or ``<bytes>``/``<image>``).
    Raises :class:`ImageReadError` for a missing, empty, non-image, truncated or oversized input.
    """
    label = describe_source(source, name)
    image = source if isinstance(source, Image.Image) else _open(source, label)
    _check_size(image, label)
    try:
        # Lazy decoders only notice truncation when pixels are read: force the full decode here.
        image.load()
        upright = ImageOps.exif_transpose(image)
        return _to_rgb(upright if upright is not None else image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(label, f"the file is corrupt or truncated ({exc})") from None
