"""Sampling from a ReformerLM or a ReformerEncDec: logits filters, decode loops, beam search.

    generate(params, cfg, prompt [b, p], key, *, num_tokens, greedy=False,
             temperature=1.0, top_k=None, top_p=None, n_hashes=None) -> ids int32 [b, num_tokens]
    filter_logits(logits [b, v], *, temperature, top_k, top_p) -> [b, v] (-inf = removed)
    sample_logits(logits [b, v], key, *, greedy, temperature, top_k, top_p) -> ids int32 [b]
    beam_search(params, cfg, prompt [b, p], key, *, beam_size, num_tokens, eos_id,
                length_penalty=0.6, n_hashes=None) -> beam_search.BeamResult
                (ids [b, beam_size, num_tokens], scores, lengths: best first)

    encoder-decoders (reformer_jax/encdec.py), a source [b, s] in, targets out:
    translate(params, cfg, source [b, s], key, *, num_tokens, source_mask=None,
              eos_id=EOS_ID, greedy=False, temperature=1.0, top_k=None, top_p=None)
        -> ids int32 [b, num_tokens] (PAD_ID after the first EOS)
    translate_beam(params, cfg, source [b, s], key, *, beam_size, num_tokens,
                   source_mask=None, eos_id=EOS_ID, length_penalty=0.6) -> BeamResult

Everything that decides a token is a pure function of (logits, key). The
caches, prefill and the single-token step are reformer_jax/decoding.py; the
model-agnostic beam search is reformer_jax/beam_search.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from reformer_jax import beam_search as beams
from reformer_jax import decoding
from reformer_jax.config import ReformerConfig
from reformer_jax.encdec import EOS_ID, PAD_ID, check_encdec_config

Array = jax.Array
PyTree = Any


# ----------------------------------------------------------------------------- logits filters


def filter_logits(
    logits: Array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Array:
    """logits [b, v] -> float32 [b, v] scaled by 1/temperature, removed entries -inf.

    top_k keeps the k largest logits (ties at the k-th value are all kept).
    top_p (nucleus) keeps the smallest set of most probable ids whose
    probability mass (after temperature) is at least p.
    """
    x = logits.astype(jnp.float32) / jnp.float32(temperature)
    if top_k is not None and top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if top_p is not None and not (isinstance(top_p, (int, float)) and top_p >= 1.0):
        order = jnp.argsort(-x, axis=-1)
        sorted_x = jnp.take_along_axis(x, order, axis=-1)
        probs = jax.nn.softmax(sorted_x, axis=-1)
        # Keep id i of the sorted list when the mass strictly before it is < p:
        # that is the smallest prefix whose mass reaches p.
        before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = before < top_p
        keep = (
            jnp.zeros_like(keep_sorted).at[jnp.arange(x.shape[0])[:, None], order].set(keep_sorted)
        )
        x = jnp.where(keep, x, -jnp.inf)
    return x


def sample_logits(
    logits: Array,
    key: Array,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Array:
    """One id per row of logits [b, v]: argmax if greedy, else a draw from the filtered softmax."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- generate


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How each token is chosen from the model's log-probs (see `sample_logits`)."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or math.isinf(t):
            raise ValueError(
                f"temperature must be a finite number > 0, got {t!r} (use greedy for T -> 0)."
            )
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k must be an int >= 1 (or None for no limit), got {k!r}.")
        p = self.top_p
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1
        ):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}.")


def check_prompt(cfg: ReformerConfig, prompt, num_tokens: int) -> None:
    """One clear error for a prompt [b, p] the model cannot continue by num_tokens."""
    shape = getattr(prompt, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"prompt must be int ids of shape [samples, length], got shape {shape}.")
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must hold integer ids, got dtype {prompt.dtype}.")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(
            f"prompt is empty (shape {tuple(shape)}): give at least one token to continue."
        )
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}.")
    if shape[1] + num_tokens > cfg.max_len:
        raise ValueError(
            f"prompt length {shape[1]} + num_tokens {num_tokens} exceeds the model's max_len "
            f"{cfg.max_len}: shorten the prompt or ask for at most {cfg.max_len - shape[1]} tokens."
        )
    lo, hi = int(jnp.min(prompt)), int(jnp.max(prompt))
    if lo < 0 or hi >= cfg.vocab_size:
        raise ValueError(
            f"prompt ids must lie in 0..{cfg.vocab_size - 1} (the model's vocabulary), "
            f"got {lo}..{hi}."
        )


def generate(
    params: PyTree,
    cfg: ReformerConfig,
    prompt: Array,
    key: Array,
    *,
    num_tokens: int,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    n_hashes: int | None = None,
) -> Array:
    """Samples num_tokens ids after prompt [b, p] for each of b samples -> int32 [b, num_tokens].

    One compiled program: `prefill`, then a `lax.scan` of decode steps. The
    key decides everything: the LSH rotations of each sample and every draw,
    so the same key gives the same samples. `n_hashes` overrides the
    configured hash rounds (the paper's Table 2 evaluates LSH-1..8).
    """
    decoding.check_decodable(cfg)
    opts = SamplingOptions(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)
    if n_hashes is not None and (
        isinstance(n_hashes, bool) or not isinstance(n_hashes, int) or n_hashes < 1
    ):
        raise ValueError(f"n_hashes must be a positive int, got {n_hashes!r}.")
    prompt = jnp.asarray(prompt)
    check_prompt(cfg, prompt, num_tokens)
    # temperature and top_p are traced, so a sweep over them compiles once;
    # greedy and top_k decide the program's shape and stay static.
    use_top_p = opts.top_p is not None and opts.top_p < 1.0
    return _generate(
        params,
        cfg,
        prompt.astype(jnp.int32),
        key,
        jnp.float32(opts.temperature),
        jnp.float32(opts.top_p) if use_top_p else None,
        num_tokens=num_tokens,
        greedy=opts.greedy,
        top_k=opts.top_k,
        n_hashes=n_hashes,
    )


@functools.partial(jax.jit, static_argnames=("cfg", "num_tokens", "greedy", "top_k", "n_hashes"))
def _generate(params, cfg, prompt, key, temperature, top_p, *, num_tokens, greedy, top_k, n_hashes):
    hash_key, draw_key = jax.random.split(key)
    choose = functools.partial(
        sample_logits, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p
    )
    log_probs, cache = decoding.prefill(params, cfg, prompt, hash_key, n_hashes=n_hashes)
    step = lambda cache, token: decoding.step(params, cfg, cache, token)
    return _sample_loop(log_probs, cache, step, choose, draw_key, num_tokens)


def _sample_loop(log_probs, cache, step, choose, draw_key, num_tokens):
    """num_tokens ids [b, n] chosen one at a time: the first from log_probs [b, v], then each
    from step(cache, token) -> (log_probs, cache), in one `lax.scan`; token i is drawn with
    fold_in(draw_key, i)."""
    first = choose(log_probs, jax.random.fold_in(draw_key, 0))

    def body(carry, i):
        cache, token = carry
        log_probs, cache = step(cache, token)
        token = choose(log_probs, jax.random.fold_in(draw_key, i))
        return (cache, token), token

    _, rest = jax.lax.scan(body, (cache, first), jnp.arange(1, num_tokens))
    return jnp.concatenate([first[:, None], rest.T], axis=1)


# ----------------------------------------------------------------------------- beam search


def beam_search(
    params: PyTree,
    cfg: ReformerConfig,
    prompt: Array,
    key: Array,
    *,
    beam_size: int,
    num_tokens: int,
    eos_id: int | None,
    length_penalty: float = 0.6,
    n_hashes: int | None = None,
) -> beams.BeamResult:
    """The beam_size best continuations of each prompt row [b, p], up to num_tokens ids each.

    -> BeamResult: ids int32 [b, beam_size, num_tokens] (0 after each length),
    scores float32 [b, beam_size] (GNMT: log P / ((5 + length) / 6) **
    length_penalty), lengths int32 [b, beam_size] (with the EOS token), best
    first; see reformer_jax/beam_search.py for the scoring and the exact early
    stop. eos_id=None: no id ends a hypothesis early.

    The prompt is prefilled once per example and its cache tiled beam_size
    times, so every beam of example i keeps example i's LSH rotations, the
    ones `generate` draws from the same key: beam_size=1 without an eos_id is
    greedy `generate`.
    """
    decoding.check_decodable(cfg)
    _check_beam_args(cfg, beam_size, num_tokens, eos_id, length_penalty, n_hashes)
    a = length_penalty
    prompt = jnp.asarray(prompt)
    check_prompt(cfg, prompt, num_tokens)
    return _beam_search(
        params,
        cfg,
        prompt.astype(jnp.int32),
        key,
        jnp.float32(a),  # traced: a sweep over length_penalty compiles once
        beam_size=beam_size,
        num_tokens=num_tokens,
        eos_id=eos_id,
        n_hashes=n_hashes,
    )


def _check_beam_args(cfg, beam_size, num_tokens, eos_id, length_penalty, n_hashes) -> None:
    for name, value in (("beam_size", beam_size), ("num_tokens", num_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if eos_id is not None and (
        isinstance(eos_id, bool) or not isinstance(eos_id, int) or not 0 <= eos_id < cfg.vocab_size
    ):
        raise ValueError(
            f"eos_id must be an id in 0..{cfg.vocab_size - 1} (the model's vocabulary) or None, "
            f"got {eos_id!r}."
        )
    a = length_penalty
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
        raise ValueError(f"length_penalty must be a finite number, got {a!r}.")
    if n_hashes is not None and (
        isinstance(n_hashes, bool) or not isinstance(n_hashes, int) or n_hashes < 1
    ):
        raise ValueError(f"n_hashes must be a positive int, got {n_hashes!r}.")


@functools.partial(
    jax.jit, static_argnames=("cfg", "beam_size", "num_tokens", "eos_id", "n_hashes")
)
def _beam_search(
    params, cfg, prompt, key, length_penalty, *, beam_size, num_tokens, eos_id, n_hashes
):
    hash_key, _ = jax.random.split(key)  # generate's hash half: the same rotations
    log_probs, cache = decoding.prefill(params, cfg, prompt, hash_key, n_hashes=n_hashes)
    cache = cache.replace(layers=beams.tile(cache.layers, beam_size, axis=1))
    return beams.search(
        log_probs,
        cache,
        lambda cache, tokens: decoding.step(params, cfg, cache, tokens),
        decoding.reorder_cache,
        beam_size=beam_size,
        max_len=num_tokens,
        eos_id=eos_id,
        length_penalty=length_penalty,
    )


# ----------------------------------------------------------------------------- encoder-decoders


def _check_source(cfg: ReformerConfig, source, source_mask, num_tokens: int):
    """One clear error for a source batch [b, s] (and mask) the model cannot translate."""
    shape = getattr(source, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"source must be int ids of shape [examples, length], got shape {shape}.")
    if not jnp.issubdtype(source.dtype, jnp.integer):
        raise ValueError(f"source must hold integer ids, got dtype {source.dtype}.")
    if shape[1] > cfg.max_len:
        raise ValueError(
            f"source length {shape[1]} exceeds the model's max_len {cfg.max_len}: shorten it."
        )
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}.")
    if num_tokens > cfg.max_len:
        raise ValueError(
            f"num_tokens {num_tokens} exceeds the model's max_len {cfg.max_len} (target positions)."
        )
    lo, hi = int(jnp.min(source)), int(jnp.max(source))
    if lo < 0 or hi >= cfg.vocab_size:
        raise ValueError(
            f"source ids must lie in 0..{cfg.vocab_size - 1} (the model's vocabulary), "
            f"got {lo}..{hi}."
        )
    if source_mask is None:
        source_mask = source != PAD_ID
    source_mask = jnp.asarray(source_mask, bool)
    if source_mask.shape != tuple(shape):
        raise ValueError(
            f"source_mask has shape {source_mask.shape}; it must match source {tuple(shape)}."
        )
    return source.astype(jnp.int32), source_mask


def translate(
    params: PyTree,
    cfg: ReformerConfig,
    source: Array,
    key: Array,
    *,
    num_tokens: int,
    source_mask: Array | None = None,
    eos_id: int | None = EOS_ID,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    n_hashes: int | None = None,
) -> Array:
    """Target ids of a ReformerEncDec for each source row [b, s] -> int32 [b, num_tokens].

    The encoder runs once (its memory's cross-attention keys and values are
    projected once, `decoding.encdec_prefill`), then one compiled loop of
    cached decoder steps, choosing tokens as `generate` does. Positions after
    a row's first eos_id hold PAD_ID (0). source_mask: bool [b, s], True = real
    (default: source != 0).
    """
    check_encdec_config(cfg)
    opts = SamplingOptions(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)
    source = jnp.asarray(source)
    source, source_mask = _check_source(cfg, source, source_mask, num_tokens)
    use_top_p = opts.top_p is not None and opts.top_p < 1.0
    return _translate(
        params,
        cfg,
        source,
        source_mask,
        key,
        jnp.float32(opts.temperature),
        jnp.float32(opts.top_p) if use_top_p else None,
        num_tokens=num_tokens,
        eos_id=eos_id,
        greedy=opts.greedy,
        top_k=opts.top_k,
        n_hashes=n_hashes,
    )


@functools.partial(
    jax.jit, static_argnames=("cfg", "num_tokens", "eos_id", "greedy", "top_k", "n_hashes")
)
def _translate(
    params,
    cfg,
    source,
    source_mask,
    key,
    temperature,
    top_p,
    *,
    num_tokens,
    eos_id,
    greedy,
    top_k,
    n_hashes,
):
    hash_key, draw_key = jax.random.split(key)
    choose = functools.partial(
        sample_logits, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p
    )
    log_probs, cache = decoding.encdec_prefill(
        params, cfg, source, source_mask, hash_key, n_hashes=n_hashes
    )
    step = lambda cache, token: decoding.encdec_step(params, cfg, cache, token)
    ids = _sample_loop(log_probs, cache, step, choose, draw_key, num_tokens)
    if eos_id is None:
        return ids
    # Everything after the first EOS is padding.
    ended_before = jnp.cumsum(ids == eos_id, axis=1) - (ids == eos_id)
    return jnp.where(ended_before > 0, PAD_ID, ids)


def translate_beam(
    params: PyTree,
    cfg: ReformerConfig,
    source: Array,
    key: Array,
    *,
    beam_size: int,
    num_tokens: int,
    source_mask: Array | None = None,
    eos_id: int | None = EOS_ID,
    length_penalty: float = 0.6,
    n_hashes: int | None = None,
) -> beams.BeamResult:
    """Beam search of a ReformerEncDec: the beam_size best targets of each source row [b, s].

    -> BeamResult as `beam_search` (ids [b, beam_size, num_tokens], GNMT
    scores, lengths with the EOS, best first). The source is encoded once per
    example; its memory and decoder cache are tiled beam_size times.
    """
    check_encdec_config(cfg)
    _check_beam_args(cfg, beam_size, num_tokens, eos_id, length_penalty, n_hashes)
    source, source_mask = _check_source(cfg, jnp.asarray(source), source_mask, num_tokens)
    return _translate_beam(
        params,
        cfg,
        source,
        source_mask,
        key,
        jnp.float32(length_penalty),
        beam_size=beam_size,
        num_tokens=num_tokens,
        eos_id=eos_id,
        n_hashes=n_hashes,
    )


def _map_rows(cache: decoding.EncDecCache, op) -> decoding.EncDecCache:
    """op(tree, batch axis) on every per-example array of an EncDecCache: the decoder's layer
    caches and the memory's keys and values ([g, b, ...]: axis 1), the memory bias (axis 0)."""
    return decoding.EncDecCache(
        decoder=cache.decoder.replace(layers=op(cache.decoder.layers, 1)),
        memory={"kv": op(cache.memory["kv"], 1), "bias": op(cache.memory["bias"], 0)},
    )


@functools.partial(
    jax.jit, static_argnames=("cfg", "beam_size", "num_tokens", "eos_id", "n_hashes")
)
def _translate_beam(
    params,
    cfg,
    source,
    source_mask,
    key,
    length_penalty,
    *,
    beam_size,
    num_tokens,
    eos_id,
    n_hashes,
):
    hash_key, _ = jax.random.split(key)  # translate's hash half: the same rotations
    log_probs, cache = decoding.encdec_prefill(
        params, cfg, source, source_mask, hash_key, n_hashes=n_hashes
    )
    tiled = _map_rows(cache, lambda tree, axis: beams.tile(tree, beam_size, axis=axis))
    return beams.search(
        log_probs,
        tiled,
        lambda cache, tokens: decoding.encdec_step(params, cfg, cache, tokens),
        lambda cache, rows: _map_rows(
            cache, lambda tree, axis: beams.gather_rows(tree, rows, axis=axis)
        ),
        beam_size=beam_size,
        max_len=num_tokens,
        eos_id=eos_id,
        length_penalty=length_penalty,
    )
