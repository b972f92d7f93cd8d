"""ReformerLM, its layers and its memory behaviour (docs/algorithm.md §3-§5)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import layers, positions
from reformer_jax.config import RunSettings
from reformer_jax.model import ReformerLM, bits_per_token
from tests.conftest import tiny_config


def _normal(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _cfg(**kw):
    return tiny_config("lm", **kw)


def _tokens(seed, shape, vocab=40):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


# Models are initialised under jax.jit: an eager init runs the whole forward op by op,
# several times slower than compiling it once.


# ------------------------------------------------------------------ feed-forward


@pytest.mark.parametrize("length,chunk", [(64, 16), (50, 16)])
def test_chunked_feed_forward_equals_unchunked(length, chunk):
    whole = layers.FeedForwardHalf(_cfg(ff_activation="gelu"))
    chunked = layers.FeedForwardHalf(_cfg(ff_activation="gelu"), RunSettings(ff_chunk_size=chunk))
    x = _normal(0, (2, length, 32))
    key = jax.random.key(1)
    p = whole.init(jax.random.key(2), x, key)["params"]
    np.testing.assert_allclose(
        chunked.apply({"params": p}, x, key),
        whole.apply({"params": p}, x, key),
        rtol=1e-6,
        atol=1e-6,
    )
    ct = _normal(3, x.shape)
    grads = [
        jax.grad(lambda p, x, m=m: jnp.sum(m.apply({"params": p}, x, key) * ct), argnums=(0, 1))(
            p, x
        )
        for m in (chunked, whole)
    ]
    # Parameter gradients sum over positions in a different order per chunk:
    # entries of O(1) agree to float32 rounding, ~4e-6 absolute measured.
    for a, b in zip(*map(jax.tree_util.tree_leaves, grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)


def _ff_grad_temp_bytes(chunk):
    ff = layers.FeedForwardHalf(_cfg(d_ff=1024), RunSettings(ff_chunk_size=chunk))
    x = jnp.zeros((1, 64, 32))
    p = jax.eval_shape(lambda: ff.init(jax.random.key(0), x, jax.random.key(0)))["params"]
    loss = lambda p, x: jnp.sum(ff.apply({"params": p}, x, jax.random.key(0)))
    shape = jax.ShapeDtypeStruct((1, 4096, 32), jnp.float32)
    compiled = jax.jit(jax.grad(loss)).lower(p, shape).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_feed_forward_keeps_one_chunk_alive():
    # The [b, l, d_ff] activation of the unchunked layer dominates its backward.
    whole, chunked = _ff_grad_temp_bytes(None), _ff_grad_temp_bytes(256)
    assert chunked < whole / 4, (chunked, whole)


# ------------------------------------------------------------------ positions


def test_axial_positions_concatenate_per_axis_tables():
    axial = positions.AxialPositionalEmbedding((4, 6), (5, 3))
    params = axial.init(jax.random.key(0), jnp.arange(24))["params"]
    enc = np.asarray(axial.apply({"params": params}, jnp.arange(24)))
    t0, t1 = np.asarray(params["axis_0"]), np.asarray(params["axis_1"])
    assert enc.shape == (24, 8) and t0.shape == (4, 5) and t1.shape == (6, 3)
    for p in range(24):
        np.testing.assert_array_equal(enc[p], np.concatenate([t0[p // 6], t1[p % 6]]))
    # Any positions, in any order and batch shape (evaluation, decoding).
    some = jnp.array([[3, 17, 0], [23, 5, 9]])
    np.testing.assert_array_equal(axial.apply({"params": params}, some), enc[np.asarray(some)])


def test_model_uses_the_configured_axial_shape():
    # trax after Jan 2021 ignored axial_pos_shape unless pos_type was set (docs/algorithm.md §5).
    cfg = _cfg(axial_shape=(8, 8), axial_dims=(20, 12))
    params = jax.jit(ReformerLM(cfg).init)(jax.random.key(0), _tokens(0, (1, 64)))["params"]
    assert params["axial_pos"]["axis_0"].shape == (8, 20)
    assert params["axial_pos"]["axis_1"].shape == (8, 12)
    # The positions reach the output: perturbing one axis table changes it.
    tokens = _tokens(1, (1, 64))
    base = ReformerLM(cfg).apply({"params": params}, tokens)
    bumped = jax.tree_util.tree_map(lambda x: x, params)
    bumped["axial_pos"]["axis_1"] = params["axial_pos"]["axis_1"] + 1.0
    assert float(jnp.max(jnp.abs(ReformerLM(cfg).apply({"params": bumped}, tokens) - base))) > 1e-3


@pytest.mark.parametrize(
    "shape,dims,match",
    [
        ((8, 4), (20, 12), "multiplies to 32"),
        ((8, 8), (20, 10), "sum to 30"),
        ((8, 8), (32,), "same length"),
    ],
)
def test_axial_config_errors(shape, dims, match):
    with pytest.raises(ValueError, match=match):
        _cfg(axial_shape=shape, axial_dims=dims)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(n_layers=3, attention_kinds=("local", "lsh")), "multiple of the attention cycle"),
        (dict(attention_kinds=("lsh", "sparse")), "attention_kinds"),
        (dict(n_buckets=5), "n_buckets"),
        (dict(ff_activation="swish2"), "ff_activation"),
        (dict(d_model=0), "d_model"),
        (dict(dropout=1.0), "dropout"),
        (dict(dtype="int8"), "dtype"),
    ],
)
def test_config_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**changes)


# ------------------------------------------------------------------ model


@pytest.mark.parametrize("kinds,chunk", [(("local", "full"), 8), (("lsh", "local"), 64)])
def test_model_is_causal(kinds, chunk):
    # With one LSH chunk covering the sequence the window is fixed; with several,
    # which keys share a chunk depends on every position's bucket (paper §2),
    # so exact invariance is checked for masks, shift and positions here and
    # for LSH's masking with fixed buckets in test_attention.py.
    cfg = _cfg(attention_kinds=kinds, chunk_len=chunk, local_chunk_len=8, n_layers=2)
    tokens = _tokens(0, (2, 64))
    params = jax.jit(ReformerLM(cfg).init)(jax.random.key(1), tokens)["params"]
    run = jax.jit(lambda t: ReformerLM(cfg).apply({"params": params}, t))
    base = run(tokens)
    for j in (0, 9, 31, 62):
        changed = run(tokens.at[:, j].set((tokens[:, j] + 1) % cfg.vocab_size))
        # Log-probs at i predict token i from tokens < i: positions <= j see no
        # change. LSH sorts by bucket, so a later token's bucket reorders the
        # chunk and the float32 sums in it: rounding-level (~1e-6) differences.
        np.testing.assert_allclose(
            changed[:, : j + 1], base[:, : j + 1], rtol=0, atol=1e-5 if "lsh" in kinds else 0
        )
        assert float(jnp.max(jnp.abs(changed[:, j + 1 :] - base[:, j + 1 :]))) > 1e-4


def test_log_probs_normalised_and_loss_matches_them():
    cfg = _cfg(attention_kinds=("local", "lsh"))
    tokens = _tokens(0, (2, 64))
    weights = jax.random.uniform(jax.random.key(1), (2, 64))
    model = ReformerLM(cfg, RunSettings(loss_chunk_size=24))
    params = jax.jit(model.init)(jax.random.key(2), tokens)["params"]
    logp = model.apply({"params": params}, tokens)
    assert logp.shape == (2, 64, 40) and logp.dtype == jnp.float32
    np.testing.assert_allclose(jnp.sum(jnp.exp(logp), -1), 1.0, rtol=1e-5)
    sums = model.apply({"params": params}, tokens, weights=weights, output="loss")
    nll = -jnp.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    correct = jnp.argmax(logp, -1) == tokens
    np.testing.assert_allclose(sums["nll"], jnp.sum(nll * weights), rtol=1e-5)
    np.testing.assert_allclose(sums["correct"], jnp.sum(correct * weights), rtol=1e-5)
    np.testing.assert_allclose(sums["weight"], jnp.sum(weights), rtol=1e-6)
    np.testing.assert_allclose(
        bits_per_token(sums["nll"], sums["weight"]),
        jnp.sum(nll * weights) / jnp.sum(weights) / np.log(2),
        rtol=1e-5,
    )


def test_n_hashes_and_attention_kind_at_call_time():
    cfg = _cfg(n_hashes=2)
    tokens = _tokens(0, (1, 64))
    params = jax.jit(ReformerLM(cfg).init)(jax.random.key(1), tokens)["params"]
    run = lambda c, **kw: ReformerLM(c).apply({"params": params}, tokens, **kw)
    two, four = run(cfg), run(cfg, n_hashes=4)
    assert float(jnp.max(jnp.abs(two - four))) > 1e-4
    np.testing.assert_array_equal(run(cfg.replace(n_hashes=4)), four)
    # The same parameters under shared-QK full attention (paper Table 2, "Full").
    full = run(cfg.replace(attention_kinds=("full_shared",)))
    assert full.shape == two.shape and bool(jnp.all(jnp.isfinite(full)))


def test_attention_in_head_groups_equals_all_heads():
    cfg = _cfg(attention_kinds=("local", "full"), n_heads=4, d_head=8)
    tokens = _tokens(0, (2, 64))
    params = jax.jit(ReformerLM(cfg).init)(jax.random.key(1), tokens)["params"]
    whole = ReformerLM(cfg).apply({"params": params}, tokens)
    in_chunks = ReformerLM(cfg, RunSettings(attention_head_chunk=2))
    np.testing.assert_allclose(
        in_chunks.apply({"params": params}, tokens), whole, rtol=1e-6, atol=1e-6
    )
    with pytest.raises(ValueError, match="attention_head_chunk"):
        RunSettings(attention_head_chunk=3).check(cfg)


def test_bfloat16_activations_float32_parameters():
    tokens = _tokens(0, (2, 64))
    cfg32 = _cfg(attention_kinds=("local", "lsh"))
    params = jax.jit(ReformerLM(cfg32).init)(jax.random.key(1), tokens)["params"]
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    loss = lambda c: ReformerLM(c).apply({"params": params}, tokens, output="loss")["nll"]
    l32, l16 = loss(cfg32), loss(cfg32.replace(dtype="bfloat16"))
    assert l16.dtype == jnp.float32
    # bfloat16 keeps 8 mantissa bits: ~0.4% per rounding, averaged over tokens.
    np.testing.assert_allclose(l16, l32, rtol=2e-2)
    g = jax.grad(
        lambda p: ReformerLM(cfg32.replace(dtype="bfloat16")).apply(
            {"params": p}, tokens, output="loss"
        )["nll"]
    )(params)
    assert all(
        x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))
        for x in jax.tree_util.tree_leaves(g)
    )


def test_loss_step_compiles_once():
    cfg = _cfg(dropout=0.1)
    params = jax.jit(ReformerLM(cfg).init)(jax.random.key(0), _tokens(0, (2, 64)))["params"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, tokens, key):
        def loss(p):
            s = ReformerLM(cfg).apply(
                {"params": p}, tokens, key=key, deterministic=False, output="loss"
            )
            return s["nll"] / s["weight"]

        return jax.value_and_grad(loss)(params)

    for i in range(3):
        loss, _ = step(params, _tokens(i, (2, 64)), jax.random.key(i))
        assert np.isfinite(float(loss))


# ------------------------------------------------------------------ memory


def _grad_temp_bytes(cfg, length, run):
    tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
    model = ReformerLM(cfg, run)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64), jnp.int32)))
    grad = jax.jit(jax.grad(lambda p, t: model.apply(p, t, output="loss")["nll"]))
    return grad.lower(params, tokens).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_reversible_memory_is_flat_in_depth():
    base = dict(
        max_len=4096,
        d_model=64,
        d_ff=128,
        n_heads=2,
        d_head=32,
        chunk_len=64,
        local_chunk_len=64,
        attention_kinds=("local", "lsh"),
        n_buckets=None,
    )
    run = RunSettings(ff_chunk_size=1024, loss_chunk_size=1024)
    temp = {
        (rev, n): _grad_temp_bytes(_cfg(**base, n_layers=n, reversible=rev), 4096, run)
        for rev in (True, False)
        for n in (2, 12)
    }
    assert temp[True, 12] <= 1.25 * temp[True, 2], temp
    assert temp[False, 12] >= 3 * temp[False, 2], temp
    assert temp[True, 12] < temp[False, 12] / 3, temp


def test_reversible_temporaries_flat_from_4_to_24_layers():
    # Layers scanned in groups of the 2-kind cycle: 2 vs 12 groups of one scan.
    base = dict(
        max_len=2048,
        d_model=64,
        d_ff=128,
        n_heads=2,
        d_head=32,
        chunk_len=64,
        local_chunk_len=64,
        attention_kinds=("local", "lsh"),
        n_buckets=None,
    )
    run = RunSettings(ff_chunk_size=512, loss_chunk_size=512, attention_head_chunk=1)
    four, twenty_four = (_grad_temp_bytes(_cfg(**base, n_layers=n), 2048, run) for n in (4, 24))
    assert twenty_four <= 1.1 * four, (four, twenty_four)


def test_layer_norm_vjp_equals_autodiff_in_float64():
    x = _normal(0, (3, 5, 32)) * 3 + 1
    scale, bias = _normal(1, (32,)), _normal(2, (32,))
    ct = _normal(3, x.shape)

    def plain(x, scale, bias):  # the formula, differentiated by JAX, float64
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-6) * scale + bias

    with jax.enable_x64():
        args64 = [np.asarray(a, np.float64) for a in (x, scale, bias)]
        want_y = plain(*args64)
        want_g = jax.grad(lambda *a: jnp.sum(plain(*a) * np.asarray(ct, np.float64)), (0, 1, 2))(
            *args64
        )
    got_y = layers.layer_norm(x, scale, bias)
    got_g = jax.grad(lambda *a: jnp.sum(layers.layer_norm(*a) * ct), (0, 1, 2))(x, scale, bias)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
    for got, want in zip(got_g, want_g, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ buckets in and out, hash seed


def test_buckets_out_and_back_in_reproduce_the_call():
    """return_buckets gives every LSH layer's buckets; injecting them replays the call exactly."""
    cfg = _cfg(attention_kinds=("local", "lsh"), n_layers=4)
    tokens = _tokens(0, (2, 32))
    model = ReformerLM(cfg)
    params = jax.jit(model.init)(jax.random.key(1), tokens)["params"]
    out, buckets = model.apply(
        {"params": params}, tokens, key=jax.random.key(2), return_buckets=True
    )
    assert sorted(buckets) == cfg.lsh_layers() == [1, 3]
    assert buckets[1].shape == (2, cfg.n_heads, cfg.n_hashes, 32)
    # Another key hashes differently, unless the first call's buckets are injected.
    other = model.apply({"params": params}, tokens, key=jax.random.key(3))
    replay = model.apply({"params": params}, tokens, key=jax.random.key(3), buckets=buckets)
    assert np.abs(np.asarray(other - out)).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(replay), np.asarray(out))


def test_buckets_for_some_lsh_layers_only_is_refused():
    cfg = _cfg(n_layers=2)
    tokens = _tokens(0, (1, 16))
    model = ReformerLM(cfg)
    params = jax.jit(model.init)(jax.random.key(1), tokens)["params"]
    with pytest.raises(ValueError, match=r"LSH layers are \[0, 1\]"):
        model.apply({"params": params}, tokens, buckets={0: jnp.zeros((1, 2, 2, 16), int)})
    with pytest.raises(ValueError, match=r"buckets\[1\] has shape"):
        bad = {0: jnp.zeros((1, 2, 2, 16), int), 1: jnp.zeros((1, 2, 1, 16), int)}
        model.apply({"params": params}, tokens, buckets=bad)


def test_hash_seed_fixes_rotations_per_layer():
    """With hash_seed, calls with different keys hash alike; layers still differ."""
    cfg = _cfg(n_layers=2, hash_seed=7)
    tokens = _tokens(0, (1, 32))
    model = ReformerLM(cfg)
    params = jax.jit(model.init)(jax.random.key(1), tokens)["params"]
    call = lambda k: model.apply({"params": params}, tokens, key=k, return_buckets=True)
    (out_a, b_a), (out_b, b_b) = call(jax.random.key(2)), call(jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(b_a[0]), np.asarray(b_b[0]))
    np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))
    # Layer 0 hashes its queries with the rotations of fold_in(key(hash_seed), 0).
    from reformer_jax import lsh
    from reformer_jax.model import shift_right

    block = jax.tree_util.tree_map(lambda a: a[0], params["blocks"]["0_shared_qk"]["attention"])
    x = params["embed"]["embedding"][shift_right(tokens)] + positions.sinusoidal_positions(
        jnp.arange(32), 32
    )
    h = layers.layer_norm(x, block["norm"]["scale"], block["norm"]["bias"], cfg.layer_norm_eps)
    q = jnp.einsum("bld,dhk->bhlk", h, block["wq"])
    key0 = jax.random.fold_in(jax.random.key(7), 0)
    want = lsh.hash_vectors(q, key=key0, n_buckets=cfg.n_buckets, n_hashes=cfg.n_hashes)
    np.testing.assert_array_equal(np.asarray(b_a[0]), np.asarray(want))
    # Without a hash seed, the call's key decides.
    free = ReformerLM(cfg.replace(hash_seed=None))
    _, b_free = free.apply({"params": params}, tokens, key=jax.random.key(3), return_buckets=True)
    assert np.any(np.asarray(b_free[0]) != np.asarray(b_a[0]))
