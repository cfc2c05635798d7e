"""Long and weighted SDXL prompts: A1111-style attention syntax, 75-token chunks, both CLIP text encoders.

``encode_prompt_weighted(pipe, prompt, ...)`` returns the four tensors an SDXL pipeline's ``__call__`` takes
(``prompt_embeds``, ``negative_prompt_embeds``, ``pooled_prompt_embeds``, ``negative_pooled_prompt_embeds``).

Syntax (as AUTOMATIC1111's web UI and the published InstantID "full" pipeline read it):
``(word)`` weight x1.1, ``((word))`` x1.21, ``[word]`` x1/1.1, ``(word:1.5)`` x1.5, ``\\(`` ``\\)`` ``\\[`` ``\\]``
``\\\\`` literal characters, ``BREAK`` starts a new 75-token chunk. Unlike A1111, a bracket without its partner is
kept as a literal character and weights nothing, so a stray ``(`` in a style template cannot reweight the rest.

Long prompts are cut into windows of ``model_max_length - 2`` tokens, each wrapped in BOS ... EOS and padded
like diffusers pads, encoded separately and concatenated along the sequence (A1111 and the published "full"
pipeline do this). Prompt and negative prompt are padded to the same number of chunks with empty chunks
(BOS, EOS, padding), as A1111 pads its conditioning. The pooled embedding comes from the first chunk of the
second encoder, as in A1111. A plain prompt of up to 75 tokens gives exactly diffusers' ``encode_prompt``.
``comma_padding_backtrack=N`` turns on A1111's "pad prompt to the last comma" at chunk boundaries.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from instantid.errors import InvalidInputError

ROUND_MULTIPLIER = 1.1  # "(word)", A1111's and the published pipeline's value
SQUARE_MULTIPLIER = 1 / 1.1  # "[word]"

# One lexical token per match: an escape, a bracket, a ":weight)" closer, the BREAK keyword, or plain text.
_LEXER = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])
    | (?P<weight>:\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\))
    | (?P<bracket>[()\[\]])
    | (?P<brk>\bBREAK\b)
    | (?P<text>[^\\()\[\]:B]+|.)
    """,
    re.X | re.S,
)


class PromptEmbeddings(NamedTuple):
    """What an SDXL pipeline's ``__call__`` takes instead of prompt texts: ``pipe(**embeds._asdict(), ...)``."""

    prompt_embeds: torch.Tensor  # (B, chunks * 77, 2048) for SDXL
    negative_prompt_embeds: torch.Tensor | None  # same shape; None without classifier-free guidance
    pooled_prompt_embeds: torch.Tensor  # (B, 1280)
    negative_pooled_prompt_embeds: torch.Tensor | None


@dataclass(frozen=True)
class PromptFragment:
    """A run of prompt text with one weight; ``is_break`` marks an A1111 ``BREAK`` (text is empty)."""

    text: str
    weight: float = 1.0
    is_break: bool = False


def parse_prompt_weights(prompt: str) -> list[PromptFragment]:
    """Split ``prompt`` into text runs with their attention weights; never raises on odd bracketing."""
    # Pass 1: lex, and pair brackets with one stack per kind (A1111 lets "(a [b) c]" interleave).
    tokens: list[tuple[str, str]] = []  # (kind, text) with kind in text/open/close/break
    closers: dict[int, float] = {}  # token index of a matched closer -> its multiplier
    openers: dict[int, int] = {}  # token index of a matched closer -> index of its opener
    stacks: dict[str, list[int]] = {"(": [], "[": []}
    for match in _LEXER.finditer(prompt):
        index = len(tokens)
        if match["escape"]:
            tokens.append(("text", match["escape"][1]))
        elif match["weight"]:
            if stacks["("]:
                openers[index] = stacks["("].pop()
                closers[index] = float(match["number"])
                tokens.append(("close", match["weight"]))
            else:  # ":1.2)" with no "(" before it is just text
                tokens.append(("text", match["weight"]))
        elif match["bracket"] in ("(", "["):
            stacks[match["bracket"]].append(index)
            tokens.append(("open", match["bracket"]))
        elif match["bracket"]:
            kind = "(" if match["bracket"] == ")" else "["
            if stacks[kind]:
                openers[index] = stacks[kind].pop()
                closers[index] = ROUND_MULTIPLIER if kind == "(" else SQUARE_MULTIPLIER
                tokens.append(("close", match["bracket"]))
            else:
                tokens.append(("text", match["bracket"]))
        elif match["brk"]:
            tokens.append(("break", ""))
        else:
            tokens.append(("text", match["text"]))
    unmatched = {i for stack in stacks.values() for i in stack}

    # Pass 2: a text token's weight is the product of the multipliers of the pairs around it.
    weights = [1.0] * len(tokens)
    for close, multiplier in closers.items():
        for i in range(openers[close] + 1, close):
            weights[i] *= multiplier

    fragments: list[PromptFragment] = []
    for i, (kind, text) in enumerate(tokens):
        if kind == "break":
            fragments.append(PromptFragment("", 1.0, is_break=True))
            continue
        if kind != "text" and i not in unmatched:
            continue  # a matched bracket only carries weight
        if fragments and not fragments[-1].is_break and fragments[-1].weight == weights[i]:
            fragments[-1] = PromptFragment(fragments[-1].text + text, weights[i])
        else:
            fragments.append(PromptFragment(text, weights[i]))
    return fragments or [PromptFragment("", 1.0)]


@dataclass(frozen=True)
class _Chunks:
    """One prompt tokenized for one encoder: ``ids`` and ``weights`` (chunks, length); ``eos`` (chunks,)."""

    ids: torch.Tensor
    weights: torch.Tensor
    eos: torch.Tensor


def _window(tokenizer: Any, text_encoder: Any) -> int:
    # Some tokenizers report a huge model_max_length; the encoder's position table is the real limit.
    limit = getattr(text_encoder.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return int(min(tokenizer.model_max_length, limit))


def _comma_id(tokenizer: Any) -> int | None:
    """The id of a lone comma (CLIP's ``,</w>``), or None if the tokenizer splits it."""
    ids = tokenizer(",", add_special_tokens=False, verbose=False).input_ids
    return ids[0] if len(ids) == 1 else None


def _tokenize(
    pipe: Any, tokenizer: Any, length: int, prompt: str, comma_backtrack: int = 0
) -> list[tuple[list[int], list[float]]]:
    """Token ids (without BOS/EOS) and per-token weights of each chunk of ``prompt``.

    ``comma_backtrack`` > 0 is A1111's "pad prompt to the last comma": when a chunk is full and the next token
    is not a comma, the tokens after the chunk's last comma (if it is at most that many tokens back) start the
    next chunk instead, so a phrase is not cut in two at the chunk boundary. A1111's rule, quirks included: a
    comma that opens a new chunk is not remembered as that chunk's last comma.
    """
    # Textual-inversion tokens expand as in encode_prompt; diffusers' converter tokenizes the whole text and
    # so logs transformers' "sequence length is longer" warning, hence only when such a token is present.
    inversions = [t for t in tokenizer.added_tokens_encoder if t not in tokenizer.all_special_tokens]
    convert = getattr(pipe, "maybe_convert_prompt", None) if inversions else None
    per_chunk = length - 2
    comma = _comma_id(tokenizer) if comma_backtrack > 0 else None
    chunks: list[tuple[list[int], list[float]]] = [([], [])]
    last_comma = -1  # position of the current chunk's last comma
    for fragment in parse_prompt_weights(prompt):
        if fragment.is_break:
            chunks.append(([], []))
            last_comma = -1
            continue
        text = fragment.text
        if convert is not None and any(t in text for t in inversions):
            text = convert(text, tokenizer)
        # verbose=False: a long fragment is chunked below, so the tokenizer's length warning would be wrong.
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        for token in ids:
            tokens, weights = chunks[-1]
            full = len(tokens) == per_chunk
            if token == comma:
                last_comma = len(tokens)
            elif comma is not None and full and last_comma >= 0 and per_chunk - last_comma <= comma_backtrack:
                cut = last_comma + 1
                chunks.append((tokens[cut:], weights[cut:]))  # the words after the comma move on
                del tokens[cut:], weights[cut:]
                last_comma = -1
            if len(chunks[-1][0]) == per_chunk:
                chunks.append(([], []))
                last_comma = -1
            chunks[-1][0].append(token)
            chunks[-1][1].append(fragment.weight)
    return chunks


def _pack(tokenizer: Any, length: int, chunks: list[tuple[list[int], list[float]]], count: int) -> _Chunks:
    """BOS + tokens + EOS + padding per chunk, with empty chunks appended up to ``count``."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    chunks = chunks + [([], [])] * (count - len(chunks))
    ids = [[bos, *t, eos] + [pad] * (length - 2 - len(t)) for t, _ in chunks]
    weights = [[1.0, *w] + [1.0] * (length - 1 - len(w)) for _, w in chunks]
    return _Chunks(torch.tensor(ids), torch.tensor(weights), torch.tensor([len(t) + 1 for t, _ in chunks]))


def apply_token_weights(hidden: torch.Tensor, weights: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """Scale each token's embedding away from (weight > 1) or towards (< 1) its chunk's EOS embedding.

    hidden (chunks, length, dim), weights (chunks, length), eos (chunks,) the EOS position of each chunk.
    This is the published InstantID "full" pipeline's rule (from diffusers' community lpw_stable_diffusion_xl):
    ``e' = e_eos + w * (e - e_eos)``. We take it over A1111's "multiply, then restore the chunk's mean" so
    prompts tuned on the published demo behave the same here, and because it changes only the weighted
    tokens: A1111's mean restoration rescales every position of the chunk, unweighted ones included, and
    compel's down-weighting re-encodes the prompt without the fragment. Positions with weight 1 are copied,
    not recomputed, so an unweighted prompt stays bit-exact with diffusers.
    """
    reference = hidden[torch.arange(hidden.shape[0]), eos].unsqueeze(1)  # (chunks, 1, dim)
    w = weights.to(hidden.dtype).unsqueeze(-1)
    return torch.where(w != 1, reference + (hidden - reference) * w, hidden)


def _execution_device(module: torch.nn.Module) -> torch.device:
    try:  # diffusers >= 0.36 knows where offloaded modules run
        from diffusers.utils.torch_utils import get_module_execution_device
    except ImportError:
        return module.device
    return get_module_execution_device(module)


def _encode(
    text_encoder: Any, packed: list[_Chunks], clip_skip: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states (batch, chunks * length, dim) and the first chunk's pooled output (batch, proj) or None."""
    ids = torch.cat([p.ids for p in packed])  # one forward for the whole batch, as diffusers does
    out = text_encoder(ids.to(_execution_device(text_encoder)), output_hidden_states=True)
    # SDXL reads the penultimate layer; clip_skip counts further back from there, as in diffusers.
    hidden = out.hidden_states[-2 if clip_skip is None else -(clip_skip + 2)]
    hidden = apply_token_weights(
        hidden, torch.cat([p.weights for p in packed]).to(hidden.device), torch.cat([p.eos for p in packed])
    )
    batch, count = len(packed), packed[0].ids.shape[0]
    hidden = hidden.reshape(batch, count * hidden.shape[1], hidden.shape[-1])
    pooled = out[0] if out[0].ndim == 2 else None  # CLIPTextModelWithProjection's text_embeds
    if pooled is not None:
        pooled = pooled.reshape(batch, count, -1)[:, 0]
    return hidden, pooled


def _as_batch(value: str | Sequence[str] | None, batch: int, name: str) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if len(values) == 1 and batch > 1:
        values = values * batch
    if len(values) != batch or not all(isinstance(v, str) for v in values):
        raise InvalidInputError(f"{name} must be one text or a list of {batch} texts (one per prompt)")
    return values


def _encode_pair(
    pipe: Any, texts: list[list[str]], clip_skip: int | None, comma_backtrack: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Encode prompt sets (e.g. [prompts, negatives]) with both encoders, all padded to one chunk count."""
    encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    if pipe.tokenizer is None:
        encoders = encoders[1:]  # refiner-style pipelines have only the second encoder
    # texts[s][k] is the per-batch list for set s and encoder k.
    tokenized = [
        [[_tokenize(pipe, tok, _window(tok, enc), t, comma_backtrack) for t in texts[s][k]]
         for k, (tok, enc) in enumerate(encoders)]
        for s in range(len(texts))
    ]
    count = max(len(chunks) for per_set in tokenized for per_enc in per_set for chunks in per_enc)
    hidden: list[torch.Tensor] = []
    pooled: list[torch.Tensor | None] = []
    for per_set in tokenized:  # separate forwards per set keep the plain path bit-exact with diffusers
        parts, pool = [], None
        for (tok, enc), per_prompt in zip(encoders, per_set, strict=True):
            packed = [_pack(tok, _window(tok, enc), chunks, count) for chunks in per_prompt]
            states, pool_k = _encode(enc, packed, clip_skip)
            parts.append(states)
            pool = pool if pool is not None else pool_k  # the first pooled output, as diffusers takes it
        hidden.append(torch.cat(parts, dim=-1))
        pooled.append(pool)
    return hidden, pooled


def _lora_scaling(pipe: Any, lora_scale: float | None, undo: bool) -> None:
    """Scale (or unscale) the text encoders' LoRA layers, as diffusers' encode_prompt does."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
    from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers

    if lora_scale is None or not USE_PEFT_BACKEND or not isinstance(pipe, StableDiffusionXLLoraLoaderMixin):
        return
    pipe._lora_scale = lora_scale
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        if encoder is not None:
            (unscale_lora_layers if undo else scale_lora_layers)(encoder, lora_scale)


@torch.no_grad()  # the text encoders are frozen everywhere we encode prompts
def encode_prompt_weighted(
    pipe: Any,
    prompt: str | Sequence[str] | None,
    negative_prompt: str | Sequence[str] | None = None,
    num_images_per_prompt: int = 1,
    device: torch.device | str | None = None,
    clip_skip: int | None = None,
    *,
    prompt_2: str | Sequence[str] | None = None,
    negative_prompt_2: str | Sequence[str] | None = None,
    do_classifier_free_guidance: bool = True,
    lora_scale: float | None = None,
    comma_padding_backtrack: int = 0,
) -> PromptEmbeddings:
    """Text embeddings for an SDXL pipeline from prompts of any length with A1111-style weights.

    Returns ``(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)``
    as a :class:`PromptEmbeddings`, shapes (B*n, chunks*77, 2048) twice, then (B*n, 1280) twice for SDXL,
    where n is ``num_images_per_prompt``. To hand them to a pipeline, keep n = 1 here and pass
    ``num_images_per_prompt`` to the pipeline: diffusers repeats given embeddings itself. As in diffusers,
    ``negative_prompt=None`` with the pipeline's ``force_zeros_for_empty_prompt`` gives zero negatives, and
    without classifier-free guidance the negatives are None. Unlike diffusers, ``clip_skip`` applies to the
    negative prompt too (A1111 does the same). ``comma_padding_backtrack`` (A1111's setting of that name, 20 in
    A1111, here 0 = off) moves the words after a chunk's last comma, at most that many tokens back, into the
    next chunk; it changes only prompts longer than one chunk.
    """
    if pipe.tokenizer_2 is None or pipe.text_encoder_2 is None:
        raise InvalidInputError("weighted prompts need an SDXL pipeline with its second text encoder")
    if num_images_per_prompt < 1:
        raise InvalidInputError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
    if clip_skip is not None and clip_skip < 0:
        raise InvalidInputError(f"clip_skip must be 0 or more, got {clip_skip}")
    if isinstance(comma_padding_backtrack, bool) or not isinstance(comma_padding_backtrack, int) \
            or not 0 <= comma_padding_backtrack <= 74:
        raise InvalidInputError(f"comma_padding_backtrack must be a whole number from 0 to 74 (as in A1111), "
                                f"got {comma_padding_backtrack!r}")
    prompt = "" if prompt is None else prompt
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    batch = len(prompts)
    if batch == 0 or not all(isinstance(p, str) for p in prompts):
        raise InvalidInputError("prompt must be a text or a non-empty list of texts")
    prompts_2 = _as_batch(prompt_2, batch, "prompt_2") or prompts
    zero_negative = negative_prompt is None and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    sets = [[prompts, prompts_2]]
    if do_classifier_free_guidance and not zero_negative:
        negatives = _as_batch(negative_prompt if negative_prompt is not None else "", batch, "negative_prompt")
        sets.append([negatives, _as_batch(negative_prompt_2, batch, "negative_prompt_2") or negatives])
    if pipe.tokenizer is None:
        sets = [[texts[1]] for texts in sets]

    _lora_scaling(pipe, lora_scale, undo=False)
    try:
        hidden, pooled = _encode_pair(pipe, sets, clip_skip, comma_padding_backtrack)
    finally:
        _lora_scaling(pipe, lora_scale, undo=True)

    device = torch.device(device) if device is not None else pipe._execution_device
    dtype = pipe.text_encoder_2.dtype

    def repeat(x: torch.Tensor) -> torch.Tensor:  # each prompt's rows repeated n times, in order
        return x.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, dim=0)

    prompt_embeds, pooled_embeds = repeat(hidden[0]), repeat(pooled[0])
    if not do_classifier_free_guidance:
        return PromptEmbeddings(prompt_embeds, None, pooled_embeds, None)
    if zero_negative:
        return PromptEmbeddings(
            prompt_embeds, torch.zeros_like(prompt_embeds), pooled_embeds, torch.zeros_like(pooled_embeds)
        )
    return PromptEmbeddings(prompt_embeds, repeat(hidden[1]), pooled_embeds, repeat(pooled[1]))


def prompt_arguments(pipe: Any, prompt: str, negative: str, guidance_scale: float,
                      comma_padding: int = 0) -> dict[str, Any]:
    """The call's text as embeddings from :func:`instantid.pipelines.prompts.encode_prompt_weighted`, for every prompt:
    A1111-style weights and prompts past CLIP's 77 tokens work, and a plain prompt gives bit for bit what
    ``pipe``'s own ``encode_prompt`` makes of the text (tests/test_generator.py checks empty prompts, zeroed
    negatives, guidance off, several images, a text-encoder LoRA, and the img2img/inpainting variants).

    An empty negative goes in as None so the model's ``force_zeros_for_empty_prompt`` zeroes it, as diffusers
    does for a missing negative. Negatives are made whenever guidance > 1: a pipeline that skips guidance
    anyway (diffusers' text-to-image with an LCM-distilled UNet) ignores them.
    """
    embeds = encode_prompt_weighted(pipe, prompt, negative or None, do_classifier_free_guidance=guidance_scale > 1,
                                    comma_padding_backtrack=comma_padding)
    return embeds._asdict()
