"""The "Several people" tab: 2 to 4 people in one picture (:meth:`InstantID.generate_group`; the limits are
:data:`~instantid.api.settings.MIN_PEOPLE` / :data:`~instantid.api.settings.MAX_PEOPLE`, as on every surface).

People are numbered from 0 as in the HTTP API (``person0``, ``person1``...) and faces from 0 as everywhere: person
``i`` takes face ``i``. Each person has a slot of their own photos, analysed once on upload through the shared
:class:`~instantid.webui.references.IdentityCache` and previewed like the Who panel (face box and keypoints). An
optional group photo places them: its faces are shown numbered left to right, and person ``i`` takes face ``i``
(of the largest ones, as :func:`~instantid.api.face_side.group_poses` picks them, from the faces found at upload);
without one the people stand side by side. The picture goes to the UI's ``submit`` hook like every tab's job
(under ``instantid serve``: the server's job queue).
Generation settings are the schema-derived controls (:mod:`instantid.webui.controls`) minus what a group picture
cannot honour; results go to the announced outputs folder like the Portrait tab's.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import gradio as gr

from instantid.api.settings import MAX_PEOPLE, MIN_PEOPLE, UNUSED_SETTINGS, check_people, make_settings
from instantid.apps.tasks import Placement, Prepared
from instantid.errors import InstantIDError, InvalidInputError
from instantid.webui.controls import controls, labels
from instantid.webui.layout import build_controls, result_column, style_image_box, style_of
from instantid.webui.picture_tab import PICTURES_KEPT
from instantid.webui.portrait import save_results
from instantid.webui.references import (
    Photo,
    PictureFaces,
    photos_from_uploads,
    preview,
    summary,
    warnings_text,
)
from instantid.webui.who import ANALYSIS_CONCURRENCY, IDENTITY_FIELDS, clear_error_mark

if TYPE_CHECKING:
    from instantid.api.identity import Identity
    from instantid.webui.context import UIContext

# The face choice and fusion belong to the one-person Who panel: each slot here uses the largest face of each
# photo, fused by "auto"; the settings a group picture cannot honour are the ones every surface leaves out.
NOT_FOR_GROUP = (*IDENTITY_FIELDS, *UNUSED_SETTINGS["group"])
PREFIX = "group-"
NO_GROUP_PHOTO = "No group photo: the people stand side by side. With one, person i takes face i, left to right."


def no_person_yet(number: int) -> str:
    return f"Person {number}: no photo yet." + (" (optional)" if number >= MIN_PEOPLE else "")


class GroupTab:
    """Handlers (state travels in gr.State, so tests call them directly) plus layout."""

    def __init__(self, ctx: UIContext) -> None:  # no Who panel: each person has their own slot
        self.ctx = ctx
        self.controls = [c for c in controls() if c.name not in NOT_FOR_GROUP]
        self.by_name = {c.name: c for c in self.controls}
        names = labels(self.controls)
        self.label = lambda field: names.get(field, field)
        self.faces = PictureFaces(lambda data, name: ctx.get_model().analyze(data, name), PICTURES_KEPT,
                                  left_to_right=True)

    # ---- handlers -------------------------------------------------------------------------------
    def person(self, photos: Sequence[Photo], number: int) -> Identity:
        """Person ``number``'s cached Identity (analysed on a miss); errors say which person."""
        try:
            return self.ctx.identities.get(photos)
        except InstantIDError as exc:
            raise InvalidInputError(f"person {number}: {exc}") from None

    def set_person(self, files: Any, number: int) -> tuple[tuple[Photo, ...], Any, str]:
        """A slot's photos (what its box shows) analysed now: the slot's state, preview items and count line."""
        photos = photos_from_uploads(files)
        if not photos:
            return (), [], no_person_yet(number)
        identity = self.person(photos, number)
        text = f"Person {number}: " + summary(identity)
        warnings = warnings_text(identity)
        return photos, preview(identity, photos, None), text + ("\n\n" + warnings if warnings else "")

    def set_group(self, file: str | None) -> tuple[Photo | None, Any, str]:
        """The group photo's state, its faces drawn with their numbers, and which person takes which face."""
        if not file:
            return None, None, ""
        picture = Photo.from_upload(file)
        found, drawn = self.faces.drawn(picture)
        places = ", ".join(f"face {i} → person {i}" for i in range(min(len(found), MAX_PEOPLE)))
        text = (f"**{len(found)} face{'s' if len(found) != 1 else ''}** in {picture.name}, numbered left to right: "
                f"{places}. With more faces than people, the largest ones are used.")
        return picture, drawn, text

    def generate(self, people: Sequence[Sequence[Photo]], group: Photo | None, values: dict[str, Any],
                 progress: Any = None, style_image: str | None = None) -> tuple[list[Any], str]:
        """One picture of everyone into the outputs folder. ``people``: each slot's photos in slot order (empty
        slots are skipped); ``values``: raw control values. Returns gallery items and the info text."""
        filled = [(number, photos) for number, photos in enumerate(people) if photos]
        gap = next((n for n, photos in enumerate(people) if not photos and any(people[n + 1:])), None)
        if gap is not None:  # person i takes face i: a hole in the numbering would shift everyone after it
            raise InvalidInputError(f"person {gap} has no photo: fill the person slots in order")
        check_people(len(filled), "one slot per person")
        settings = make_settings({name: control.value(values.get(name)) for name, control in self.by_name.items()},
                                 name=self.label)
        identities = [self.person(photos, number) for number, photos in filled]
        placement = self.placement(group, len(identities)) if group is not None else None
        job = Prepared("group", people=tuple(identities), pose=(group.name, group.read()) if group else None,
                       placement=placement, style=style_of(style_image))
        return save_results(self.ctx, self.ctx.submit(job, settings, progress))

    def placement(self, group: Photo, count: int) -> Placement:
        """Where ``count`` people stand in the group photo, chosen by :func:`group_poses` among the faces found
        at upload (so the photo is not analysed again)."""
        from instantid.api.face_side import group_poses

        found = self.faces.largest_first(group)
        if len(found) < count:
            raise InvalidInputError(f"{group.name} shows {len(found)} face(s) but {count} people were given: use a "
                                    "group photo with a face per person, or none")
        return group_poses(SimpleNamespace(analyze=lambda picture, name: found), group.read(), count, group.name)

    # ---- layout ----------------------------------------------------------------------------------
    def build(self) -> None:
        self.slots: list[tuple[Any, Any, Any, Any]] = []  # (column, upload box, preview gallery, count line)
        self.states = [gr.State(()) for _ in range(MAX_PEOPLE)]
        self.group_state = gr.State(None)
        self.shown_count = gr.State(MIN_PEOPLE)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                gr.Markdown(f"### 2. Who is in the picture ({MIN_PEOPLE} to {MAX_PEOPLE} people, one slot each)")
                for number in range(MAX_PEOPLE):
                    self._slot(number)
                self.add_button = gr.Button("+ Add a person", size="sm", elem_id=f"{PREFIX}add-person")
                # A short label (a long one ran under the picture's buttons on a phone); the line below the faces
                # says how the group photo places the people.
                self.group = gr.Image(label="Group photo (optional)", type="filepath", sources=["upload"], height=200,
                                      elem_id=f"{PREFIX}pose")
                self.group_faces = gr.Image(label="Faces found (numbered left to right)", interactive=False,
                                            height=200, elem_id=f"{PREFIX}faces")
                self.group_text = gr.Markdown(NO_GROUP_PHOTO, elem_id=f"{PREFIX}count")
                self.style_image = style_image_box(f"{PREFIX}style-image")
                self.widgets = build_controls(self.controls, PREFIX)
                self.button = gr.Button("Generate", variant="primary", elem_id=f"{PREFIX}run")
            self.gallery, self.info = result_column(PREFIX)
        self._wire()

    def _slot(self, number: int) -> None:
        with gr.Column(visible=number < MIN_PEOPLE, elem_id=f"{PREFIX}slot-{number}") as column:
            box = gr.File(label=f"Person {number}: face photo(s)", file_count="multiple", file_types=["image"],
                          type="filepath", height=150, elem_id=f"{PREFIX}person-{number}")
            shown = gr.Gallery(label=f"Person {number}: the face used", columns=4, height=140,
                               object_fit="contain", interactive=False, elem_id=f"{PREFIX}preview-{number}")
            count = gr.Markdown(no_person_yet(number), elem_id=f"{PREFIX}person-count-{number}")
        self.slots.append((column, box, shown, count))

    def _wire(self) -> None:
        guard = self.ctx.guard
        events = {"concurrency_limit": ANALYSIS_CONCURRENCY, "concurrency_id": "analysis"}
        for (_, box, shown, count), state, number in zip(self.slots, self.states, range(MAX_PEOPLE), strict=True):
            def analyse(files: Any, number: int = number) -> tuple[tuple[Photo, ...], Any, str]:
                return self.set_person(files, number)

            # The box shows the person's whole set (gradio's File keeps what was there and adds the new files);
            # a refused photo puts the box back to the set that stands.
            uploaded = box.upload(guard(analyse), box, [state, shown, count], show_progress_on=count, **events)
            uploaded.failure(lambda photos: [p.path for p in photos] or None, state, box, queue=False)
            clear_error_mark(uploaded, count)
            box.clear(lambda number=number: ((), [], no_person_yet(number)), None, [state, shown, count],
                      queue=False)
        columns = [column for column, *_ in self.slots]

        def add_person(shown: int) -> list[Any]:
            shown = min(shown + 1, MAX_PEOPLE)
            return [shown, *(gr.update(visible=i < shown) for i in range(MAX_PEOPLE)),
                    gr.update(visible=shown < MAX_PEOPLE)]

        self.add_button.click(add_person, self.shown_count, [self.shown_count, *columns, self.add_button],
                              queue=False)
        group_out = [self.group_state, self.group_faces, self.group_text]
        uploaded = self.group.upload(guard(self.set_group), self.group, group_out, **events)
        uploaded.failure(lambda: None, None, self.group, queue=False)
        clear_error_mark(uploaded, self.group_faces, self.group_text)
        self.group.clear(lambda: (None, None, NO_GROUP_PHOTO), None, group_out, queue=False)

        def run(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[list[Any], str]:
            values = {name: data[widget] for name, widget in self.widgets.items()}
            return self.generate([data[state] for state in self.states], data[self.group_state], values,
                                 lambda step, total: progress((step, total), desc="denoising"), data[self.style_image])

        clear_error_mark(self.button.click(guard(run, job=True), {*self.states, self.group_state, self.style_image,
                                                                  *self.widgets.values()},
                                           [self.gallery, self.info], concurrency_limit=self.ctx.generation_concurrency,
                                           concurrency_id="generation"), self.gallery, self.info)
