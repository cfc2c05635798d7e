"""ComfyUI custom-node entry: copy or link this folder into ``ComfyUI/custom_nodes/`` after installing the
``instantid`` package into ComfyUI's Python (``pip install -e <repo>[comfyui]``). A checkout used in place is
found through its ``src`` folder."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("instantid") is None:
    _src = Path(__file__).resolve().parent.parent / "src"
    if (_src / "instantid").is_dir():
        sys.path.insert(0, str(_src))

from instantid.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
