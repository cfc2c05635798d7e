"""Writing generated images: PNG with its settings inside, a JSON sidecar beside it, nothing half-written.

Every surface (CLI, batch, web UI, HTTP server) writes through here, so every image anyone gets from this
project carries what made it: the ``instantid`` PNG text chunk (JSON) and a ``parameters`` chunk in the
human-readable form other Stable Diffusion tools show.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from instantid.errors import InstantIDError, InvalidInputError
from instantid.io.models import public_ref

METADATA_KEY = "instantid"
PARAMETERS_KEY = "parameters"
MAX_NAME_TRIES = 10_000


def parameters_text(metadata: dict[str, Any]) -> str:
    """The A1111 ``parameters`` block (prompt, ``Negative prompt:`` line, then ``Key: value`` pairs), so image
    sites and tools that read A1111 metadata show the sampler, model and hash. An empty prompt stays empty."""
    settings = metadata.get("settings", {})
    versions = metadata.get("versions") or {}
    pairs = {
        "Steps": settings.get("steps"),
        "Sampler": metadata.get("sampler") or metadata.get("scheduler"),
        "CFG scale": settings.get("guidance_scale"),
        "Seed": metadata.get("seed", settings.get("seed")),
        "Size": f"{metadata.get('width')}x{metadata.get('height')}",
        "Model hash": metadata.get("model_hash"),
        "Model": metadata.get("model_name"),
        "Lora": public_ref(metadata.get("lora")),
        "IdentityNet strength": settings.get("identitynet_strength"),
        "Adapter strength": settings.get("adapter_strength"),
        "Style": settings.get("style") or "(No style)",
        "Reference faces": metadata.get("reference_faces"),
        "Dtype": metadata.get("dtype"),
        "Device": metadata.get("device"),
        "Demo weights": "yes (images are noise)" if metadata.get("demo_weights") else None,
        "Version": f"instantid {versions['instantid']}" if versions.get("instantid") else None,
    }
    tail = ", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items() if value is not None)
    negative = metadata.get("negative_prompt") or ""
    lines = [metadata.get("prompt") or "", *([f"Negative prompt: {negative}"] if negative else []), tail]
    return "\n".join(lines)


def _quote(value: Any) -> str:
    """A1111 quotes a value that holds its separators (',', ':' or a line break) as a JSON string."""
    text = str(value)
    return json.dumps(text) if any(c in text for c in ",:\n") else text


def shareable(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata without the local folders of the model files (names and Hub ids only): images get shared, and
    a path tells strangers about the user's disk. Photo names are file names already (``prepare_identity``)."""
    public = dict(metadata)
    if isinstance(public.get("models"), dict):
        public["models"] = {kind: public_ref(ref) for kind, ref in public["models"].items()}
    if "lora" in public:
        public["lora"] = public_ref(public["lora"])
    if isinstance(public.get("style_reference"), dict):
        public["style_reference"] = {**public["style_reference"],
                                     "adapter": public_ref(public["style_reference"].get("adapter"))}
    return public


def prepare_folder(folder: str | Path, label: str = "output folder") -> Path:
    """Create ``folder`` (and its parents) now and check it is writable: a bad output path is found before any
    slow work, as one :class:`InvalidInputError` line (``label`` names the option, e.g. ``--out``)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise InvalidInputError(f"{label} {folder}: {blocker} is a file, not a folder; give another folder") from None
    except OSError as exc:
        raise InvalidInputError(f"{label} {folder}: cannot create it ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{label} {folder}: the folder is not writable")
    return folder


def png_bytes(image: Image.Image, metadata: dict[str, Any], *, full_paths: bool = False) -> bytes:
    """The image as PNG bytes with both metadata text chunks (model folders by name unless ``full_paths``)."""
    if not full_paths:
        metadata = shareable(metadata)
    info = PngImagePlugin.PngInfo()
    info.add_itxt(METADATA_KEY, json.dumps(metadata, sort_keys=True))
    info.add_itxt(PARAMETERS_KEY, parameters_text(metadata))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``instantid`` JSON stored in a PNG written by :func:`write_image`."""
    with Image.open(path) as image:
        return json.loads(image.text[METADATA_KEY])


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Read once at import: os.umask can only be read by setting it, which is not safe while threads create files.
_FILE_MODE = 0o666 & ~_read_umask()


def _temp_copy(folder: Path, final: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; outputs get the permissions any other new file would.
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def sidecar_path(png: Path) -> Path:
    return png.with_suffix(".json")


def is_complete(png: Path) -> bool:
    """True when both halves of a pair exist; the sidecar is written last, so it marks completion."""
    return png.is_file() and sidecar_path(png).is_file()


def slug(text: str, limit: int = 40, empty: str = "no-prompt") -> str:
    """A file-name-safe, deterministic short form of ``text``: its words (letters, marks and digits of any script,
    compatibility-normalised and lower-cased) joined by '-', cut at a word boundary to at most ``limit`` characters
    (only a first word longer than that is cut inside); ``empty`` when ``text`` has no word."""
    text = unicodedata.normalize("NFKC", text).lower()
    # Everything but letters (L), combining marks (M, vowel signs of Indic scripts) and digits (N) separates words.
    spaced = "".join(ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in text)
    words = [w for w in spaced.split() if any(unicodedata.category(ch)[0] in "LN" for ch in w)]
    kept = ""
    for word in words:
        longer = f"{kept}-{word}" if kept else word
        if len(longer) > limit:
            break
        kept = longer
    return kept or (words[0][:limit] if words else empty)


def image_stem(seed: int, *, prompt: str | None = None, picture: str | None = None, kind: str = "") -> str:
    """The file name (without suffix) every surface (CLI, web UI) gives an image: ``<prompt>_s<seed>``
    (``portrait`` without a prompt), or for an edit of a picture ``<kind>_<picture name>_s<seed>``."""
    if picture is not None:
        return f"{kind}_{slug(Path(picture).stem, 30, 'picture')}_s{seed}"
    return f"{slug(prompt or 'portrait', 30)}_s{seed}"


def write_image(
    image: Image.Image, metadata: dict[str, Any], folder: str | Path, stem: str, *, overwrite: bool = False,
    full_paths: bool = False,
) -> Path:
    """Write ``<stem>.png`` + ``<stem>.json`` into ``folder`` and return the PNG's path.

    Without ``overwrite`` an existing name is never replaced: the next free ``<stem>-0001.png``... is taken,
    claimed with a hard link, which fails atomically if another writer got there first. Both files go
    through temporary files in the same folder; the sidecar lands last, so a PNG without one is known to
    be unfinished. Model folders are recorded by name only unless ``full_paths`` (see :func:`shareable`).
    """
    folder = prepare_folder(folder)
    if not full_paths:
        metadata = shareable(metadata)
    try:
        return _write_pair(image, metadata, folder, stem, overwrite)
    except OSError as exc:  # disk full, folder removed meanwhile: nothing half-written stays behind
        raise InstantIDError(f"cannot write {folder / stem}.png: {exc.strerror or exc}") from None


def _write_pair(image: Image.Image, metadata: dict[str, Any], folder: Path, stem: str, overwrite: bool) -> Path:
    png_tmp = _temp_copy(folder, folder / f"{stem}.png", png_bytes(image, metadata, full_paths=True))  # already public
    sidecar = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
    json_tmp = _temp_copy(folder, folder / f"{stem}.json", sidecar.encode())
    try:
        target = _place(png_tmp, folder, stem, overwrite)
        os.replace(json_tmp, sidecar_path(target))
        return target
    finally:
        png_tmp.unlink(missing_ok=True)
        json_tmp.unlink(missing_ok=True)


def _place(tmp: Path, folder: Path, stem: str, overwrite: bool) -> Path:
    if overwrite:
        target = folder / f"{stem}.png"
        os.replace(tmp, target)
        return target
    for n in range(MAX_NAME_TRIES):
        target = folder / (f"{stem}.png" if n == 0 else f"{stem}-{n:04d}.png")
        if sidecar_path(target).exists():
            continue
        try:
            os.link(tmp, target)
        except FileExistsError:
            continue
        return target
    raise FileExistsError(f"no free file name for {stem}.png in {folder} after {MAX_NAME_TRIES} tries")


def contact_sheet(items: Sequence[tuple[Path, str]], *, thumb: int = 256, columns: int | None = None) -> Image.Image:
    """A grid of thumbnails, each with up to three label lines (identity / prompt / seed) underneath."""
    if not items:
        raise ValueError("a contact sheet needs at least one image")
    columns = columns or min(len(items), 6)
    rows = (len(items) + columns - 1) // columns
    font = ImageFont.load_default()
    label_height = 3 * 14
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (path, label) in enumerate(items):
        x, y = (i % columns) * thumb, (i // columns) * (thumb + label_height)
        with Image.open(path) as picture:
            picture = picture.convert("RGB")
            picture.thumbnail((thumb, thumb))
        sheet.paste(picture, (x + (thumb - picture.width) // 2, y + (thumb - picture.height) // 2))
        for line_no, line in enumerate(_fit(label, max(8, thumb // 7))[:3]):
            draw.text((x + 4, y + thumb + 2 + 14 * line_no), line, fill="black", font=font)
    return sheet


def _fit(text: str, width: int) -> list[str]:
    """One label line per text line, shortened with '...' so the seed line below stays visible."""
    return [line if len(line) <= width else line[: width - 3] + "..." for line in text.splitlines()]


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` through a temporary file in the same folder: a crash never leaves half a
    file, and readers see the old or the new content, nothing between."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_copy(path.parent, path, data)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_png_atomically(image: Image.Image, path: str | Path) -> Path:
    """Replace ``path`` with a PNG through a temporary file (for derived files such as a contact sheet)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes_atomically(path, buffer.getvalue())
