"""Style presets: the nine styles of the published demo, by name, with our own prompt templates.

A template wraps the user's prompt (``{prompt}``) and adds a negative prompt; the user's own negative
prompt is appended to the style's.
"""

from __future__ import annotations

from dataclasses import dataclass

from instantid.errors import InvalidInputError

_COMMON_NEGATIVE = "lowres, low quality, worst quality, text, watermark, deformed, blurry"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str  # contains "{prompt}"
    negative_prompt: str

    def apply(self, prompt: str | None, negative_prompt: str | None = "") -> tuple[str, str]:
        """The styled prompt and negative prompt for a user's prompt."""
        prompt = (prompt or "").strip()
        if not prompt and self.prompt == "{prompt}":
            return "", (negative_prompt or "").strip()  # image-only generation: an empty prompt stays empty
        # A style template needs a subject; with an empty prompt it describes the person in the photo.
        styled = self.prompt.replace("{prompt}", prompt or "a person").strip(" ,.")
        negative = ", ".join(p for p in (self.negative_prompt, (negative_prompt or "").strip()) if p)
        return styled, negative


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style("(No style)", "{prompt}", ""),
        Style(
            "Watercolor",
            "watercolor painting of {prompt}, soft washes of colour, visible paper texture, loose brushwork",
            f"{_COMMON_NEGATIVE}, photograph, 3d render, harsh lines",
        ),
        Style(
            "Film Noir",
            "film noir still of {prompt}, black and white, hard light, deep shadows, 1940s, cinematic grain",
            f"{_COMMON_NEGATIVE}, colour, bright, cheerful, cartoon",
        ),
        Style(
            "Neon",
            "{prompt}, lit by neon signs at night, magenta and cyan glow, reflections on wet streets, vivid",
            f"{_COMMON_NEGATIVE}, daylight, dull colours, monochrome",
        ),
        Style(
            "Jungle",
            "{prompt} in a dense jungle, waist-up, lush leaves, humid haze, warm muted palette, movie still",
            f"{_COMMON_NEGATIVE}, city, snow, desert",
        ),
        Style(
            "Mars",
            "{prompt} on a Mars colony, red dust, rovers and domes, bright low sun, detailed, cinematic lighting",
            f"{_COMMON_NEGATIVE}, green grass, ocean, forest",
        ),
        Style(
            "Vibrant Color",
            "{prompt}, vibrant saturated colours, bold flat shapes, dusk sky, crisp and highly detailed",
            f"{_COMMON_NEGATIVE}, muted colours, grey, monochrome",
        ),
        Style(
            "Snow",
            "{prompt} in a frozen landscape, falling snow, ice crystals, cold blue light, dramatic, 3d render",
            f"{_COMMON_NEGATIVE}, summer, beach, warm colours",
        ),
        Style(
            "Line art",
            "clean line art drawing of {prompt}, minimalist vector lines, white background, graphic",
            f"{_COMMON_NEGATIVE}, photograph, shading, colour fill, 3d render",
        ),
    )
}
DEFAULT_STYLE = "(No style)"


def get_style(name: str | None) -> Style:
    """Look a style up by name, case-insensitively ("watercolor", "Film Noir", "none"...)."""
    if name is None or name.strip().lower() in ("", "none", "no style", "(no style)"):
        return STYLES[DEFAULT_STYLE]
    wanted = name.strip().lower()
    for style in STYLES.values():
        if style.name.lower() == wanted:
            return style
    raise InvalidInputError(f"unknown style {name!r}; choose one of: {', '.join(STYLES)}")
