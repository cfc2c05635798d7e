"""InstantID as ComfyUI nodes, native to ComfyUI's MODEL, CONDITIONING and ControlNets.

Imported by ComfyUI (through the ``comfyui_instantid`` custom-node folder at the repository root), where its
``comfy`` and ``folder_paths`` modules exist; importing it elsewhere fails on those imports. Modules:
``adapter`` (the face adapter, sizes from its tensors), ``patch`` (the face branch as attn2 patches),
``identitynet`` (IdentityNet as a ControlNet fed face tokens), ``faces`` and ``paths`` (face analysis and model
folders), ``nodes`` (the node classes).
"""

from instantid.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
