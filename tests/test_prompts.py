"""Long and weighted prompts: parser, parity with diffusers on plain prompts, weights, chunking."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
import torch

from instantid.errors import InvalidInputError
from instantid.pipelines.prompts import (
    PromptFragment,
    apply_token_weights,
    encode_prompt_weighted,
    parse_prompt_weights,
)

PLAIN = "a portrait photo of a woman, soft light"
# The fixture tokenizers are byte-level (about one token per character), so this is well over 77 tokens.
LONG_HEAD = "a watercolor painting of a person, soft washes of colour, visible paper texture, loose brushwork,"


@pytest.fixture(scope="module")
def sdxl(tiny_fixture_dir):
    """diffusers' own SDXL pipeline on the fixture's base: the same tokenizers and text encoders as ours."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_fixture_dir / "base")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def weights(prompt: str) -> list[tuple[str, float]]:
    return [(f.text, round(f.weight, 6)) for f in parse_prompt_weights(prompt)]


# (d) the parser -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("a [small] cat", [("a ", 1.0), ("small", round(1 / 1.1, 6)), (" cat", 1.0)]),
        ("a (cat:1.5) here", [("a ", 1.0), ("cat", 1.5), (" here", 1.0)]),
        ("((deep))", [("deep", 1.21)]),
        ("((cat:1.5) tail)", [("cat", 1.65), (" tail", 1.1)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (r"\(literal\) \[x\] a\\b", [("(literal) [x] a\\b", 1.0)]),
        (r"(a \) b)", [("a ) b", 1.1)]),
        ("(unbalanced", [("(unbalanced", 1.0)]),
        ("a ((cat) mat", [("a (", 1.0), ("cat", 1.1), (" mat", 1.0)]),
        ("x) y] :1.2)", [("x) y] :1.2)", 1.0)]),
        ("(cat:abc)", [("cat:abc", 1.1)]),
        ("(a:1.2.3)", [("a:1.2.3", 1.1)]),
        ("time: 10:30", [("time: 10:30", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_parser_reads_a1111_syntax_and_keeps_unbalanced_brackets_literal(prompt, expected):
    assert weights(prompt) == expected


def test_parser_break_and_never_crashes_on_bracket_soup():
    assert parse_prompt_weights("cat BREAK dog")[1] == PromptFragment("", 1.0, is_break=True)
    assert weights("aBREAKb") == [("aBREAKb", 1.0)]
    for soup in ["(((", ")))", "[(])", "(:)", "(:1.2", "\\", "([a:2)]", "((a:2)b:3)", ")(", "[[[x]]"]:
        fragments = parse_prompt_weights(soup)
        assert all(isinstance(f.weight, float) for f in fragments)
        # No character is lost: every bracket is either consumed as a matched pair or kept as text.
        kept = "".join(f.text for f in fragments)
        assert set(kept) <= set(soup)


# (a) parity ------------------------------------------------------------------------------------------------


def test_plain_prompt_equals_diffusers_encode_prompt(fixture_pipe):
    """On our InstantID pipeline, whose encode_prompt is diffusers'."""
    prompts = [PLAIN, "a knight in armor"]
    ours = encode_prompt_weighted(fixture_pipe, prompts, "blurry, lowres", num_images_per_prompt=2)
    theirs = fixture_pipe.encode_prompt(
        prompts, device=torch.device("cpu"), num_images_per_prompt=2, negative_prompt=["blurry, lowres"] * 2
    )
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and torch.equal(a, b)


def test_plain_prompt_parity_zero_negative_and_clip_skip(sdxl):
    ours = encode_prompt_weighted(sdxl, PLAIN, None, clip_skip=1)
    theirs = sdxl.encode_prompt(PLAIN, device=torch.device("cpu"), clip_skip=1)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert not ours[1].any() and not ours[3].any()  # force_zeros_for_empty_prompt, as diffusers
    no_cfg = encode_prompt_weighted(sdxl, PLAIN, "x", clip_skip=1, do_classifier_free_guidance=False)
    assert no_cfg[1] is None and torch.equal(no_cfg[0], ours[0])


# (b) weights -----------------------------------------------------------------------------------------------


def _word_positions(pipe, before: str, word: str) -> range:
    start = 1 + len(pipe.tokenizer(before, add_special_tokens=False).input_ids)  # after BOS
    return range(start, start + len(pipe.tokenizer(word, add_special_tokens=False).input_ids))


@pytest.mark.parametrize(("syntax", "factor"), [("(cat:1.5)", 1.5), ("[cat]", 1 / 1.1), ("((cat))", 1.21)])
def test_weight_scales_only_its_tokens_away_from_eos(sdxl, syntax, factor):
    before, after = "a photo of a ", " on a mat"
    plain = encode_prompt_weighted(sdxl, f"{before}cat{after}", "blurry")
    weighted = encode_prompt_weighted(sdxl, f"{before}{syntax}{after}", "blurry")
    cat = _word_positions(sdxl, before, "cat")
    assert len(cat) > 0
    eos = 1 + len(sdxl.tokenizer(f"{before}cat{after}", add_special_tokens=False).input_ids)
    changed = (plain[0] != weighted[0]).any(dim=-1)[0]
    assert changed.nonzero().flatten().tolist() == list(cat)
    reference = plain[0][0, eos]
    for i in cat:  # both encoders' halves, distance from the EOS embedding scaled by the weight
        ratio = (weighted[0][0, i] - reference).norm() / (plain[0][0, i] - reference).norm()
        assert ratio.item() == pytest.approx(factor, rel=1e-4)
    assert torch.equal(plain[1], weighted[1]) and torch.equal(plain[2], weighted[2])  # negative, pooled


def test_explicit_weight_one_is_the_plain_prompt(sdxl):
    plain = encode_prompt_weighted(sdxl, "a cat on a mat")
    one = encode_prompt_weighted(sdxl, "a (cat:1.0) on a mat")
    assert torch.equal(plain[0], one[0])


def test_apply_token_weights_uses_each_chunks_own_eos():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    w = torch.tensor([[1.0, 2.0, 1.0, 1.0], [1.0, 1.0, 0.5, 1.0]])
    out = apply_token_weights(hidden, w, torch.tensor([2, 3]))
    assert torch.equal(out[0, 1], hidden[0, 2] + 2 * (hidden[0, 1] - hidden[0, 2]))
    assert torch.equal(out[1, 2], hidden[1, 3] + 0.5 * (hidden[1, 2] - hidden[1, 3]))
    assert torch.equal(out[w == 1], hidden[w == 1])


# (c) long prompts ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def library_warnings() -> Iterator[list[str]]:
    """Warnings transformers and diffusers log (their handlers bypass pytest's capture, so listen directly)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    loggers = [logging.getLogger("transformers"), logging.getLogger("diffusers")]
    levels = [logger.level for logger in loggers]  # the CLI may have turned them down to errors
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
    try:
        yield messages
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def test_long_prompt_is_chunked_without_truncation_warning(sdxl):
    tail_a, tail_b = " a red scarf and golden earrings", " a blue hat and silver glasses"
    for tokenizer in (sdxl.tokenizer, sdxl.tokenizer_2):
        tokenizer.deprecation_warnings.clear()  # transformers warns about a long input once per tokenizer
    with library_warnings() as ours:
        a = encode_prompt_weighted(sdxl, LONG_HEAD + tail_a, "blurry")
        b = encode_prompt_weighted(sdxl, LONG_HEAD + tail_b, "blurry")
    assert ours == []
    assert a[0].shape == (1, 2 * 77, 64) and a[1].shape == a[0].shape  # negative padded to two chunks
    assert torch.equal(a[0][:, :77], b[0][:, :77]) and not torch.equal(a[0][:, 77:], b[0][:, 77:])
    assert torch.equal(a[2], b[2])  # pooled from the first chunk only

    # diffusers truncates the same prompt (and says so): both tails give the same embedding there.
    with library_warnings() as theirs:
        theirs_a = sdxl.encode_prompt(LONG_HEAD + tail_a, device=torch.device("cpu"), negative_prompt="blurry")
    assert any("truncated" in m for m in theirs)  # the listener does hear the warning we avoid
    theirs_b = sdxl.encode_prompt(LONG_HEAD + tail_b, device=torch.device("cpu"), negative_prompt="blurry")
    assert torch.equal(theirs_a[0], theirs_b[0])
    torch.testing.assert_close(a[0][:, :77], theirs_a[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(a[2], theirs_a[2], rtol=0, atol=1e-5)
    # The negative's second chunk is the empty prompt's encoding, as A1111 pads its conditioning.
    empty = encode_prompt_weighted(sdxl, "", "")
    torch.testing.assert_close(a[1][:, 77:], empty[0], rtol=0, atol=1e-5)


def test_break_starts_a_new_chunk(sdxl):
    broken = encode_prompt_weighted(sdxl, "a cat BREAK a dog")
    alone = encode_prompt_weighted(sdxl, "a dog")
    assert broken[0].shape[1] == 2 * 77
    torch.testing.assert_close(broken[0][:, 77:], alone[0], rtol=0, atol=1e-5)


def test_long_embeddings_drive_a_diffusers_sdxl_pipeline(sdxl):
    pipe = sdxl

    def generate(prompt: str) -> torch.Tensor:
        embeds = encode_prompt_weighted(pipe, prompt, "blurry")
        return pipe(
            **embeds._asdict(), num_inference_steps=2, height=64, width=64,
            generator=torch.Generator("cpu").manual_seed(0), output_type="latent",
        ).images

    first, second = generate(LONG_HEAD + " a red scarf"), generate(LONG_HEAD + " a blue hat")
    assert first.shape == (1, 4, 8, 8) and not torch.equal(first, second)


def test_bad_arguments_are_typed_errors(sdxl):
    with pytest.raises(InvalidInputError, match="negative_prompt"):
        encode_prompt_weighted(sdxl, ["a", "b"], ["x", "y", "z"])
    with pytest.raises(InvalidInputError, match="num_images_per_prompt"):
        encode_prompt_weighted(sdxl, "a", num_images_per_prompt=0)
    with pytest.raises(InvalidInputError, match="prompt"):
        encode_prompt_weighted(sdxl, [])


def test_textual_inversion_tokens_expand_as_in_diffusers(tiny_fixture_dir):
    """A two-vector textual inversion: same embeddings as encode_prompt, and a weight covers both vectors."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_fixture_dir / "base")  # its own: loading mutates it
    gen = torch.Generator().manual_seed(0)
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        pipe.load_textual_inversion(
            {"emb": torch.randn(2, 32, generator=gen)}, token="<me>", text_encoder=encoder, tokenizer=tokenizer
        )
    ours = encode_prompt_weighted(pipe, "a photo of <me> smiling", "blurry")
    theirs = pipe.encode_prompt("a photo of <me> smiling", device=torch.device("cpu"), negative_prompt="blurry")
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    weighted = encode_prompt_weighted(pipe, "a photo of (<me>:1.3) smiling", "blurry")
    assert list(_word_positions(pipe, "a photo of ", "<me> <me>_1")) == [9, 10]
    assert (weighted[0] != ours[0]).any(dim=-1)[0].nonzero().flatten().tolist() == [9, 10]


def test_long_and_weighted_prompts_drive_our_instantid_pipeline(fixture_pipe, tiny_fixture_dir):
    """Through our pipeline's prompt_embeds: the tail past 77 tokens matters, a plain prompt gives exactly the
    text path, and the pipeline repeats the embeddings for num_images_per_prompt itself."""
    import numpy as np
    from PIL import Image

    from instantid import draw_kps

    face = np.load(tiny_fixture_dir / "face_embedding.npy")
    kps = draw_kps(Image.new("RGB", (64, 64)), [[22, 20], [42, 21], [32, 31], [24, 42], [40, 42]])
    common = dict(image=kps, image_embeds=face, num_inference_steps=2, output_type="latent")

    def generate(n: int = 1, **kwargs) -> torch.Tensor:
        gen = torch.Generator("cpu").manual_seed(0)
        return fixture_pipe(**kwargs, **common, num_images_per_prompt=n, generator=gen).images

    def embeds(prompt: str) -> dict:
        return encode_prompt_weighted(fixture_pipe, prompt, "blurry")._asdict()

    red, blue = generate(**embeds(LONG_HEAD + " a red scarf")), generate(**embeds(LONG_HEAD + " a blue hat"))
    assert not torch.equal(red, blue)
    assert torch.equal(generate(**embeds("a portrait")), generate(prompt="a portrait", negative_prompt="blurry"))
    assert generate(2, **embeds(LONG_HEAD + " a red scarf")).shape[0] == 2


# (e) A1111's "pad prompt to the last comma" ---------------------------------------------------------------

# The fixture tokenizers read "a" and "b" as one token each: 64 a's, a comma, then 20 b's (85 tokens).
COMMA_PROMPT = "a " * 64 + ", " + "b " * 20


def test_comma_padding_moves_the_words_after_the_last_comma_to_the_next_chunk(sdxl):
    from instantid.pipelines.prompts import _tokenize

    a, b = (sdxl.tokenizer(w, add_special_tokens=False).input_ids[0] for w in "ab")
    comma = sdxl.tokenizer(",", add_special_tokens=False).input_ids[0]

    def chunks(backtrack: int) -> list[list[int]]:
        return [ids for ids, _ in _tokenize(sdxl, sdxl.tokenizer, 77, COMMA_PROMPT, backtrack)]

    assert chunks(0) == [[a] * 64 + [comma] + [b] * 10, [b] * 10]  # cut at 75 tokens
    assert chunks(20) == [[a] * 64 + [comma], [b] * 20]  # the comma is 11 tokens back: its phrase moves on
    assert chunks(11) == chunks(20)
    assert chunks(10) == chunks(0)  # further back than allowed: cut as before
    weighted = _tokenize(sdxl, sdxl.tokenizer, 77, "a " * 64 + ", (" + "b " * 20 + ":1.5)", 20)
    assert [w for _, w in weighted] == [[1.0] * 65, [1.5] * 20]  # weights travel with their tokens


def test_comma_padding_embeddings_and_short_prompts(sdxl):
    padded = encode_prompt_weighted(sdxl, COMMA_PROMPT, "blurry", comma_padding_backtrack=20)
    assert padded[0].shape[1] == 2 * 77
    # The second chunk is the moved phrase alone, the first the text up to the comma.
    torch.testing.assert_close(padded[0][:, 77:], encode_prompt_weighted(sdxl, "b " * 20)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded[0][:, :77], encode_prompt_weighted(sdxl, "a " * 64 + ",")[0], rtol=0,
                               atol=1e-5)
    assert not torch.equal(padded[0], encode_prompt_weighted(sdxl, COMMA_PROMPT, "blurry")[0])
    # A prompt that fits one chunk is never touched: still exactly diffusers'.
    short = encode_prompt_weighted(sdxl, PLAIN + ", " + PLAIN, "blurry", comma_padding_backtrack=20)
    theirs = sdxl.encode_prompt(PLAIN + ", " + PLAIN, device=torch.device("cpu"), negative_prompt="blurry")
    for ours, expected in zip(short, theirs, strict=True):
        assert torch.equal(ours, expected)
    for bad in (-1, 75, 2.5, True):
        with pytest.raises(InvalidInputError, match="comma_padding_backtrack must be a whole number from 0 to 74"):
            encode_prompt_weighted(sdxl, PLAIN, comma_padding_backtrack=bad)
