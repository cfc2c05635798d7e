"""ComfyUI entry when this repository itself is cloned into ``ComfyUI/custom_nodes/`` (how the ComfyUI registry
and ComfyUI-Manager install a node pack): the nodes are the ones of ``comfyui_instantid/``. Outside ComfyUI (a
test runner walking the checkout) there is nothing to register."""

import importlib.util

if importlib.util.find_spec("folder_paths") is not None:  # ComfyUI's own module: we run inside ComfyUI
    from .comfyui_instantid import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
