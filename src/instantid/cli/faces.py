"""``instantid faces`` (detect, describe, draw) and ``instantid compare`` (same person or not)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import typer
from PIL import Image

from instantid.cli import app
from instantid.cli.options import model_option
from instantid.errors import InstantIDError, InvalidInputError, NoFaceError
from instantid.faces import Face, FaceAnalyzer, create_face_analyzer, load_image
from instantid.faces.drawing import draw_faces
from instantid.io.outputs import prepare_folder, write_bytes_atomically

# One declaration (ModelSettings) gives every command the same --face-backend and --antelopev2-root options;
# --backend is the spelling faces/compare/prepare used before, kept working but hidden.
FACE_BACKEND_OPTION = model_option("face_backend")
BACKEND_ALIAS_OPTION = typer.Option(None, "--backend", hidden=True, help="Old spelling of --face-backend.")
ANTELOPEV2_ROOT_OPTION = model_option("antelopev2_root")


def face_analyzer(face_backend: str, backend_alias: str | None, root: Path | None) -> FaceAnalyzer:
    """The analyzer the user asked for (the hidden ``--backend`` spelling wins when given)."""
    return create_face_analyzer(backend_alias if backend_alias is not None else face_backend, root=root)


def save_atomically(image: Image.Image, out: Path) -> None:
    """Write through a temporary file in the same folder so a crash never leaves half a file."""
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"cannot tell the image format of {out}: use a .png or .jpg name")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    write_bytes_atomically(out, buffer.getvalue())


def _draw_targets(images: list[Path], draw: Path) -> list[Path]:
    """Where each drawing goes, checked (and folders created) before any analysis runs.

    A name with an image suffix is a file (one image only); anything else is a folder, created if missing.
    """
    if draw.suffix and not draw.is_dir():
        if len(images) > 1:
            raise InvalidInputError(f"--draw {draw} must be a folder when several images are given")
        if Image.registered_extensions().get(draw.suffix.lower()) is None:
            raise InvalidInputError(f"--draw {draw}: cannot tell the image format from {draw.suffix!r}; "
                                    "use a .png or .jpg name, or a folder")
        prepare_folder(draw.parent, "--draw")
        return [draw]
    folder = prepare_folder(draw, "--draw")
    return [folder / f"{path.stem}_faces.png" for path in images]


def _table(path: Path, faces: list[Face]) -> str:
    if not faces:
        return f"{path}: no face"
    lines = [f"{path}: {len(faces)} face(s), {faces[0].space}",
             "  #  box x1,y1,x2,y2       score   keypoints (eye, eye, nose, mouth, mouth)"]
    for index, face in enumerate(faces):
        box = ",".join(f"{v:.0f}" for v in face.bbox)
        points = " ".join(f"({x:.0f},{y:.0f})" for x, y in face.kps)
        lines.append(f"  {index:<2} {box:<21} {face.score:6.2f}  {points}")
    return "\n".join(lines)


@app.command("faces")
def faces_command(
    images: list[Path] = typer.Argument(..., help="Photos to analyse.", dir_okay=False),
    face_backend: str = FACE_BACKEND_OPTION,
    backend: str | None = BACKEND_ALIAS_OPTION,
    antelopev2_root: Path | None = ANTELOPEV2_ROOT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per image."),
    draw: Path | None = typer.Option(
        None, "--draw", help="Save the photo with boxes and numbered keypoints: a .png/.jpg file (one image), "
        "or a folder (created if missing) for <stem>_faces.png files."
    ),
) -> None:
    """Find faces: box, score, five keypoints and identity embedding, largest face first.

    Exit code 2 when an image is unreadable or shows no face (each named on stderr); the rest are reported.
    """
    targets = _draw_targets(images, draw) if draw is not None else None  # a bad path fails before the models load
    analyzer = face_analyzer(face_backend, backend, antelopev2_root)
    errors: list[InstantIDError] = []
    records = []
    for i, path in enumerate(images):
        try:
            photo = load_image(path)
            faces = analyzer.analyze(photo, name=str(path))
        except InstantIDError as exc:  # unreadable, or too small to hold a face: report it, go on
            errors.append(exc)
            records.append({"image": str(path), "faces": [], "error": str(exc)})
            continue
        if not faces:
            errors.append(NoFaceError(str(path)))
        records.append({"image": str(path), "faces": [face.to_dict() for face in faces]})
        if not as_json:
            typer.echo(_table(path, faces))
        if targets is not None:
            save_atomically(draw_faces(photo, faces), targets[i])
    if as_json:
        typer.echo(json.dumps(records))
    for exc in errors[:-1]:
        typer.echo(f"error: {exc}", err=True)
    if errors:
        raise errors[-1]


@app.command("compare")
def compare_command(
    image_a: Path = typer.Argument(..., help="First photo.", dir_okay=False),
    image_b: Path = typer.Argument(..., help="Second photo.", dir_okay=False),
    face_backend: str = FACE_BACKEND_OPTION,
    backend: str | None = BACKEND_ALIAS_OPTION,
    antelopev2_root: Path | None = ANTELOPEV2_ROOT_OPTION,
) -> None:
    """Identity distance between the faces of two photos, and the same/different verdict.

    One face each: one line. A photo with several faces (a group photo): every face of one photo against every
    face of the other, one line each, faces numbered from 0, largest first (as `instantid faces` lists them).
    """
    analyzer = face_analyzer(face_backend, backend, antelopev2_root)
    found = []
    for path in (image_a, image_b):
        faces = analyzer.analyze(path, name=str(path))
        if not faces:
            raise NoFaceError(str(path))
        found.append(faces)
    threshold = analyzer.same_person_threshold
    scale = f"({analyzer.space}, same person at <= {threshold:.2f})"
    if len(found[0]) == len(found[1]) == 1:
        distance = analyzer.distance(found[0][0].embedding, found[1][0].embedding)
        typer.echo(f"distance {distance:.4f} {scale}: {'same' if distance <= threshold else 'different'}")
        return
    typer.echo(f"{image_a.name}: {len(found[0])} face(s), {image_b.name}: {len(found[1])} face(s); every pair "
               f"{scale}:")
    for i, a in enumerate(found[0]):
        for j, b in enumerate(found[1]):
            distance = analyzer.distance(a.embedding, b.embedding)
            typer.echo(f"  {image_a.name} face {i} / {image_b.name} face {j}: distance {distance:.4f}: "
                       f"{'same' if distance <= threshold else 'different'}")
