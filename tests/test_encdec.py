"""The encoder-decoder: gradients, cached decoding, memory in depth, the task's sums."""

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import decoding, sampling
from reformer_jax.config import ReformerConfig, RunSettings
from reformer_jax.encdec import ReformerEncDec
from reformer_jax.tasks import Seq2SeqTask, TaskError


def _cfg(**overrides):
    base = dict(
        vocab_size=13,
        max_len=64,
        d_model=32,
        d_ff=64,
        n_heads=2,
        d_head=16,
        n_layers=2,
        attention_kinds=("local", "full"),
        n_encoder_layers=4,
        encoder_attention_kinds=("local", "lsh"),
        cross_attention=True,
        chunk_len=8,
        local_chunk_len=8,
        n_hashes=2,
        pos_encoding="sinusoidal",
    )
    return ReformerConfig(**{**base, **overrides})


def _batch(seed, batch=2, s=24, t=16, vocab=13):
    """Random ids 2..vocab-1 with per-row lengths: padding on both sides."""
    rng = np.random.default_rng(seed)
    source = rng.integers(2, vocab, (batch, s)).astype(np.int32)
    target = rng.integers(2, vocab, (batch, t)).astype(np.int32)
    s_len = np.concatenate([[s], rng.integers(s // 2, s, batch - 1)])
    t_len = np.concatenate([[t - 5], rng.integers(t // 2, t + 1, batch - 1)])
    source_mask = np.arange(s)[None] < s_len[:, None]
    weights = (np.arange(t)[None] < t_len[:, None]).astype(np.float32)
    source[~source_mask], target[weights == 0] = 0, 0
    return source, source_mask, target, weights


def _init(cfg, source, target):
    return jax.jit(ReformerEncDec(cfg).init)(jax.random.key(0), source, target)["params"]


@pytest.mark.slow
def test_gradients_of_the_reversible_encdec_equal_plain_autodiff():
    """Through both stacks and every cross-attention half (the memory is the decoder's
    context, its cotangent flows into the encoder's custom VJP): the reversible
    model's gradients equal ordinary autodiff of the same model run as plain
    residual networks, with dropout on (same keys, so the same masks and buckets)."""
    # Two layers in each stack: an LSH and a local encoder layer, two full decoder layers
    # (two scanned groups); every kind and the cross-attention halves are crossed.
    cfg = _cfg(dropout=0.1, n_encoder_layers=2, attention_kinds=("full",))
    source, source_mask, target, weights = _batch(1)
    params = _init(cfg, source, target)

    def loss(params, rev):
        sums = ReformerEncDec(cfg.replace(reversible=rev)).apply(
            {"params": params},
            source,
            target,
            source_mask=source_mask,
            target_weights=weights,
            key=jax.random.key(5),
            deterministic=False,
            output="loss",
            label_smoothing=0.1,
        )
        return sums["objective"]

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (l_rev, g_rev), (l_ref, g_ref) = grad(params, True), grad(params, False)
    np.testing.assert_allclose(l_rev, l_ref, rtol=1e-6)
    # float32 through 4 layers of rebuilt activations (the model has no float64
    # path: LayerNorm statistics and softmaxes are float32 by design): relative
    # 1e-4 of each array's scale, as the other reversible-vs-autodiff tests.
    flat_ref = jax.tree_util.tree_leaves_with_path(g_ref)
    flat_rev = jax.tree_util.tree_leaves(g_rev)
    for (path, want), got in zip(flat_ref, flat_rev, strict=True):
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(
            got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path)
        )
    # The encoder's parameters get a gradient: the cotangent crossed the memory.
    enc = g_rev["encoder"]["blocks"]["1_shared_qk"]["attention"]["wq"]
    assert float(jnp.max(jnp.abs(enc))) > 0


@pytest.mark.parametrize("share", [True, False])
def test_cached_decoding_equals_the_full_forward(share):
    """encdec_prefill + encdec_step over the target (teacher forcing) give the log-probs of the
    training forward at every position: the memory's keys and values computed once, the
    self-attention caches as the language model's, a padded source. Separate
    embeddings put one `embed` in each stack."""
    cfg = _cfg(share_embeddings=share)
    source, source_mask, target, _ = _batch(2, t=12)
    target = np.where(target == 0, 5, target)  # a full-length target: every position compared
    params = _init(cfg, source, target)
    assert ("embed" in params) == share and ("embed" in params["decoder"]) != share
    want = ReformerEncDec(cfg).apply({"params": params}, source, target, source_mask=source_mask)
    log_probs, cache = decoding.encdec_prefill(params, cfg, source, source_mask, jax.random.key(3))
    got = [log_probs]
    step = jax.jit(decoding.encdec_step, static_argnums=1)
    for j in range(target.shape[1] - 1):
        log_probs, cache = step(params, cfg, cache, jnp.asarray(target[:, j]))
        got.append(log_probs)
    np.testing.assert_allclose(np.stack(got, 1), want, atol=2e-5)


def test_padding_changes_nothing_for_the_real_tokens():
    """A pair's log-probs do not depend on the padding of its source or target, nor on the
    other rows: each row of a padded batch equals its own unpadded run. (A fixed n_buckets:
    the paper's automatic 2L/c would follow the padded length, docs/algorithm.md.)"""
    cfg = _cfg(n_buckets=4)
    source, source_mask, target, weights = _batch(3)
    params = _init(cfg, source, target)
    model = ReformerEncDec(cfg)
    padded = model.apply(
        {"params": params}, source, target, source_mask=source_mask, target_weights=weights
    )
    for row in range(2):
        s, t = int(source_mask[row].sum()), int(weights[row].sum())
        one = (source[row : row + 1, :s], target[row : row + 1, :t])
        alone = model.apply({"params": params}, *one)
        np.testing.assert_allclose(padded[row, :t], alone[0], atol=2e-5)


def test_sums_are_the_smoothed_cross_entropy_of_the_targets():
    """The task's sums against numpy on the model's own log-probs: nll over the real target
    tokens, the label-smoothed objective (1 - eps) * nll + eps * mean(-log p), token
    accuracy, and exact match (rows all right)."""
    cfg = _cfg()
    source, source_mask, target, weights = _batch(4, batch=3, t=10)
    weights[2] = 0.0  # a filler row counts nowhere
    params = _init(cfg, source, target)
    model = ReformerEncDec(cfg)
    # The same key as the task's calls below: the encoder's LSH hashes with it.
    lp = np.asarray(
        model.apply(
            {"params": params},
            source,
            target,
            source_mask=source_mask,
            target_weights=weights,
            key=jax.random.key(1),
        ),
        np.float64,
    )
    pick = np.take_along_axis(lp, target[..., None], -1)[..., 0]
    right = lp.argmax(-1) == target
    batch = {
        "source": source,
        "source_mask": source_mask,
        "target": target,
        "target_weights": weights,
    }
    task = Seq2SeqTask(label_smoothing=0.2)
    train_sums = task.loss_sums(model, params, batch, jax.random.key(1), deterministic=False)
    eval_sums = task.loss_sums(model, params, batch, jax.random.key(1), deterministic=True)
    np.testing.assert_allclose(eval_sums["nll"], -(pick * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(eval_sums["correct"], (right * weights).sum())
    np.testing.assert_allclose(eval_sums["weight"], weights.sum())
    smoothed = 0.8 * -pick + 0.2 * -lp.mean(-1)
    np.testing.assert_allclose(train_sums["objective"], (smoothed * weights).sum(), rtol=1e-5)
    assert "objective" not in eval_sums  # evaluation reports the plain cross-entropy
    exact = [bool(np.all(right[r][weights[r] > 0])) for r in range(2)]
    assert float(eval_sums["exact"]) == sum(exact) and float(eval_sums["rows"]) == 2
    metrics = task.summarize({k: float(v) for k, v in eval_sums.items()})
    assert metrics["exact_match"] == sum(exact) / 2


def test_task_refuses_a_config_without_cross_attention():
    with pytest.raises(TaskError, match="cross_attention = True"):
        Seq2SeqTask().check(_cfg(cross_attention=False))
    with pytest.raises(TaskError, match="label_smoothing"):
        Seq2SeqTask(label_smoothing=1.0)


@pytest.mark.slow
def test_step_memory_is_flat_in_the_depth_of_both_stacks():
    """Reversible encoder and decoder keep no activations: 4 and 24 layers in each stack
    need the same compiled temporaries (XLA's memory analysis, deterministic)."""
    length = 512

    def temp_bytes(n_layers):
        cfg = _cfg(
            max_len=length,
            n_layers=n_layers,
            n_encoder_layers=n_layers,
            chunk_len=64,
            local_chunk_len=64,
            attention_kinds=("local", "lsh"),
        )
        model = ReformerEncDec(cfg, RunSettings(ff_chunk_size=256, loss_chunk_size=256))
        ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
        mask = jax.ShapeDtypeStruct((1, length), bool)
        small = jnp.zeros((1, 64), jnp.int32)
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), small, small))

        def loss(p, s, m, t):
            sums = model.apply(p, s, t, source_mask=m, key=jax.random.key(1), output="loss")
            return sums["nll"]

        compiled = jax.jit(jax.grad(loss)).lower(params, ids, mask, ids).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    four, twenty_four = temp_bytes(4), temp_bytes(24)
    assert twenty_four <= 1.1 * four, (four, twenty_four)


def _exhaustive(model, params, source, source_mask, vocab, max_len, alpha, eos=1):
    """Every target of 1..max_len ids (ending at its first EOS, or at max_len), scored by the
    model's full forward (not the cache) with GNMT's penalty in float64, best first."""
    hyps = [
        seq
        for n in range(1, max_len + 1)
        for seq in itertools.product(range(vocab), repeat=n)
        if eos not in seq[:-1] and (n == max_len or seq[-1] == eos)
    ]
    padded = np.array([list(h) + [0] * (max_len - len(h)) for h in hyps], np.int32)
    lp = model.apply(
        {"params": params},
        np.repeat(source, len(hyps), 0),
        padded,
        source_mask=np.repeat(source_mask, len(hyps), 0),
    )
    picked = np.take_along_axis(np.asarray(lp, np.float64), padded[..., None], -1)[..., 0]
    scored = []
    for i, h in enumerate(hyps):
        total = picked[i, : len(h)].sum()
        scored.append((total / ((5 + len(h)) / 6) ** alpha, h))
    return sorted(scored, key=lambda x: -x[0])


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_translate_beam_equals_exhaustive_search(alpha):
    """With the beam at least the number of hypotheses, beam search over the cached decoder
    returns every hypothesis ranked exactly as an exhaustive search scored by the training
    forward; greedy `translate` is the best's first ids when the beam is 1 and nothing ends."""
    cfg = _cfg(vocab_size=5, attention_kinds=("full",), n_layers=2)
    source, source_mask, _, _ = _batch(6, t=4, vocab=5)
    params = _init(cfg, source, source[:, :4])
    # Sharper distributions than a fresh init's near-uniform ones: distinct rankings.
    params = jax.tree_util.tree_map(lambda x: 3 * x, params)
    model = ReformerEncDec(cfg)
    max_len = 3  # EOS alone, 4 x EOS, 4 x 4 x 5 three-id targets: 85 hypotheses
    result = sampling.translate_beam(
        params,
        cfg,
        source,
        jax.random.key(2),
        source_mask=source_mask,
        beam_size=88,  # 3 slots more than hypotheses: they stay empty
        num_tokens=max_len,
        length_penalty=alpha,
    )
    for row in range(2):
        want = _exhaustive(
            model, params, source[row : row + 1], source_mask[row : row + 1], 5, 3, alpha
        )
        got_scores = np.asarray(result.scores[row])
        assert len(want) == 85 and np.all(np.isneginf(got_scores[85:]))
        np.testing.assert_allclose(got_scores[:85], [s for s, _ in want], rtol=1e-5, atol=1e-6)
        best_len = int(result.lengths[row, 0])
        assert tuple(np.asarray(result.ids[row, 0, :best_len])) == want[0][1]
    greedy = sampling.translate(
        params,
        cfg,
        source,
        jax.random.key(2),
        source_mask=source_mask,
        num_tokens=3,
        greedy=True,
        eos_id=None,
    )
    one = sampling.translate_beam(
        params,
        cfg,
        source,
        jax.random.key(2),
        source_mask=source_mask,
        beam_size=1,
        num_tokens=3,
        eos_id=None,
    )
    np.testing.assert_array_equal(greedy, one.ids[:, 0])


def test_translate_pads_after_eos_and_checks_its_input():
    cfg = _cfg(vocab_size=5, attention_kinds=("full",), n_layers=2)
    source, source_mask, _, _ = _batch(7, t=4, vocab=5)
    params = _init(cfg, source, source[:, :4])
    ids = np.asarray(
        sampling.translate(params, cfg, source, jax.random.key(0), num_tokens=12, temperature=2.0)
    )
    for row in ids:
        ends = np.flatnonzero(row == 1)
        if len(ends):
            assert np.all(row[ends[0] + 1 :] == 0)
    with pytest.raises(ValueError, match="source ids must lie in 0..4"):
        sampling.translate(params, cfg, source + 5, jax.random.key(0), num_tokens=4)
    with pytest.raises(ValueError, match="exceeds the model's max_len 64"):
        sampling.translate(params, cfg, source, jax.random.key(0), num_tokens=65)


@pytest.mark.slow
def test_sample_command_translates_text_ids_and_files(tmp_path):
    """`python -m reformer_jax.sample --source/--source_file/--source_ids` on an encoder-decoder
    workdir with a SentencePiece vocabulary: each printed target is `sampling.translate`'s (or
    the best beam's) ids for the encoded source + EOS, decoded with the run's vocabulary."""
    from reformer_jax import checkpoints, sample
    from reformer_jax.data import tokenizers
    from tests import inprocess

    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefgh"), rng.integers(1, 5))) for _ in range(300)]
    texts = [" ".join(rng.choice(words, 6)) for _ in range(200)]
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    tok = tokenizers.train_sentencepiece(
        texts, os.path.join(workdir, tokenizers.SPIECE_FILE), vocab_size=40
    )
    cfg = _cfg(vocab_size=40, attention_kinds=("full",), n_layers=2, max_len=16)
    source = np.full((1, 8), 3, np.int32)
    params = jax.tree_util.tree_map(lambda x: 2 * x, _init(cfg, source, source))
    checkpoints.save_params(workdir, cfg, params)
    with open(os.path.join(workdir, "config.gin"), "w") as f:
        f.write("train.task = @Seq2SeqTask()\ntrain.dataset_fn = @seq2seq_dataset\n")

    def want(text, beam=None):
        ids = np.append(tok.encode(text), 1)
        ids = np.pad(ids, (0, cfg.max_len - len(ids)))[None].astype(np.int32)
        kw = dict(source_mask=ids > 0, num_tokens=6)
        if beam is None:
            out = sampling.translate(params, cfg, ids, jax.random.key(0), greedy=True, **kw)
        else:
            out = sampling.translate_beam(params, cfg, ids, jax.random.key(0), beam_size=beam, **kw)
            out = out.ids[:, 0]
        row = np.asarray(out[0])
        ends = np.flatnonzero(row == 1)
        return row[: ends[0]] if len(ends) else row

    common = (f"--workdir={workdir}", "--num_tokens=6")
    result = inprocess.run(sample.main, *common, "--source", texts[0], "--greedy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == tok.decode(want(texts[0]))
    source_file = tmp_path / "sources.txt"
    source_file.write_text(f"{texts[1]}\n{texts[2]}\n")
    result = inprocess.run(
        sample.main, *common, f"--source_file={source_file}", "--beam_size=2", "--json"
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["source"] for r in records] == texts[1:3]
    for r, text in zip(records, texts[1:3], strict=True):
        assert r["ids"] == want(text, beam=2).tolist() and len(r["beams"]) == 2
    ids = ",".join(map(str, tok.encode(texts[3])))
    result = inprocess.run(sample.main, *common, f"--source_ids={ids}", "--greedy")
    assert result.stdout.strip() == tok.decode(want(texts[3]))
    result = inprocess.run(sample.main, *common, "--prompt_ids=3")
    assert result.returncode == 2 and "encoder-decoder: give --source" in result.last_line
