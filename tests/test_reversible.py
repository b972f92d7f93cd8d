"""The custom_vjp reversible stack against plain autodiff (docs/algorithm.md §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import layers, reversible
from reformer_jax.config import RunSettings
from reformer_jax.model import ReformerLM
from tests.conftest import tiny_config


def _normal(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _dense_halves(cycle):
    """Small nonlinear F/G halves; F reports fake 'buckets' to exercise the plumbing."""

    def f(p, x, k, buckets):
        noise = jax.random.normal(k, x.shape) * 0.1  # key-dependent, like dropout
        y = jnp.tanh(x @ p["w"] + noise)
        b = jnp.argmax(x, axis=-1) if buckets is None else buckets
        return y + 0.01 * b[..., None], b

    def g(p, x, k):
        return jnp.sin(x @ p["w"]) * jax.random.uniform(k, (x.shape[-1],))

    return [f] * cycle, [g] * cycle


def _stacked_params(seed, cycle, groups, d):
    keys = jax.random.split(jax.random.key(seed), 2 * cycle)
    return tuple(
        (
            {"w": jax.random.normal(keys[2 * j], (groups, d, d)) / np.sqrt(d)},
            {"w": jax.random.normal(keys[2 * j + 1], (groups, d, d)) / np.sqrt(d)},
        )
        for j in range(cycle)
    )


def test_stack_gradients_equal_plain_autodiff():
    cycle, groups, d = 2, 3, 16
    fs, gs = _dense_halves(cycle)
    params = _stacked_params(0, cycle, groups, d)
    x1, x2 = _normal(1, (2, 10, d)), _normal(2, (2, 10, d))
    ct1, ct2 = _normal(3, x1.shape), _normal(4, x2.shape)
    key = jax.random.key(5)

    def loss(params, x1, x2, rev):
        y1, y2 = reversible.reversible_stack(fs, gs, params, x1, x2, key, reversible=rev)
        return jnp.sum(y1 * ct1) + jnp.sum(y2 * ct2)

    for rev_out, ref_out in zip(
        reversible.reversible_stack(fs, gs, params, x1, x2, key),
        reversible.reversible_stack(fs, gs, params, x1, x2, key, reversible=False),
        strict=True,
    ):
        np.testing.assert_array_equal(rev_out, ref_out)
    got = jax.grad(loss, argnums=(0, 1, 2))(params, x1, x2, True)
    want = jax.grad(loss, argnums=(0, 1, 2))(params, x1, x2, False)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    remat = jax.grad(
        lambda p: jnp.sum(
            reversible.reversible_stack(fs, gs, p, x1, x2, key, reversible=False, remat=True)[0]
            * ct1
        )
    )(params)
    plain = jax.grad(
        lambda p: jnp.sum(
            reversible.reversible_stack(fs, gs, p, x1, x2, key, reversible=False)[0] * ct1
        )
    )(params)
    for a, b in zip(
        jax.tree_util.tree_leaves(remat), jax.tree_util.tree_leaves(plain), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _model_cfg(**kw):
    return tiny_config("reversible", **kw)


def _run(**kw):
    """Chunked position-wise parts and loss: the chunk loops' own VJPs run inside."""
    return RunSettings(**{"ff_chunk_size": 32, "loss_chunk_size": 32, **kw})


@pytest.fixture(scope="module")
def model_inputs():
    """Tokens, loss weights and parameters of the reversible tiny model, shared by the
    model-level gradient tests (the settings they vary change no parameter shape)."""
    cfg = _model_cfg()
    tokens = jax.random.randint(jax.random.key(0), (2, 96), 0, cfg.vocab_size)
    weights = jax.random.uniform(jax.random.key(1), (2, 96))
    # Jitted: an eager init runs the whole forward op by op (several times slower).
    params = jax.jit(ReformerLM(cfg).init)(jax.random.key(2), tokens)["params"]
    return tokens, weights, params


def _loss_fn(cfg, run, tokens, weights):
    """loss(params, rev, buckets=None): the mean next-token loss with dropout on."""

    def loss(params, rev, buckets=None):
        sums = ReformerLM(cfg.replace(reversible=rev), run).apply(
            {"params": params},
            tokens,
            key=jax.random.key(3),
            deterministic=False,
            weights=weights,
            output="loss",
            buckets=buckets,
        )
        return sums["nll"] / sums["weight"]

    return loss


@pytest.mark.slow
@pytest.mark.parametrize("head_chunk", [None, 1])
def test_model_gradients_equal_plain_autodiff(head_chunk, model_inputs):
    tokens, weights, params = model_inputs
    loss = _loss_fn(_model_cfg(), _run(attention_head_chunk=head_chunk), tokens, weights)
    (l_rev, g_rev), (l_ref, g_ref) = (
        jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, rev) for rev in (True, False)
    )
    np.testing.assert_allclose(l_rev, l_ref, rtol=1e-6)
    leaves = jax.tree_util.tree_leaves_with_path(g_ref)
    for (path, want), got in zip(leaves, jax.tree_util.tree_leaves(g_rev), strict=True):
        scale = float(jnp.max(jnp.abs(want)))
        assert scale > 0, path  # every parameter receives gradient
        # float32 through 4 reconstructed layers: ~1e-6 relative measured.
        np.testing.assert_allclose(
            got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path)
        )


def test_block_inverse_reconstructs_inputs():
    cfg = _model_cfg(dropout=0.2)
    attn = layers.AttentionHalf(cfg, "lsh")
    ff = layers.FeedForwardHalf(cfg)
    x1, x2 = _normal(0, (2, 64, cfg.d_model)), _normal(1, (2, 64, cfg.d_model))
    key = jax.random.key(2)
    pa = attn.init(jax.random.key(3), x2, key)["params"]
    pf = ff.init(jax.random.key(4), x2, key)["params"]

    def f(p, x, k, b):
        return attn.apply({"params": p}, x, k, buckets=b, deterministic=False)

    def g(p, x, k):
        return ff.apply({"params": p}, x, k, deterministic=False)

    fy, buckets = f(pa, x2, key, None)
    y1 = x1 + fy
    y2 = x2 + g(pf, y1, key)
    r1, r2 = reversible.invert_layer(f, g, (pa, pf), y1, y2, key, buckets)
    np.testing.assert_allclose(r2, x2, atol=1e-5)
    np.testing.assert_allclose(r1, x1, atol=1e-5)


def test_dropout_masks_replay_with_the_layer_key():
    cfg = _model_cfg(dropout=0.3)
    ff = layers.FeedForwardHalf(cfg)
    x = _normal(0, (1, 64, cfg.d_model))
    p = ff.init(jax.random.key(1), x, jax.random.key(0))["params"]
    run = lambda k: ff.apply({"params": p}, x, k, deterministic=False)
    np.testing.assert_array_equal(run(jax.random.key(5)), run(jax.random.key(5)))
    assert float(jnp.max(jnp.abs(run(jax.random.key(5)) - run(jax.random.key(6))))) > 1e-2


@pytest.mark.slow
def test_model_gradients_with_injected_buckets_and_hf_settings(model_inputs):
    """Injected buckets, a hash seed and HF's conventions go through the custom backward pass."""
    cfg = _model_cfg(hash_seed=3, shift_inputs=False, layer_norm_eps=1e-12, local_n_chunks_before=0)
    tokens, weights, params = model_inputs
    loss = _loss_fn(cfg, _run(), tokens, weights)

    # The loss without injection, and the buckets its hashing chose.
    @jax.jit
    def hashed(params):
        sums, buckets = ReformerLM(cfg, _run()).apply(
            {"params": params},
            tokens,
            key=jax.random.key(3),
            deterministic=False,
            weights=weights,
            output="loss",
            return_buckets=True,
        )
        return sums["nll"] / sums["weight"], buckets

    l_hashed, buckets = hashed(params)
    # Different buckets from the ones the hash seed gives: injection must win.
    buckets = {i: (b + 1) % 6 for i, b in buckets.items()}
    (l_rev, g_rev), (l_ref, g_ref) = (
        jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, rev, buckets)
        for rev in (True, False)
    )
    np.testing.assert_allclose(l_rev, l_ref, rtol=1e-6)
    assert abs(float(l_hashed) - float(l_rev)) > 1e-4
    leaves = zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_rev), strict=True)
    for want, got in leaves:
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
