"""Old module paths keep working: ``instantid.swap`` is ``instantid.apps.swap`` and so on.

The package was flat until its modules were grouped by role (core, pipelines, api, apps, speed, io). Code and
pickled references written against the flat names (``from instantid.swap import swap_face`` in the README of
earlier releases, ``mock.patch("instantid.generator....")``) import the same module object under its old name,
so patches and ``isinstance`` checks see one module, not a copy.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

MOVED = {
    "instantid.adapter": "instantid.core.adapter",
    "instantid.attention": "instantid.core.attention",
    "instantid.denoise": "instantid.core.denoise",
    "instantid.keypoints": "instantid.core.keypoints",
    "instantid.pipeline": "instantid.pipelines.sdxl",
    "instantid.inpaint": "instantid.pipelines.inpaint",
    "instantid.prompts": "instantid.pipelines.prompts",
    "instantid.generator": "instantid.api.generator",
    "instantid.identity": "instantid.api.identity",
    "instantid.settings": "instantid.api.settings",
    "instantid.model_settings": "instantid.api.model_settings",
    "instantid.styles": "instantid.api.styles",
    "instantid.swap": "instantid.apps.swap",
    "instantid.face_detail": "instantid.api.face_detail",
    "instantid.layouts": "instantid.apps.layouts",
    "instantid.batch": "instantid.apps.batch",
    "instantid.fast": "instantid.speed.fast",
    "instantid.quantize": "instantid.speed.quantize",
    "instantid.presets": "instantid.speed.presets",
    "instantid.loading": "instantid.io.loading",
    "instantid.models": "instantid.io.models",
    "instantid.outputs": "instantid.io.outputs",
    "instantid.tiny": "instantid.io.tiny",
    "instantid.server": "instantid.service.server",
    "instantid.service.tasks": "instantid.apps.tasks",
    "instantid.service.detail": "instantid.apps.detail",
}


class _OldPath(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and hands out the module that now lives under the new one."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        # The real module keeps its own __name__ and __spec__: importlib only fills attributes that are missing.
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was executed when it was imported under its new name."""


def install() -> None:
    if not any(isinstance(finder, _OldPath) for finder in sys.meta_path):
        sys.meta_path.append(_OldPath())
