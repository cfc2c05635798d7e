"""The "Face swap" tab: the person from the Who panel painted into an existing picture (:mod:`instantid.apps.swap`).

The picture is analysed when it is uploaded (every face drawn with its number, so the user can pick the target)
and its faces are reused for the swap (:class:`~instantid.webui.picture_tab.PictureTab`). Controls:
:class:`~instantid.apps.swap.SwapOptions` and the generation settings; width and height are left out (the output is
the picture's size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from instantid.api.settings import UNUSED_SETTINGS
from instantid.apps.swap import SwapOptions, make_swap_options
from instantid.apps.tasks import Prepared
from instantid.errors import InvalidInputError
from instantid.faces import load_image
from instantid.webui.picture_tab import PictureTab
from instantid.webui.portrait import save_results
from instantid.webui.references import Photo

if TYPE_CHECKING:
    from instantid.api.identity import Identity
    from instantid.api.settings import GenerationSettings
    from instantid.faces import Face



class SwapTab(PictureTab):
    """Tests call :meth:`set_scene` and :meth:`swap` directly."""

    prefix = "swap-"
    options_model = SwapOptions
    unused_settings = tuple(UNUSED_SETTINGS["swap"])  # the one list every surface uses
    heading = "### 2. Into which picture"
    picture_label = "Picture to put the face into"
    picture_slot = "scene"
    button_label = "Swap"
    faces_hint = "the target face index picks one."
    no_picture = "upload the picture to put the face into"

    def run(self, identity: Identity, picture: Photo, faces: Sequence[Face], raw: dict[str, Any],
            settings: GenerationSettings, progress: Any) -> tuple[list[Any], str]:
        options = make_swap_options({c.name: raw[c.name] for c in self.options}, name=self.label)
        if options.target_index >= len(faces):
            raise InvalidInputError(f"{picture.name} has {len(faces)} face(s): choose a "
                                    f"{self.label('target_index')} from 0 to {len(faces) - 1}")
        job = Prepared("swap", identity=identity, scene=load_image(picture.read(), picture.name),
                       scene_name=picture.name, target=faces[options.target_index], swap=options)
        return save_results(self.ctx, self.ctx.submit(job, settings, progress), picture=picture.name, kind="swap")

    set_scene = PictureTab.set_picture
    swap = PictureTab.make
