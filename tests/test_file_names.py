"""File names: slugs keep the letters of every script and are cut between words; the CLI and the web UI name an
image with one function (``instantid.io.outputs.image_stem``)."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import pytest
from _demo import FACE
from hypothesis import given, settings
from hypothesis import strategies as st

from instantid.cli import main
from instantid.io.outputs import image_stem, slug


@pytest.mark.parametrize(("text", "expected"), [
    ("café au lait", "café-au-lait"),
    ("富士山の前の肖像、油絵", "富士山の前の肖像-油絵"),
    ("Портрет в снегу", "портрет-в-снегу"),
    ("नमस्ते दुनिया", "नमस्ते-दुनिया"),  # vowel signs and viramas are marks: the words stay whole
    ("a portrait of a woman with red hair", "a-portrait-of-a-woman-with-red-hair"),
    ("ＦＵＬＬ width", "full-width"),
    ("!!! ???", "no-prompt"),
])
def test_slug_keeps_every_script(text: str, expected: str) -> None:
    assert slug(text) == expected


def test_slug_cuts_between_words() -> None:
    assert slug("an astronaut on a ship's bridge", 20) == "an-astronaut-on-a"
    assert slug("Supercalifragilisticexpialidocious", 10) == "supercalif", "one long word: cut inside it"


_UNSAFE = set('/\\:*?"<>|.\0 \t\n')


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80), limit=st.integers(1, 40))
def test_slug_is_a_safe_prefix_of_whole_words(text: str, limit: int) -> None:
    made = slug(text, limit)
    assert made and not (_UNSAFE & set(made)) and made == made.strip("-") and "--" not in made
    lowered = unicodedata.normalize("NFKC", text).lower()
    spaced = "".join(c if unicodedata.category(c)[0] in "LMN" else " " for c in lowered)
    words = [w for w in spaced.split() if any(unicodedata.category(c)[0] in "LN" for c in w)]
    if not words:
        assert made == "no-prompt"
    elif len(words[0]) > limit:
        assert made == words[0][:limit], "only a first word too long for the limit is cut inside"
    else:  # as many whole words as fit, in order
        kept = made.split("-")
        assert len(made) <= limit and kept == words[:len(kept)]
        assert len(kept) == len(words) or len(made) + 1 + len(words[len(kept)]) > limit


def test_image_stem_names_prompts_and_pictures() -> None:
    assert image_stem(3, prompt="café au lait") == "café-au-lait_s3"
    assert image_stem(4) == "portrait_s4"
    assert image_stem(5, picture="Party Photo.JPG", kind="swap") == "swap_party-photo_s5"


def test_the_ui_names_a_portrait_as_the_cli_does(demo_loads: Any, tmp_path: Path) -> None:
    from instantid.webui import UIContext
    from instantid.webui.portrait import PortraitTab
    from instantid.webui.references import Photo
    from instantid.webui.who import WhoPanel

    prompt = "富士山の前の肖像、油絵 in the snow at dawn"
    assert main(["generate", str(FACE), "-p", prompt, "--steps", "1", "--seed", "7", "-o", str(tmp_path / "cli")]) == 0
    ctx = UIContext(get_model=lambda: demo_loads, out_dir=tmp_path / "ui")
    tab = PortraitTab(ctx, WhoPanel(ctx))
    tab.generate([Photo.from_upload(FACE)], None, {"prompt": prompt, "steps": 1, "seed": 7})
    names = [sorted(p.name for p in (tmp_path / side).glob("*.png")) for side in ("cli", "ui")]
    assert names == [["富士山の前の肖像-油絵-in-the-snow-at_s7.png"]] * 2, "cut before the word that passes 30"
