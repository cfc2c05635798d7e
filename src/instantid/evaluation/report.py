"""Writing an :class:`Evaluation`: JSON, a self-contained HTML report and a PNG grid.

Every file is written through a temporary file and renamed, so an interrupted run never leaves half a
report. The HTML inlines its thumbnails as base64 so it can be mailed or attached to an issue as is.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from instantid.evaluation.metrics import Evaluation, ImageScore
from instantid.faces import load_image
from instantid.io.outputs import save_png_atomically, write_bytes_atomically

THUMB = 160  # grid cell side and HTML thumbnail side, in pixels
LABEL_HEIGHT = 30


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _thumbnail(path: str | Path) -> Image.Image:
    image = load_image(path).copy()
    image.thumbnail((THUMB, THUMB))
    return image


def _data_uri(path: str | Path) -> str:
    buffer = io.BytesIO()
    _thumbnail(path).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def score_label(score: ImageScore) -> str:
    """The short text drawn under a generation in the grid."""
    if not score.face_detected:
        text = "no face"
    else:
        text = f"id {score.identity_similarity:.2f}"
    if score.clip_score is not None:
        text += f"  clip {score.clip_score:.1f}"
    return text


def write_json(evaluation: Evaluation, path: Path) -> None:
    data = json.dumps(evaluation.to_dict(), indent=2).encode("utf-8")
    write_bytes_atomically(path, data)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_SUMMARY_KEYS = ("images", "face_detection_rate", "identity_similarity", "face_prompt_identity_similarity",
                 "same_person_rate", "clip_score", "identity_diversity", "pixel_diversity")
_CSS = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:middle}"
        "th{background:#f3f3f3}img{display:block}")


def render_html(evaluation: Evaluation, title: str) -> str:
    """The whole report as one HTML string (images inlined)."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>", "<h2>Settings</h2>",
             _table(["setting", "value"], [[esc(k), esc(_fmt(v))] for k, v in evaluation.settings.items()]),
             "<h2>Summary</h2>",
             _table(["metric", "value"], [[esc(k), esc(_fmt(evaluation.summary.get(k)))] for k in _SUMMARY_KEYS])]
    if evaluation.summary.get("per_category"):
        cats = evaluation.summary["per_category"]
        parts += ["<h2>Per category</h2>", _table(
            ["category", "images", "face detection rate", "identity similarity", "clip score"],
            [[esc(c), *(esc(_fmt(v.get(k))) for k in ("images", "face_detection_rate", "identity_similarity",
                                                        "clip_score"))] for c, v in cats.items()],
        )]
    for name, stats in evaluation.identities.items():
        refs = "".join(f"<img src='{_data_uri(p)}' alt='reference'>" for p in evaluation.references.get(name, []))
        parts += [f"<h2>Identity: {esc(name)}</h2>", f"<div>{refs}</div>",
                  _table(["metric", "value"], [[esc(k), esc(_fmt(stats.get(k)))] for k in _SUMMARY_KEYS])]
        rows = [
            [f"<img src='{_data_uri(s.image)}' alt='generation'>", esc(Path(s.image).name), esc(_fmt(s.prompt_id)),
             esc(_fmt(s.prompt)), esc(_fmt(s.seed)), esc(_fmt(s.face_detected)), esc(_fmt(s.identity_similarity)),
             esc(_fmt(s.same_person)), esc(_fmt(s.clip_score, 2))]
            for s in evaluation.images if s.identity == name
        ]
        parts.append(_table(["image", "file", "prompt id", "prompt", "seed", "face", "identity similarity",
                             "same person", "clip score"], rows))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(evaluation: Evaluation, path: Path, title: str = "InstantID evaluation") -> None:
    data = render_html(evaluation, title).encode("utf-8")
    write_bytes_atomically(path, data)


def render_grid(evaluation: Evaluation, columns: int = 8) -> Image.Image:
    """Per identity, rows of: reference photo | generations, each with its scores drawn underneath."""
    font = ImageFont.load_default(size=14)
    cell_h = THUMB + LABEL_HEIGHT
    rows: list[list[tuple[Image.Image | None, str]]] = []
    for name in evaluation.identities:
        refs = evaluation.references.get(name, [])
        first: tuple[Image.Image | None, str] = (_thumbnail(refs[0]) if refs else None, f"ref: {name}")
        cells = [(_thumbnail(s.image), score_label(s)) for s in evaluation.images if s.identity == name]
        for start in range(0, max(len(cells), 1), columns):
            rows.append([first if start == 0 else (None, ""), *cells[start:start + columns]])
    width = max((len(row) for row in rows), default=1) * THUMB
    grid = Image.new("RGB", (width, max(1, len(rows)) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        for c, (thumb, label) in enumerate(row):
            x, y = c * THUMB, r * cell_h
            if thumb is not None:
                grid.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
            draw.text((x + 4, y + THUMB + 6), label, fill="black", font=font)
        draw.line([(THUMB - 1, r * cell_h), (THUMB - 1, (r + 1) * cell_h)], fill="grey", width=2)
    return grid


def write_grid(evaluation: Evaluation, path: Path, columns: int = 8) -> None:
    grid = render_grid(evaluation, columns)
    save_png_atomically(grid, path)


def write_report(evaluation: Evaluation, out_dir: Path, title: str = "InstantID evaluation") -> dict[str, Path]:
    """``evaluation.json``, ``report.html`` and ``grid.png`` in ``out_dir``; returns their paths."""
    paths = {"json": out_dir / "evaluation.json", "html": out_dir / "report.html", "grid": out_dir / "grid.png"}
    write_json(evaluation, paths["json"])
    write_html(evaluation, paths["html"], title)
    write_grid(evaluation, paths["grid"])
    return paths
