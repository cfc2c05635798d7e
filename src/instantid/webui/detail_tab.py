"""The "Face detail" tab: the faces of an existing picture redrawn as the person from the Who panel (the pass of
``instantid detail``, :mod:`instantid.apps.detail`), for a picture made earlier, elsewhere, or without the
face-detail knob.

The picture is analysed when it is uploaded (its faces drawn and numbered largest first; the pass redraws up to
``max_faces`` of them, the faces found then: :class:`~instantid.webui.picture_tab.PictureTab`). Controls:
:class:`~instantid.api.face_detail.FaceDetailOptions` and the generation settings the pass uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from instantid.api.settings import UNUSED_SETTINGS
from instantid.apps.detail import DetailOptions, make_detail_options
from instantid.apps.tasks import Prepared
from instantid.faces import load_image
from instantid.webui.picture_tab import PictureTab
from instantid.webui.portrait import save_results
from instantid.webui.references import Photo

if TYPE_CHECKING:
    from instantid.api.identity import Identity
    from instantid.api.settings import GenerationSettings
    from instantid.faces import Face


class DetailTab(PictureTab):
    """Tests call :meth:`set_picture` and :meth:`detail` directly."""

    prefix = "detail-"
    options_model = DetailOptions
    # The settings the pass cannot honour are the ones /v1/detail refuses: one list for both surfaces.
    unused_settings = tuple(UNUSED_SETTINGS["detail"])
    heading = "### 2. Which picture"
    picture_label = "Picture whose faces are redrawn"
    picture_slot = "picture"
    button_label = "Redraw the faces"
    no_picture = "upload the picture whose faces are redrawn"

    @property
    def faces_hint(self) -> str:
        return f"the largest ones are redrawn, up to '{self.label('max_faces')}'."

    def run(self, identity: Identity, picture: Photo, faces: Sequence[Face], raw: dict[str, Any],
            settings: GenerationSettings, progress: Any) -> tuple[list[Any], str]:
        options = make_detail_options({c.name: raw[c.name] for c in self.options}, name=self.label)
        job = Prepared("detail", identity=identity, scene=load_image(picture.read(), picture.name),
                       scene_name=picture.name, detail=options, picture_faces=tuple(faces))
        return save_results(self.ctx, self.ctx.submit(job, settings, progress), picture=picture.name, kind="detail")

    detail = PictureTab.make
