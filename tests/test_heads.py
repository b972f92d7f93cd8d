"""The encoder heads and the masked-LM corruption, against references computed another way.

Each head's output is recomputed in numpy from its parameters (LayerNorm,
pooling over the mask, the dense layers); the masked-LM loss is recomputed as
a log-softmax gathered at the selected positions; the corruption's rates are
checked against binomial tolerances on a large batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import tasks
from reformer_jax.config import RunSettings
from reformer_jax.encoders import ReformerClassifier, ReformerMLM, ReformerSpanModel
from reformer_jax.heads import ClassifierHead, LMHead, MLMHead, SpanHead
from tests.conftest import tiny_config

EPS = 1e-6


def _cfg(**kw):
    return tiny_config("lm", **{"causal": False, "n_chunks_after": 1, **kw})


def _jiggle(params, seed):
    """Every parameter moved off its initial value (LayerNorm scale 1, biases 0)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )


def _layer_norm(h, p):
    h = np.asarray(h, np.float64)
    mean = h.mean(-1, keepdims=True)
    var = ((h - mean) ** 2).mean(-1, keepdims=True)
    return (h - mean) / np.sqrt(var + EPS) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _dense(x, p):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _lengths_mask(lengths, length):
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


# ------------------------------------------------------------------ classifier


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_classifier_head_equals_numpy_pooling_over_the_mask(pooling):
    cfg = _cfg()
    head = ClassifierHead(cfg, n_classes=5, pooling=pooling)
    hidden = jax.random.normal(jax.random.key(0), (4, 24, 2 * cfg.d_model)) * 3 + 1
    mask = _lengths_mask([24, 17, 5, 1], 24)
    params = _jiggle(head.init(jax.random.key(1), hidden, mask)["params"], 2)
    got = head.apply({"params": params}, hidden, jnp.asarray(mask))

    h = _layer_norm(hidden, params["norm"])
    if pooling == "first":
        pooled = h[:, 0]
    else:  # the mean of the real positions only; what pads hold must not matter
        pooled = np.stack([h[i, mask[i]].mean(0) for i in range(4)])
    want = _dense(np.tanh(_dense(pooled, params["dense"])), params["out_proj"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Pads changed arbitrarily: the same logits.
    noisy = jnp.where(jnp.asarray(mask)[..., None], hidden, 1e3)
    np.testing.assert_allclose(head.apply({"params": params}, noisy, jnp.asarray(mask)), got, 1e-5)


def test_classifier_mean_pools_a_filler_row_to_finite_logits():
    cfg = _cfg()
    head = ClassifierHead(cfg, n_classes=3, pooling="mean")
    hidden = jax.random.normal(jax.random.key(0), (2, 8, 2 * cfg.d_model))
    mask = jnp.asarray(_lengths_mask([8, 0], 8))
    params = head.init(jax.random.key(1), hidden, mask)["params"]
    assert np.all(np.isfinite(head.apply({"params": params}, hidden, mask)))


# ------------------------------------------------------------------ span


def test_span_logits_equal_numpy_and_pads_never_win():
    cfg = _cfg()
    head = SpanHead(cfg)
    hidden = jax.random.normal(jax.random.key(0), (3, 20, 2 * cfg.d_model))
    mask = _lengths_mask([20, 9, 1], 20)
    params = _jiggle(head.init(jax.random.key(1), hidden, mask)["params"], 2)
    # Pads hold the states that would score highest: they still never win.
    start, end = head.apply({"params": params}, hidden, jnp.asarray(mask))
    want = _dense(_layer_norm(hidden, params["norm"]), params["qa_outputs"])
    for got, column in ((start, 0), (end, 1)):
        np.testing.assert_allclose(
            np.asarray(got)[mask], want[..., column][mask], rtol=1e-5, atol=1e-5
        )
        assert np.all(mask[np.arange(3), np.argmax(got, -1)])
        assert np.all(np.asarray(jax.nn.softmax(got, -1))[~mask] == 0.0)


def test_span_model_never_predicts_padding():
    cfg = _cfg()
    model = ReformerSpanModel(cfg)
    tokens = jax.random.randint(jax.random.key(0), (4, 64), 0, cfg.vocab_size)
    mask = jnp.asarray(_lengths_mask([64, 40, 13, 2], 64))
    params = _jiggle(jax.jit(model.init)(jax.random.key(1), tokens, mask=mask)["params"], 2)
    for logits in jax.jit(model.apply)({"params": params}, tokens, mask=mask):
        assert np.all(np.asarray(mask)[np.arange(4), np.argmax(logits, -1)])


# ------------------------------------------------------------------ masked LM


def test_mlm_loss_is_the_log_softmax_at_the_selected_positions():
    """The chunked loss (3 chunks of 24, the last padded) equals a direct gather."""
    cfg = _cfg()
    model = ReformerMLM(cfg, RunSettings(loss_chunk_size=24))
    tokens = jax.random.randint(jax.random.key(0), (2, 64), 0, cfg.vocab_size)
    mask = jnp.asarray(_lengths_mask([64, 50], 64))
    params = _jiggle(jax.jit(model.init)(jax.random.key(1), tokens, mask=mask)["params"], 2)
    targets = jax.random.randint(jax.random.key(3), (2, 64), 0, cfg.vocab_size)
    weights = jnp.asarray(np.random.default_rng(4).random((2, 64)) < 0.3) * mask * 1.5
    # Jitted: an eager call compiles each operation apart.
    apply = jax.jit(model.apply, static_argnames="output")
    sums = apply(
        {"params": params}, tokens, mask=mask, output="loss", targets=targets, weights=weights
    )
    hidden = apply({"params": params}, tokens, mask=mask, output="hidden")
    logp = _log_softmax(_dense(_layer_norm(hidden, params["head"]["norm"]), params["head"]))
    w, t = np.asarray(weights, np.float64), np.asarray(targets)
    picked = np.take_along_axis(logp, t[..., None], -1)[..., 0]
    np.testing.assert_allclose(sums["nll"], -(picked * w).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums["weight"], w.sum(), rtol=1e-6)
    np.testing.assert_allclose(sums["correct"], ((logp.argmax(-1) == t) * w).sum(), rtol=1e-6)
    # The model's own log-probs are the same numbers.
    np.testing.assert_allclose(
        apply({"params": params}, tokens, mask=mask), logp, rtol=1e-5, atol=1e-5
    )


def test_token_heads_keep_the_lm_head_parameter_names():
    """LMHead and MLMHead share TokenHead's parameters: head/{norm, kernel, bias}, as
    checkpoints have always held them; the encoder heads name theirs as HF does."""
    cfg = _cfg()
    h = jnp.zeros((1, 8, 2 * cfg.d_model))
    for head in (LMHead(cfg), MLMHead(cfg)):
        assert sorted(head.init(jax.random.key(0), h)["params"]) == ["bias", "kernel", "norm"]
    tokens = jnp.zeros((1, 64), jnp.int32)
    names = {
        "classifier": ReformerClassifier(cfg, 3),
        "span": ReformerSpanModel(cfg),
    }
    heads = {
        k: sorted(jax.eval_shape(m.init, jax.random.key(0), tokens)["params"]["head"])
        for k, m in names.items()
    }
    assert heads == {
        "classifier": ["dense", "norm", "out_proj"],
        "span": ["norm", "qa_outputs"],
    }


def test_encoders_refuse_a_causal_config():
    tokens = jnp.zeros((1, 64), jnp.int32)
    with pytest.raises(ValueError, match="ReformerMLM is an encoder.*causal=False"):
        ReformerMLM(_cfg(causal=True)).init(jax.random.key(0), tokens)


# ------------------------------------------------------------------ corruption


def _corrupt(seed, tokens, real, vocab, mask_id, **rates):
    kw = dict(rate=0.15, replace_mask=0.8, replace_random=0.1) | rates
    inputs, selected = jax.jit(
        lambda k: tasks.mask_tokens(
            jnp.asarray(tokens), jnp.asarray(real), k, mask_id=mask_id, vocab_size=vocab, **kw
        )
    )(jax.random.key(seed))
    return np.asarray(inputs), np.asarray(selected)


def _within(count, n, p, sigmas=5.0):
    """count ~ Binomial(n, p), within `sigmas` standard deviations."""
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


def test_mask_tokens_rates_within_binomial_tolerance_and_pads_never_selected():
    vocab, mask_id = 300, 7  # a mask id inside the range: random draws must skip it
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (64, 1024)).astype(np.int32)
    tokens[tokens == mask_id] = 8  # the data never uses the mask id
    real = _lengths_mask(rng.integers(1, 1025, 64), 1024)
    inputs, selected = _corrupt(1, tokens, real, vocab, mask_id)

    n_real, n_sel = int(real.sum()), int(selected.sum())
    assert not np.any(selected & ~real)
    assert _within(n_sel, n_real, 0.15)
    assert np.array_equal(inputs[~selected], tokens[~selected])  # unselected: untouched
    masked = selected & (inputs == mask_id)
    changed = selected & (inputs != tokens) & ~masked
    kept = selected & (inputs == tokens)
    assert _within(int(masked.sum()), n_sel, 0.8)
    # A random draw equals the original token with probability 1 / (vocab - 1).
    p_equal = 1.0 / (vocab - 1)
    assert _within(int(changed.sum()), n_sel, 0.1 * (1 - p_equal))
    assert _within(int(kept.sum()), n_sel, 0.1 + 0.1 * p_equal)
    assert np.all((inputs >= 0) & (inputs < vocab))
    # Random replacements skip the mask id, and reach ids on both sides of it.
    drawn = inputs[changed]
    assert not np.any(drawn == mask_id) and drawn.min() < mask_id < drawn.max()


def test_mask_tokens_follows_the_key_and_the_rates():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 99, (8, 256)).astype(np.int32)
    real = np.ones(tokens.shape, bool)
    a, b, c = (_corrupt(s, tokens, real, 100, 99) for s in (1, 1, 2))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    inputs, selected = _corrupt(3, tokens, real, 100, 99, rate=1.0, replace_mask=1.0)
    assert selected.all() and np.all(inputs == 99)
    inputs, selected = _corrupt(3, tokens, real, 100, 99, replace_mask=0.0, replace_random=0.0)
    assert selected.any() and np.array_equal(inputs, tokens)
