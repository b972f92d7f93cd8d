"""LSH, local and full attention against references computed another way."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import attention, lsh
from tests import reference

# float32 kernels against float64 references: inputs are N(0, 1), outputs O(1).
TOL = dict(rtol=1e-5, atol=1e-5)


# Jitted: one compiled program per call, where an eager call compiles each of its
# operations apart (several times the compile time with a cold cache).
_SETTINGS = ("chunk_len", "causal", "n_chunks_before", "n_chunks_after", "impl", "dropout_rate")
_lsh = jax.jit(
    attention.lsh_attention,
    static_argnames=_SETTINGS + ("n_hashes", "n_buckets", "dedup", "per_example_rotations"),
)
_local = jax.jit(attention.local_attention, static_argnames=_SETTINGS)


def _normal(seed, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def _random_mask(seed, bsz, length):
    mask = np.array(jax.random.bernoulli(jax.random.key(seed), 0.75, (bsz, length)))
    mask[:, 0] = True
    return jnp.asarray(mask)


# ----------------------------------------------------------------------------- LSH


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk_len", [40, 64])  # one chunk exactly, and a padded one
def test_one_chunk_one_round_equals_shared_qk_full_attention(causal, chunk_len):
    qk, v = _normal(0, (2, 3, 40, 16)), _normal(1, (2, 3, 40, 8))

    @jax.jit
    def lsh_out(qk, v):
        return attention.lsh_attention(
            qk,
            v,
            key=jax.random.key(2),
            n_hashes=1,
            n_buckets=4,
            chunk_len=chunk_len,
            causal=causal,
        )[0]

    @jax.jit
    def full_out(qk, v):
        return attention.full_attention(qk, None, v, causal=causal, shared_qk=True)

    np.testing.assert_allclose(lsh_out(qk, v), full_out(qk, v), rtol=1e-5, atol=1e-5)
    ct = _normal(3, v.shape)
    g_lsh = jax.vjp(lsh_out, qk, v)[1](ct)
    g_full = jax.vjp(full_out, qk, v)[1](ct)
    for a, b in zip(g_lsh, g_full, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


CASES = [
    # length, chunk, hashes, buckets, causal, dedup, masked, before, after
    (48, 8, 3, 4, True, False, False, 1, 0),
    (48, 8, 3, 4, True, True, False, 1, 0),
    (45, 8, 2, 6, True, True, True, 1, 0),  # length not a multiple of the chunk
    (37, 6, 4, [2, 4], False, False, True, 1, 0),
    (37, 6, 4, [2, 4], False, True, False, 1, 1),
    (30, 4, 2, 8, True, False, True, 2, 1),
    (12, 16, 3, 2, False, True, False, 1, 0),  # chunk longer than the sequence
    # Bidirectional with padding: one chunk back and one ahead, as encoders run.
    (40, 8, 2, 4, False, False, True, 1, 1),
    (43, 8, 3, 8, False, True, True, 1, 1),
    (20, 4, 1, 4, False, False, True, 2, 2),  # windows narrowed where few chunks are real
]


@pytest.mark.parametrize("length,chunk,n_hashes,n_buckets,causal,dedup,masked,before,after", CASES)
def test_lsh_matches_slow_reference(
    length, chunk, n_hashes, n_buckets, causal, dedup, masked, before, after
):
    seed = length * 100 + chunk
    qk, v = _normal(seed, (2, 2, length, 8)), _normal(seed + 1, (2, 2, length, 5))
    mask = _random_mask(seed + 2, 2, length) if masked else None
    out, buckets = _lsh(
        qk,
        v,
        key=jax.random.key(seed + 3),
        n_hashes=n_hashes,
        n_buckets=tuple(n_buckets) if isinstance(n_buckets, list) else n_buckets,
        chunk_len=chunk,
        causal=causal,
        n_chunks_before=before,
        n_chunks_after=after,
        dedup=dedup,
        mask=mask,
    )
    assert buckets.shape == (2, 2, n_hashes, length)
    want = reference.lsh_attention(
        qk,
        v,
        buckets,
        chunk_len=chunk,
        causal=causal,
        n_chunks_before=before,
        n_chunks_after=after,
        dedup=dedup,
        mask=mask,
    )
    # Outputs at padded query positions are unused; compare the real ones.
    keep = np.ones((2, length), bool) if mask is None else np.asarray(mask)
    np.testing.assert_allclose(
        np.asarray(out)[keep[:, None].repeat(2, 1)], want[keep[:, None].repeat(2, 1)], **TOL
    )


def test_dedup_changes_the_result_and_identical_rounds_count_once():
    qk, v = _normal(0, (1, 2, 32, 8)), _normal(1, (1, 2, 32, 8))
    kw = dict(n_buckets=4, chunk_len=8)
    one, b1 = _lsh(qk, v, key=jax.random.key(2), n_hashes=1, **kw)
    # Three identical rounds: without dedup each pair counts three times in every
    # softmax alike, so the output is unchanged; with dedup every N_ij is 3.
    same = jnp.repeat(b1, 3, axis=2)
    for dedup in (False, True):
        out, _ = _lsh(qk, v, n_hashes=3, buckets=same, dedup=dedup, **kw)
        np.testing.assert_allclose(out, one, rtol=1e-5, atol=1e-5)
    # Different rounds overlap partially: the correction matters.
    plain, b3 = _lsh(qk, v, key=jax.random.key(3), n_hashes=3, **kw)
    dd, _ = _lsh(qk, v, n_hashes=3, buckets=b3, dedup=True, **kw)
    assert float(jnp.max(jnp.abs(plain - dd))) > 1e-3


def test_given_buckets_reproduce_hashing():
    qk, v = _normal(0, (2, 2, 64, 8)), _normal(1, (2, 2, 64, 8))
    kw = dict(n_hashes=2, n_buckets=8, chunk_len=16)
    out, buckets = _lsh(qk, v, key=jax.random.key(4), **kw)
    again, same = _lsh(qk, v, buckets=buckets, **kw)
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(buckets, same)


def _fd_directional(f, x, direction, eps=1e-5):
    return (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)


@pytest.mark.parametrize("dedup", [False, True])
def test_lsh_gradient_matches_float64_finite_differences(dedup):
    bsz, heads, length, d = 1, 2, 22, 6
    kw = dict(chunk_len=4, causal=True, dedup=dedup)
    qk, v = _normal(0, (bsz, heads, length, d)), _normal(1, (bsz, heads, length, d))
    mask = _random_mask(2, bsz, length)
    _, buckets = _lsh(qk, v, key=jax.random.key(3), n_hashes=3, n_buckets=4, **kw)
    ct = np.asarray(_normal(4, v.shape), np.float64) * np.asarray(mask)[:, None, :, None]

    def loss_jax(qk, v):
        out, _ = attention.lsh_attention(
            qk, v, n_hashes=3, n_buckets=4, buckets=buckets, mask=mask, **kw
        )
        return jnp.sum(out * ct)

    g_qk, g_v = jax.jit(jax.grad(loss_jax, argnums=(0, 1)))(qk, v)

    def loss_ref(qk, v):
        out = reference.lsh_attention(qk, v, buckets, mask=mask, **kw)
        return float(np.sum(out * ct))

    qk64, v64 = np.asarray(qk, np.float64), np.asarray(v, np.float64)
    for seed in range(3):
        u = np.asarray(_normal(10 + seed, qk.shape), np.float64)
        fd = _fd_directional(lambda x: loss_ref(x, v64), qk64, u)
        np.testing.assert_allclose(float(jnp.sum(g_qk * u)), fd, rtol=1e-4, atol=1e-4)
        u = np.asarray(_normal(20 + seed, v.shape), np.float64)
        fd = _fd_directional(lambda x: loss_ref(qk64, x), v64, u)
        np.testing.assert_allclose(float(jnp.sum(g_v * u)), fd, rtol=1e-4, atol=1e-4)


def test_lsh_dropout_is_keyed_and_unbiased():
    qk, v = _normal(0, (1, 2, 32, 8)), _normal(1, (1, 2, 32, 8))
    kw = dict(key=jax.random.key(2), n_hashes=2, n_buckets=4, chunk_len=8)
    clean, _ = _lsh(qk, v, **kw)
    drop = jax.jit(
        lambda k: attention.lsh_attention(qk, v, dropout_rate=0.2, dropout_key=k, **kw)[0]
    )
    a, b = drop(jax.random.key(5)), drop(jax.random.key(5))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - clean))) > 1e-2
    mean = jnp.mean(jax.vmap(drop)(jax.random.split(jax.random.key(6), 2000)), axis=0)
    # 2000 samples: the standard error of the mean is ~0.02 here.
    np.testing.assert_allclose(mean, clean, atol=0.1)


# ------------------------------------------------------------------- local / full


@pytest.mark.parametrize(
    "length,chunk,causal,masked,before,after",
    [
        (64, 16, True, False, 1, 0),
        (50, 16, True, True, 1, 0),
        (50, 8, False, True, 1, 1),
        (20, 32, False, False, 1, 0),
    ],
)
def test_local_matches_reference(length, chunk, causal, masked, before, after):
    q, k, v = (_normal(i, (2, 3, length, 8)) for i in range(3))
    mask = _random_mask(3, 2, length) if masked else None
    out = _local(
        q,
        k,
        v,
        chunk_len=chunk,
        causal=causal,
        n_chunks_before=before,
        n_chunks_after=after,
        mask=mask,
    )
    want = reference.local_attention(
        q,
        k,
        v,
        chunk_len=chunk,
        causal=causal,
        n_chunks_before=before,
        n_chunks_after=after,
        mask=mask,
    )
    np.testing.assert_allclose(out, want, **TOL)


@pytest.mark.parametrize(
    "causal,shared_qk,masked",
    [(True, False, False), (False, False, True), (True, True, True), (False, True, False)],
)
def test_full_matches_reference(causal, shared_qk, masked):
    q, k, v = (_normal(i, (2, 3, 24, 8)) for i in range(3))
    mask = _random_mask(3, 2, 24) if masked else None
    out = attention.full_attention(
        q, None if shared_qk else k, v, causal=causal, mask=mask, shared_qk=shared_qk
    )
    want = reference.full_attention(q, k, v, causal=causal, mask=mask, shared_qk=shared_qk)
    np.testing.assert_allclose(out, want, **TOL)


def test_local_with_one_chunk_equals_full():
    q, k, v = (_normal(i, (1, 2, 30, 8)) for i in range(3))
    out = _local(q, k, v, chunk_len=32)
    np.testing.assert_allclose(out, attention.full_attention(q, k, v, causal=True), **TOL)


# ------------------------------------------------------------------- causality


def _perturb_after(x, i, seed):
    noise = _normal(seed, x.shape)
    return jnp.where(jnp.arange(x.shape[2])[:, None] > i, x + noise, x)


@pytest.mark.parametrize("kind", ["lsh", "lsh_dedup", "local", "full", "full_shared"])
def test_causality(kind):
    length = 48
    q, k, v = (_normal(i, (2, 2, length, 8)) for i in range(3))
    lsh_kw = dict(n_hashes=3, n_buckets=6, chunk_len=8, dedup=kind == "lsh_dedup")
    _, buckets = _lsh(q, v, key=jax.random.key(9), **lsh_kw)

    def run(q, k, v):
        if kind.startswith("lsh"):
            # The sorted layout depends on every position's bucket, as in the
            # paper; with the buckets held fixed no later input reaches output i.
            return attention.lsh_attention(q, v, buckets=buckets, **lsh_kw)[0]
        if kind == "local":
            return attention.local_attention(q, k, v, chunk_len=8)
        return attention.full_attention(
            q, None if kind == "full_shared" else k, v, causal=True, shared_qk=kind == "full_shared"
        )

    base = run(q, k, v)
    for i in (0, 7, 8, 30, length - 2):
        changed = run(*(_perturb_after(x, i, 50 + n) for n, x in enumerate((q, k, v))))
        np.testing.assert_array_equal(changed[:, :, : i + 1], base[:, :, : i + 1])
        assert float(jnp.max(jnp.abs(changed[:, :, i + 1 :] - base[:, :, i + 1 :]))) > 1e-3


# ---------------------------------------------------------------------- memory


def _grad_temp_bytes(fn, *shapes):
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args)))))
    compiled = grad.lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes, compiled.as_text()


def _lsh_sum(qk, v):
    return attention.lsh_attention(
        qk,
        v,
        key=jax.random.key(0),
        n_hashes=2,
        n_buckets=lsh.default_n_buckets(qk.shape[2], 64),
        chunk_len=64,
        dedup=True,
    )[0]


def test_lsh_memory_is_linear_in_length_full_is_quadratic():
    lsh_temp, full_temp = {}, {}
    for length in (4096, 16384):
        shape = (1, 2, length, 32)
        lsh_temp[length], hlo = _grad_temp_bytes(_lsh_sum, shape, shape)
        # No [l, l] array anywhere in the compiled forward + backward.
        assert f"{length},{length}" not in hlo
        full = functools.partial(attention.full_attention, causal=True)
        full_temp[length], hlo = _grad_temp_bytes(full, shape, shape, shape)
        assert f"{length},{length}" in hlo
    assert lsh_temp[16384] / lsh_temp[4096] <= 4.5, lsh_temp
    assert full_temp[16384] / full_temp[4096] >= 12, full_temp
    assert lsh_temp[16384] < full_temp[16384] / 20


def test_local_memory_has_no_square_array():
    shape = (1, 2, 8192, 32)
    _, hlo = _grad_temp_bytes(
        functools.partial(attention.local_attention, chunk_len=128), shape, shape, shape
    )
    assert "8192,8192" not in hlo


# ----------------------------------------------------------------- bad input


def test_bad_inputs_are_clear_errors():
    qk, v = _normal(0, (1, 2, 16, 8)), _normal(1, (1, 2, 16, 8))
    kw = dict(key=jax.random.key(0), n_hashes=2, n_buckets=4, chunk_len=8)
    with pytest.raises(ValueError, match="n_buckets"):
        attention.lsh_attention(qk, v, **{**kw, "n_buckets": 5})
    for bad in (0, -8, 2.5):
        with pytest.raises(ValueError, match="chunk_len"):
            attention.lsh_attention(qk, v, **{**kw, "chunk_len": bad})
        with pytest.raises(ValueError, match="chunk_len"):
            attention.local_attention(qk, qk, v, chunk_len=bad)
    with pytest.raises(ValueError, match="rank 4"):
        attention.lsh_attention(qk[0], v[0], **kw)
    with pytest.raises(ValueError, match="agree on"):
        attention.lsh_attention(qk, v[:, :, :8], **kw)
    with pytest.raises(ValueError, match="mask"):
        attention.lsh_attention(qk, v, mask=jnp.ones((1, 15), bool), **kw)
    with pytest.raises(ValueError, match="buckets has shape"):
        attention.lsh_attention(
            qk, v, buckets=jnp.zeros((1, 2, 3, 16), jnp.int32), **{**kw, "key": None}
        )
    with pytest.raises(ValueError, match="`key`"):
        attention.lsh_attention(qk, v, **{**kw, "key": None})
    with pytest.raises(ValueError, match="dropout_key"):
        attention.lsh_attention(qk, v, dropout_rate=0.1, **kw)
    with pytest.raises(ValueError, match="n_chunks_before"):
        attention.lsh_attention(qk, v, n_chunks_before=-1, **kw)
    with pytest.raises(ValueError, match="head dim"):
        attention.full_attention(qk, qk[..., :4], v, causal=True)
    with pytest.raises(ValueError, match="k=None"):
        attention.full_attention(qk, qk, v, causal=True, shared_qk=True)


# ------------------------------------------------------------------ memory blocks


@pytest.mark.parametrize("kind", ["lsh", "local"])
def test_chunk_blocks_equal_one_pass(kind, monkeypatch):
    # 4 hash rounds x 64 / 8 = 32 LSH chunks (8 local ones) of [2, 2, 8, 16]
    # logits each: BLOCK_ELEMENTS = 2 * 2 * 8 * 16 * 2 runs them 2 chunks at a time.
    qk, v = _normal(0, (2, 2, 64, 8)), _normal(1, (2, 2, 64, 8))
    k = _normal(2, (2, 2, 64, 8))
    ct = _normal(3, v.shape)

    def run(qk, k, v):
        if kind == "lsh":
            return attention.lsh_attention(
                qk, v, key=jax.random.key(4), n_hashes=4, n_buckets=8, chunk_len=8
            )[0]
        return attention.local_attention(qk, k, v, chunk_len=8)

    def value_and_grads():
        loss = lambda *a: jnp.sum(run(*a) * ct)
        return jax.jit(lambda *a: (run(*a), jax.grad(loss, argnums=(0, 1, 2))(*a)))(qk, k, v)

    one_pass = value_and_grads()
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 2 * 2 * 8 * 16 * 2)
    blocked = value_and_grads()
    leaves = map(jax.tree_util.tree_leaves, (blocked, one_pass))
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(a, b, **TOL)


def test_dropout_keeps_each_element_with_probability_one_minus_rate():
    x = jnp.ones((1 << 20,), jnp.float32)
    drop = jax.jit(lambda k: attention.apply_dropout(x, 0.2, k))
    a = drop(jax.random.key(0))
    np.testing.assert_array_equal(a, drop(jax.random.key(0)))  # keyed: replayable
    assert float(jnp.max(jnp.abs(a - drop(jax.random.key(1))))) > 0
    kept = np.asarray(a) > 0
    # Rate 13107 / 65536; kept values scaled by exactly 1 / P(keep).
    p_keep = 1 - 13107 / 65536
    np.testing.assert_allclose(np.asarray(a)[kept], 1 / p_keep, rtol=1e-6)
    # Binomial(2^20, p_keep): the standard deviation of the fraction is 3.9e-4.
    assert abs(kept.mean() - p_keep) < 5 * 3.9e-4, kept.mean()
