"""The seam: ReformerStack (hidden states, cross-attention to a context) and the LM head on it."""

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax import layers
from reformer_jax.config import RunSettings
from reformer_jax.model import ReformerLM, ReformerStack
from tests.conftest import tiny_config


def _cfg(**overrides):
    return tiny_config("cross", **overrides)


def _context(seed, batch, length, d):
    memory = jax.random.normal(jax.random.key(seed), (batch, length, d), jnp.float32)
    mask = jnp.arange(length)[None, :] < jnp.array([[length], [length - 7]])[:batch]
    return memory, mask


# The context's cotangent through the reversible stack (summed over every cross-attention
# half) against plain autodiff: tests/test_encdec.py checks it end to end, where it is the
# only path by which the encoder's parameters get a gradient.


def test_cross_attention_half_equals_dense_attention_and_ignores_masked_memory():
    cfg = _cfg()
    x = jax.random.normal(jax.random.key(0), (2, 64, cfg.d_model))
    memory, mask = _context(1, 2, 24, cfg.d_model)
    bias = jnp.where(mask, 0.0, -1e9)
    half = layers.CrossAttentionHalf(cfg, RunSettings(ff_chunk_size=24))  # 3 chunks, 1 padded
    context = {"memory": memory, "bias": bias}
    p = half.init(jax.random.key(2), x, context, jax.random.key(0))["params"]
    got = half.apply({"params": p}, x, context, jax.random.key(0))

    # The same half written densely in float64 numpy.
    f64 = lambda a: np.asarray(a, np.float64)
    xn = f64(x)
    mean = xn.mean(-1, keepdims=True)
    var = ((xn - mean) ** 2).mean(-1, keepdims=True)
    h = (xn - mean) / np.sqrt(var + cfg.layer_norm_eps) * f64(p["norm"]["scale"])
    h = h + f64(p["norm"]["bias"])
    q = np.einsum("blm,mhd->bhld", h, f64(p["wq"]))
    k = np.einsum("btm,mhd->bhtd", f64(memory), f64(p["wk"]))
    v = np.einsum("btm,mhd->bhtd", f64(memory), f64(p["wv"]))
    logits = np.einsum("bhld,bhtd->bhlt", q, k) / np.sqrt(cfg.d_head)
    logits = np.where(np.asarray(mask)[:, None, None, :], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    want = np.einsum("bhlt,bhtd,hdm->blm", probs, v, f64(p["wo"]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    # Padding in the memory changes nothing.
    noisy = memory.at[1, -7:].set(100.0)
    again = half.apply({"params": p}, x, {"memory": noisy, "bias": bias}, jax.random.key(0))
    np.testing.assert_array_equal(again, got)


def test_lm_is_the_stack_under_its_head():
    """ReformerLM's log-probs are the LM head applied to the stack's hidden states of
    the shifted tokens, with the stack's parameters at the top level."""
    cfg = _cfg(cross_attention=False, dropout=0.0)
    tokens = jax.random.randint(jax.random.key(0), (2, 64), 0, cfg.vocab_size)
    lm = ReformerLM(cfg)
    params = lm.init(jax.random.key(1), tokens)["params"]
    assert set(params) == {"embed", "blocks", "head"}
    stack_params = {k: v for k, v in params.items() if k != "head"}
    shifted = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
    hidden = ReformerStack(cfg).apply({"params": stack_params}, shifted)
    np.testing.assert_array_equal(lm.apply({"params": params}, tokens, output="hidden"), hidden)
    log_probs = lm.apply({"params": params}, tokens)
    head = lm.apply({"params": params}, hidden, method=ReformerLM.log_probs)
    np.testing.assert_allclose(log_probs, head, rtol=1e-6, atol=1e-6)
