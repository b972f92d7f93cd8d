"""The fused window-attention kernel (reformer_jax/kernels) against the jnp path.

The kernel runs in Pallas's interpret mode here (any backend); the GPU's
Triton lowering is checked by exporting whole training steps for CUDA.
"""

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from reformer_jax import attention, cli, profiling
from reformer_jax.config import RunSettings
from reformer_jax.kernels import programs, window
from reformer_jax.model import ReformerLM
from tests.conftest import tiny_config

TRITON = "__gpu$xla.gpu.triton"
CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


def _normal(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def _close(got, want, tol, what):
    """|got - want| <= tol * max|want|, elementwise."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = float(np.max(np.abs(want)))
    assert scale > 0, what
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale, err_msg=what)


def _chunk_inputs(seed, b, h, u, c, d, lsh_like):
    """Random chunked q, k, v, positions and validity as `_attend` takes them."""
    ks = jax.random.split(jax.random.key(seed), 6)
    q, k, v = (_normal(ks[i], (b, h, u, c, d)) for i in range(3))
    if lsh_like:  # sorted slots: every (b, h) row holds a permutation of positions
        pos = jax.vmap(lambda kk: jax.random.permutation(kk, u * c))(jax.random.split(ks[3], b * h))
        pos = pos.reshape(b, h, u, c).astype(jnp.int32)
        valid = jax.random.bernoulli(ks[4], 0.85, (b, h, u, c))
    else:
        pos = jnp.arange(u * c, dtype=jnp.int32).reshape(1, 1, u, c)
        valid = jax.random.bernoulli(ks[4], 0.85, (b, 1, u, c))
    return q, k, v, pos, valid, ks[5]


def _loss_of(fn):
    """A scalar that weighs every output and log-sum-exp differently (nonzero cotangents)."""

    def loss(*args):
        out, lse = fn(*args)
        return jnp.sum(jnp.sin(out.astype(jnp.float32))) + jnp.sum(jnp.cos(lse / 7.0))

    return loss


# wrap None: local attention (no wrap-around); an int: LSH's sorted order; an
# array: LSH with a padding mask (a window narrowed per example).
CASES = [
    pytest.param(None, 1, 0, True, False, False, "whole", id="local-causal"),
    pytest.param(None, 2, 1, False, False, False, "small", id="local-before2-after1-blocks"),
    pytest.param(5, 1, 0, True, True, False, "whole", id="lsh-causal-shared"),
    pytest.param(6, 1, 1, False, True, True, "small", id="lsh-bidirectional-dedup-bias-blocks"),
    pytest.param(np.array([2, 6]), 1, 1, True, True, False, "whole", id="lsh-per-example-wrap"),
]

# The kernels walk a chunk in blocks of queries and keys (`window.block_sizes`),
# smaller than the chunk only for long chunks or wide heads; SMALL_BLOCKS makes
# these 16-long chunks take 2 forward query blocks, 4 key blocks and 4 backward
# query blocks.
SMALL_BLOCKS = lambda c, d: (8, 4, 4)


@pytest.mark.parametrize("wrap,before,after,causal,shared,with_bias,blocks", CASES)
def test_kernel_equals_jnp_window_attention(
    wrap, before, after, causal, shared, with_bias, blocks, monkeypatch
):
    if blocks == "small":
        monkeypatch.setattr(window, "block_sizes", SMALL_BLOCKS)
    b, h, u, c, d = 2, 2, 6, 16, 16
    q, k, v, pos, valid, key = _chunk_inputs(0, b, h, u, c, d, lsh_like=wrap is not None)
    n_win = before + 1 + after
    bias = -jnp.log1p(jax.random.uniform(key, (b, h, u, c, n_win * c)) * 3) if with_bias else None

    def run(impl):
        def fn(q, k, v):
            return attention._attend(
                q,
                None if shared else k,
                v,
                pos,
                pos,
                valid,
                before=before,
                after=after,
                wrap=None if wrap is None else (wrap if np.ndim(wrap) == 0 else jnp.asarray(wrap)),
                causal=causal,
                self_penalty=shared,
                bias=bias,
                impl=impl,
            )

        return jax.jit(fn)

    want, got = run("xla")(q, k, v), run("interpret")(q, k, v)
    for name, g, w in zip(("out", "lse"), got, want, strict=True):
        _close(g, w, 1e-6, name)
    grads = [
        jax.jit(jax.grad(_loss_of(run(i)), argnums=(0, 1, 2)))(q, k, v)
        for i in ("xla", "interpret")
    ]
    for name, w, g in zip("qkv", *grads, strict=True):
        if shared and name == "k":  # k unused: the keys are the normalised queries
            continue
        # Float32 sums of ~100 products in a different order: ~1e-6 relative measured.
        _close(g, w, 1e-5, f"d{name}")


def test_lsh_attention_with_the_kernel_equals_jnp():
    """Odd length (padded inside), a padding mask, 2 rounds, dedup, bidirectional (an
    encoder's layer; causal windows are in the tests above): outputs and gradients."""
    causal = False
    b, h, length, d = 2, 2, 77, 16
    ks = jax.random.split(jax.random.key(1), 4)
    qk, v = _normal(ks[0], (b, h, length, d)), _normal(ks[1], (b, h, length, d))
    mask = jnp.arange(length)[None] < jnp.array([[length], [50]])
    kw = dict(
        key=ks[2], n_hashes=2, n_buckets=4, chunk_len=16, causal=causal, dedup=True, mask=mask
    )
    kw["n_chunks_after"] = 0 if causal else 1

    def run(impl):
        return jax.jit(lambda qk, v: attention.lsh_attention(qk, v, impl=impl, **kw)[0])

    real = mask[:, None, :, None]  # padding positions' outputs are not compared
    _close(
        jnp.where(real, run("interpret")(qk, v), 0),
        jnp.where(real, run("xla")(qk, v), 0),
        1e-6,
        "out",
    )

    def loss(impl):
        return lambda qk, v: jnp.sum(jnp.where(real, jnp.sin(run(impl)(qk, v)), 0.0))

    want = jax.jit(jax.grad(loss("xla"), argnums=(0, 1)))(qk, v)
    got = jax.jit(jax.grad(loss("interpret"), argnums=(0, 1)))(qk, v)
    for name, g, w in zip(("dqk", "dv"), got, want, strict=True):
        _close(g, w, 1e-5, name)


def test_local_attention_with_the_kernel_equals_jnp():
    b, h, length, d = 2, 2, 45, 32
    ks = jax.random.split(jax.random.key(2), 3)
    q, k, v = (_normal(ks[i], (b, h, length, d)) for i in range(3))
    mask = jnp.arange(length)[None] < jnp.array([[length], [30]])
    kw = dict(chunk_len=16, causal=False, n_chunks_before=1, n_chunks_after=1, mask=mask)

    def loss(impl):
        return lambda q, k, v: jnp.sum(
            jnp.sin(attention.local_attention(q, k, v, impl=impl, **kw)) * mask[:, None, :, None]
        )

    want = jax.jit(jax.value_and_grad(loss("xla"), argnums=(0, 1, 2)))(q, k, v)
    got = jax.jit(jax.value_and_grad(loss("interpret"), argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for name, g, w in zip("qkv", got[1], want[1], strict=True):
        _close(g, w, 1e-5, f"d{name}")


def test_kernel_in_bfloat16_is_as_accurate_as_the_jnp_path():
    """bfloat16 inputs: both paths round q.k and p.v operands to 8 bits of mantissa,
    so neither equals float32; the kernel's error against the float32 result must
    stay within twice the jnp path's own (it accumulates in float32 too)."""
    b, h, u, c, d = 2, 2, 6, 16, 32
    q, k, v, pos, valid, _ = _chunk_inputs(3, b, h, u, c, d, lsh_like=True)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def run(impl, dtype):
        cast = lambda x: x.astype(dtype)
        out, lse = attention._attend(
            cast(q),
            None,
            cast(v),
            pos,
            pos,
            valid,
            before=1,
            after=0,
            wrap=6,
            causal=True,
            self_penalty=True,
            impl=impl,
        )
        return out.astype(jnp.float32), lse

    exact = run("xla", jnp.float32)
    for i, name in enumerate(("out", "lse")):
        err_jnp = float(jnp.max(jnp.abs(run("xla", jnp.bfloat16)[i] - exact[i])))
        err_kernel = float(jnp.max(jnp.abs(run("interpret", jnp.bfloat16)[i] - exact[i])))
        assert 0 < err_jnp < 0.1
        assert err_kernel <= 2 * err_jnp, (name, err_kernel, err_jnp)


def _dropout_reference(q, k, v, pos, valid, windows, ok, rate, seed):
    """The kernel's attention with dropout, written as plain jnp over whole windows."""
    b, h, u, c, d = q.shape
    n_win = windows.shape[-1]
    threshold = min(round(rate * 2**16), 2**16 - 1)
    take = lambda x: jnp.take(x, windows[0], axis=2)  # [b, h, u, n_win, c, ...]
    win_k = take(k).reshape(b, h, u, n_win * c, d)
    win_v = take(v).reshape(b, h, u, n_win * c, -1)
    k_pos = take(jnp.broadcast_to(pos, (b, h, u, c))).reshape(b, h, u, n_win * c)
    k_ok = take(jnp.broadcast_to(valid, (b, h, u, c))) & ok[0][None, None, :, :, None]
    k_ok = k_ok.reshape(b, h, u, n_win * c)
    logits = jnp.einsum("bhucd,bhuwd->bhucw", q, win_k)
    admissible = k_ok[..., None, :] & (k_pos[..., None, :] <= pos[..., :, None])
    logits = logits + jnp.where(admissible, 0.0, -programs.MASK_PENALTY)
    probs = jax.nn.softmax(logits, axis=-1)
    rows = jnp.arange(b * h * u * c, dtype=jnp.uint32).reshape(b, h, u, c)[..., None]
    cols = jnp.arange(n_win * c, dtype=jnp.uint32)
    keep = programs.dropout_keep(seed[0], seed[1], rows, cols, threshold)
    probs = jnp.where(keep, probs * 2**16 / (2**16 - threshold), 0.0)
    return jnp.einsum("bhucw,bhuwe->bhuce", probs, win_v), keep


def test_kernel_dropout_equals_a_plain_reference_and_replays(monkeypatch):
    monkeypatch.setattr(window, "block_sizes", SMALL_BLOCKS)  # masks drawn block by block
    b, h, u, c, d = 2, 2, 4, 16, 16
    q, k, v, pos, valid, key = _chunk_inputs(4, b, h, u, c, d, lsh_like=False)
    windows, ok = window.window_table(u, 1, 1, None)
    rate = 0.2
    seed = jax.random.bits(key, (2,), jnp.uint32)

    @jax.jit
    def kernel(q, k, v):
        out, _ = window.chunk_attention(
            q,
            k,
            v,
            pos,
            pos,
            valid,
            windows,
            ok,
            causal=True,
            self_penalty=False,
            dropout_rate=rate,
            dropout_key=key,
            interpret=True,
        )
        return out

    reference = jax.jit(
        lambda q, k, v: _dropout_reference(q, k, v, pos, valid, windows, ok, rate, seed)[0]
    )
    _close(kernel(q, k, v), reference(q, k, v), 1e-6, "out")
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))
    want = jax.jit(jax.grad(loss(reference), argnums=(0, 1, 2)))(q, k, v)
    got = jax.jit(jax.grad(loss(kernel), argnums=(0, 1, 2)))(q, k, v)
    for name, g, w in zip("qkv", got, want, strict=True):
        _close(g, w, 1e-5, f"d{name}")
    # The rate: kept / all over 3072 draws; 5 standard deviations is 0.036.
    keep = _dropout_reference(q, k, v, pos, valid, windows, ok, rate, seed)[1]
    assert abs(float(jnp.mean(keep)) - (1 - rate)) < 0.036
    # Another key draws another mask.
    other = _dropout_reference(q, k, v, pos, valid, windows, ok, rate, seed + 1)[1]
    assert float(jnp.mean(keep != other)) > 0.2


def _two_layer_cfg(**kw):
    return tiny_config("reversible", **{"n_layers": 2, **kw})


def test_reversible_model_with_the_kernel():
    """The kernel in a reversible model: without dropout its loss equals the jnp path's;
    with dropout, reversible gradients (the backward pass replays each layer's kernel
    with its key and buckets) equal plain autodiff."""
    # One LSH layer (the local kind's plumbing is checked by the CUDA export below);
    # 16-long chunks: fewer, larger programs, faster interpreted.
    cfg = _two_layer_cfg(n_layers=1, attention_kinds=("lsh",), chunk_len=16, n_hashes=2)
    tokens = jax.random.randint(jax.random.key(0), (2, 96), 0, cfg.vocab_size)
    weights = jax.random.uniform(jax.random.key(1), (2, 96))
    params = jax.jit(ReformerLM(cfg).init)(jax.random.key(2), tokens)["params"]

    def loss(params, impl, rev, deterministic):
        run = RunSettings(attention_impl=impl)
        sums = ReformerLM(cfg.replace(reversible=rev), run).apply(
            {"params": params},
            tokens,
            key=jax.random.key(3),
            deterministic=deterministic,
            weights=weights,
            output="loss",
        )
        return sums["nll"] / sums["weight"]

    plain = jax.jit(loss, static_argnums=(1, 2, 3))
    np.testing.assert_allclose(
        plain(params, "interpret", True, True), plain(params, "xla", True, True), rtol=1e-6
    )
    grad = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2, 3))
    l_rev, g_rev = grad(params, "interpret", True, False)
    l_ref, g_ref = grad(params, "interpret", False, False)
    np.testing.assert_allclose(l_rev, l_ref, rtol=1e-6)
    for (path, want), got in zip(
        jax.tree_util.tree_leaves_with_path(g_ref), jax.tree_util.tree_leaves(g_rev), strict=True
    ):
        # Float32 through a reconstructed layer: ~1e-6 relative measured.
        _close(got, want, 1e-5, jax.tree_util.keystr(path))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_step_with_the_kernel_lowers_for_cuda(dtype):
    """The whole step (forward, reversible backward, optimizer) exported for CUDA on this
    CPU machine: Pallas lowers the kernels to Triton here, so a lowering error shows up
    without a GPU. Each LSH or local layer runs the forward kernel twice (the forward,
    the backward pass's replay) and the two backward kernels (dq; dk and dv) once."""
    cfg = _two_layer_cfg(dtype=dtype, chunk_len=16)
    setup = profiling.train_setup(
        cfg, batch_size=2, seq_len=96, abstract=True, run=RunSettings(attention_impl="pallas")
    )
    exported = export.export(
        setup.fn,
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON)],
    )(setup.state, setup.batch)
    text = exported.mlir_module()
    assert text.count(f"@{TRITON}(") == 4 * cfg.n_layers
    for name in ("chunk_attention_fwd", "chunk_attention_bwd_dq", "chunk_attention_bwd_dkv"):
        assert name in text


@pytest.mark.parametrize("gin_file", ["enwik8.gin", "imagenet64.gin", "long_1m.gin"])
def test_shipped_configs_lower_for_cuda_with_the_kernel(gin_file):
    """The paper-size steps with the kernel: 256-long chunks of 128-dim heads (enwik8)
    run in query and key blocks (`window.block_sizes`), which the small tests above
    do not reach at their default sizes."""
    cli.parse_gin([str(CONFIGS / gin_file)], [])
    cfg = cli.model_config()
    run = dataclasses.replace(cli.run_settings(), attention_impl="pallas")
    setup = profiling.train_setup(cfg, batch_size=1, seq_len=cfg.max_len, abstract=True, run=run)
    exported = export.export(
        setup.fn,
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON)],
    )(setup.state, setup.batch)
    assert "chunk_attention_bwd_dkv" in exported.mlir_module()


def test_implementation_choice():
    assert window.resolve_impl("auto", 64, 64, 64) == (
        "pallas" if jax.default_backend() == "gpu" else "xla"
    )
    assert window.resolve_impl("auto", 48, 64, 64) == "xla"  # not a power of two
    assert window.resolve_impl("interpret", 5, 3, 3) == "interpret"  # any size
    with pytest.raises(ValueError, match="chunk length is 48; the kernel needs a power of two"):
        window.resolve_impl("pallas", 48, 64, 64)
    with pytest.raises(ValueError, match="key dim is 8"):
        window.resolve_impl("pallas", 64, 8, 8)
    with pytest.raises(ValueError, match="unknown attention_impl 'triton'"):
        window.resolve_impl("triton", 64, 64, 64)
    with pytest.raises(ValueError, match="RunSettings.attention_impl must be one of"):
        RunSettings(attention_impl="gpu")
    assert window.supports(128, 64, 64) is None
    cfg = _two_layer_cfg()
    with pytest.raises(
        ValueError, match="'pallas' runs only on a GPU, and this run's backend is cpu"
    ):
        RunSettings(attention_impl="pallas").check(cfg, backend="cpu")
    RunSettings(attention_impl="pallas").check(cfg, backend="gpu")
