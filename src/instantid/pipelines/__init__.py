"""Diffusers-style SDXL pipelines that run the core: text-to-image, image-to-image, inpainting, long prompts."""
