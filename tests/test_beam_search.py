"""Beam search (reformer_jax/beam_search.py) and its ReformerLM wrapper (sampling.beam_search).

References are computed another way: every hypothesis enumerated and scored
in float64 numpy by GNMT's formula (Wu et al. 2016, section 7), a plain
Python list beam search, the full model forward, greedy `generate`.
"""

import functools
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import beam_search, decoding, sampling
from reformer_jax.model import ReformerLM
from tests.conftest import tiny_config

# ------------------------------------------------------------------ a toy model with state

N_CONTEXTS = 97  # a prime: distinct prefixes rarely share a context


def _table(seed, vocab, eos_bias=0.0, eos_id=0):
    """Log-probs [N_CONTEXTS, vocab] of a random history-dependent toy model."""
    logits = np.random.default_rng(seed).normal(size=(N_CONTEXTS, vocab)) * 2.0
    logits[:, eos_id] += eos_bias
    return np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)), np.float64)


def _next_context(ctx, token, vocab):
    return (ctx * vocab + token + 1) % N_CONTEXTS


def _toy_search(table, contexts, **kw):
    """beam_search.search on the toy model: the state is each row's context id."""
    table, contexts = jnp.asarray(table, jnp.float32), jnp.asarray(contexts, jnp.int32)
    return jax.device_get(_toy_run(table, contexts, **kw))


@functools.partial(
    jax.jit, static_argnames=("beam_size", "max_len", "eos_id", "alpha", "early_stop")
)
def _toy_run(table, contexts, *, beam_size, max_len, eos_id, alpha, early_stop=True):
    def step(ctx, tokens):
        ctx = _next_context(ctx, tokens, table.shape[1])
        return table[ctx], ctx

    return beam_search.search(
        table[contexts],
        beam_search.tile(contexts, beam_size),
        step,
        beam_search.gather_rows,
        beam_size=beam_size,
        max_len=max_len,
        eos_id=eos_id,
        length_penalty=alpha,
        early_stop=early_stop,
    )


def _gnmt(log_prob, length, alpha):
    return log_prob / ((5.0 + length) / 6.0) ** alpha


def _enumerate(table, ctx0, *, max_len, eos_id, alpha):
    """Every hypothesis (to its first EOS, or max_len ids) as (score, ids, log P), best first."""
    vocab = table.shape[1]
    out = []
    for n in range(1, max_len + 1):
        for ids in itertools.product(range(vocab), repeat=n):
            # A hypothesis: EOS only as its last id, and EOS-free ones only at max_len.
            if eos_id in ids[:-1] or (n < max_len and ids[-1] != eos_id):
                continue
            ctx, log_prob = ctx0, 0.0
            for i, tok in enumerate(ids):
                if i:
                    ctx = _next_context(ctx, ids[i - 1], vocab)
                log_prob += table[ctx, tok]
            out.append((_gnmt(log_prob, n, alpha), list(ids), log_prob))
    return sorted(out, key=lambda h: -h[0])


def _python_beam(table, ctx0, *, beam_size, max_len, eos_id, alpha):
    """A plain list beam search with the same rule: the 2k best extensions by log P."""
    vocab, k = table.shape[1], beam_size
    alive, finished = [([], 0.0, ctx0)], []
    for n in range(1, max_len + 1):
        ext = []
        for ids, lp, ctx in alive:
            c = _next_context(ctx, ids[-1], vocab) if ids else ctx
            ext += [(ids + [tok], lp + table[c, tok], c) for tok in range(vocab)]
        ext = sorted(ext, key=lambda e: -e[1])[: 2 * k]
        finished += [
            (_gnmt(lp, n, alpha), ids, lp)
            for ids, lp, _ in ext
            if ids[-1] == eos_id or n == max_len
        ]
        finished = sorted(finished, key=lambda h: -h[0])[:k]
        alive = [e for e in ext if e[0][-1] != eos_id][:k]
    return finished


def _check_against(result, example, expected, max_len):
    n = len(expected)
    np.testing.assert_allclose(
        result.scores[example, :n], [h[0] for h in expected], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        result.log_probs[example, :n], [h[2] for h in expected], rtol=1e-5, atol=1e-5
    )
    for j, (_, ids, _) in enumerate(expected):
        assert result.lengths[example, j] == len(ids)
        padded = ids + [0] * (max_len - len(ids))
        assert result.ids[example, j].tolist() == padded, (example, j)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, -0.5])
@pytest.mark.parametrize("vocab,max_len", [(4, 3), (3, 4)])
def test_a_beam_as_wide_as_every_hypothesis_finds_them_all_in_order(alpha, vocab, max_len):
    # With beam_size >= the number of hypotheses nothing is ever pruned: the
    # finished list is the exhaustive ranking, scored in float64 here; the
    # slots beyond it stay empty (-inf, length 0).
    eos_id = 1
    for seed in range(3):
        table = _table(seed, vocab, eos_id=eos_id)
        contexts = [3, 41, 77]
        every = [
            _enumerate(table, c, max_len=max_len, eos_id=eos_id, alpha=alpha) for c in contexts
        ]
        n = len(every[0])  # 40 for (4, 3); 31 for (3, 4)
        result = _toy_search(
            table, contexts, beam_size=n + 2, max_len=max_len, eos_id=eos_id, alpha=alpha
        )
        for e, expected in enumerate(every):
            _check_against(result, e, expected, max_len)
            assert np.all(result.scores[e, n:] == -np.inf)
            assert np.all(result.lengths[e, n:] == 0)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("beam_size", [1, 2, 3])
def test_a_narrow_beam_matches_a_plain_python_beam_search(alpha, beam_size):
    vocab, max_len, eos_id = 6, 6, 2
    for seed in range(3):
        table = _table(seed + 10, vocab, eos_bias=0.5, eos_id=eos_id)
        contexts = [5, 18]
        result = _toy_search(
            table, contexts, beam_size=beam_size, max_len=max_len, eos_id=eos_id, alpha=alpha
        )
        for e, c in enumerate(contexts):
            expected = _python_beam(
                table, c, beam_size=beam_size, max_len=max_len, eos_id=eos_id, alpha=alpha
            )
            assert len(expected) == beam_size
            _check_against(result, e, expected, max_len)


def test_without_eos_every_hypothesis_runs_to_max_len_and_beam_1_is_greedy():
    table = _table(7, 5)
    result = _toy_search(table, [9], beam_size=1, max_len=6, eos_id=None, alpha=0.6)
    ctx, ids = 9, []
    for i in range(6):
        if i:
            ctx = _next_context(ctx, ids[-1], 5)
        ids.append(int(np.argmax(table[ctx])))
    assert result.ids[0, 0].tolist() == ids
    assert result.lengths[0, 0] == 6 and int(result.steps) == 6


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, -0.5])
def test_early_stop_stops_early_and_never_changes_the_answer(alpha):
    # A likely EOS fills every example's finished set within a few tokens of
    # max_len = 12; the loop must then stop, with the answer of the full run.
    vocab, max_len, eos_id, k = 5, 12, 0, 3
    stopped_early = 0
    for seed in range(6):
        table = _table(seed + 20, vocab, eos_bias=1.5 + seed % 3, eos_id=eos_id)
        kw = dict(beam_size=k, max_len=max_len, eos_id=eos_id, alpha=alpha)
        fast = _toy_search(table, [1, 2, 60], **kw)
        full = _toy_search(table, [1, 2, 60], early_stop=False, **kw)
        assert int(full.steps) == max_len
        assert int(fast.steps) <= max_len
        stopped_early += int(fast.steps) < max_len
        np.testing.assert_array_equal(fast.ids, full.ids)
        np.testing.assert_array_equal(fast.lengths, full.lengths)
        np.testing.assert_array_equal(fast.scores, full.scores)
    assert stopped_early >= 4, stopped_early


def test_tile_and_gather_rows_order_beams_after_their_example():
    x = {"a": jnp.arange(6).reshape(2, 3), "b": jnp.arange(4).reshape(1, 2, 2)}
    tiled = beam_search.tile(x, 2)
    assert tiled["a"][:, 0].tolist() == [0, 0, 3, 3]
    tiled = beam_search.tile(x, 3, axis=1)
    assert tiled["b"][0, :, 0].tolist() == [0, 0, 0, 2, 2, 2]
    picked = beam_search.gather_rows(x, jnp.array([1, 1, 0]))
    assert picked["a"][:, 0].tolist() == [3, 3, 0]


# ------------------------------------------------------------------ ReformerLM

VOCAB, NUM_TOKENS, EOS = 5, 3, 2
N_HYPOTHESES = 1 + 4 + 16 + 64  # EOS at 1, 2, 3 and EOS-free triples


def _init(cfg, seed=0):
    model = ReformerLM(cfg)
    init = jax.jit(model.init)
    return model, init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]


def _all_hypotheses():
    """Every hypothesis of VOCAB ids up to NUM_TOKENS long: (ids, length), ids padded with 0."""
    out = []
    for n in range(1, NUM_TOKENS + 1):
        for ids in itertools.product(range(VOCAB), repeat=n):
            if EOS in ids[:-1] or (n < NUM_TOKENS and ids[-1] != EOS):
                continue
            out.append((list(ids) + [0] * (NUM_TOKENS - n), n))
    assert len(out) == N_HYPOTHESES
    return out


def _check_lm(result, log_p, alpha):
    """result's ranking against log P [b, N_HYPOTHESES] of _all_hypotheses, scored here."""
    hyps = _all_hypotheses()
    lengths = np.array([n for _, n in hyps])
    for e in range(log_p.shape[0]):
        scores = _gnmt(np.float64(log_p[e]), lengths, alpha)
        order = np.argsort(-scores)
        np.testing.assert_allclose(result.scores[e], scores[order], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(result.log_probs[e], log_p[e][order], rtol=1e-5, atol=1e-5)
        gaps = np.diff(scores[order])
        for j, h in enumerate(order):
            # ids are only defined where the ranking is not a float32 near-tie
            if (j == 0 or gaps[j - 1] < -1e-4) and (j == len(order) - 1 or gaps[j] < -1e-4):
                assert result.ids[e, j].tolist() == hyps[h][0], (e, j)
                assert result.lengths[e, j] == hyps[h][1]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_lm_beam_search_ranks_every_hypothesis_as_the_full_forward_does(alpha):
    # Exact-decoding kinds (local, full, shared-QK full): the full forward of
    # prompt + hypothesis, one pass and no cache, scores each hypothesis.
    cfg = tiny_config("decoding", vocab_size=VOCAB)
    model, params = _init(cfg, seed=1)
    prompt = jax.random.randint(jax.random.key(3), (2, 5), 0, VOCAB)
    result = sampling.beam_search(
        params,
        cfg,
        prompt,
        jax.random.key(0),
        beam_size=N_HYPOTHESES,
        num_tokens=NUM_TOKENS,
        eos_id=EOS,
        length_penalty=alpha,
    )
    result = jax.device_get(result)
    hyps = _all_hypotheses()
    ids = np.array([h for h, _ in hyps])  # [n, t]
    lengths = np.array([n for _, n in hyps])
    log_p = []
    forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens))  # compiled once
    for e in range(2):
        tokens = np.concatenate([np.repeat(np.asarray(prompt[e : e + 1]), len(hyps), 0), ids], 1)
        out = np.asarray(forward(jnp.asarray(tokens)), np.float64)
        p = prompt.shape[1]
        per_token = np.take_along_axis(out[:, p:], ids[:, :, None], axis=2)[:, :, 0]  # [n, t]
        log_p.append(np.where(np.arange(NUM_TOKENS) < lengths[:, None], per_token, 0).sum(1))
    _check_lm(result, np.array(log_p), alpha)


def test_lm_beams_of_an_example_share_its_lsh_rotations():
    # LSH draws rotations per sample; every beam of example e must hash with
    # example e's. The reference teacher-forces each hypothesis through
    # cached decoding from example e's own prefill rows (picked here by index).
    # The prompt outgrows one decode window (16 slots), so the buckets matter.
    cfg = tiny_config("lm", vocab_size=VOCAB)
    _, params = _init(cfg, seed=2)
    prompt = jax.random.randint(jax.random.key(4), (2, 30), 0, VOCAB)
    key = jax.random.key(5)
    result = jax.device_get(
        sampling.beam_search(
            params,
            cfg,
            prompt,
            key,
            beam_size=N_HYPOTHESES,
            num_tokens=NUM_TOKENS,
            eos_id=EOS,
            length_penalty=0.6,
        )
    )
    hyps = _all_hypotheses()
    ids = jnp.array([h for h, _ in hyps])
    lengths = np.array([n for _, n in hyps])
    first, cache = decoding.prefill(params, cfg, prompt, jax.random.split(key)[0])
    log_p = []
    for e in range(2):
        pick = lambda x, e=e: x[:, jnp.full((len(hyps),), e)]  # batch axis 1: [g, b, ...]
        c = cache.replace(layers=jax.tree_util.tree_map(pick, cache.layers))
        lp, per_token = jnp.broadcast_to(first[e], (len(hyps), VOCAB)), []
        for i in range(NUM_TOKENS):
            per_token.append(np.asarray(lp, np.float64)[np.arange(len(hyps)), ids[:, i]])
            if i + 1 < NUM_TOKENS:
                lp, c = decoding.step(params, cfg, c, ids[:, i])
        per_token = np.stack(per_token, 1)
        log_p.append(np.where(np.arange(NUM_TOKENS) < lengths[:, None], per_token, 0).sum(1))
    _check_lm(result, np.array(log_p), 0.6)


@pytest.mark.parametrize("name", ["lm", "decoding"])
def test_lm_beam_size_1_without_eos_is_greedy_generate(name):
    cfg = tiny_config(name)
    _, params = _init(cfg, seed=3)
    prompt = jax.random.randint(jax.random.key(6), (3, 25), 0, cfg.vocab_size)  # > 1 LSH window
    key = jax.random.key(7)
    greedy = sampling.generate(params, cfg, prompt, key, num_tokens=9, greedy=True)
    beam = sampling.beam_search(params, cfg, prompt, key, beam_size=1, num_tokens=9, eos_id=None)
    np.testing.assert_array_equal(beam.ids[:, 0], greedy)
    assert np.all(np.asarray(beam.lengths) == 9)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(beam_size=0), "beam_size must be a positive int"),
        (dict(eos_id=40), r"eos_id must be an id in 0\.\.39"),
        (dict(length_penalty=float("nan")), "length_penalty must be a finite number"),
        (dict(num_tokens=60), "exceeds the model's max_len"),
    ],
)
def test_lm_bad_beam_arguments_get_one_clear_line(change, match):
    kw = dict(prompt=np.ones((1, 4), np.int32), beam_size=2, num_tokens=4, eos_id=1)
    kw.update(change)
    with pytest.raises(ValueError, match=match) as info:
        sampling.beam_search({}, tiny_config("decoding"), key=jax.random.key(0), **kw)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_cli_beam_size_prints_the_best_hypothesis_and_json_all_beams(tmp_path):
    from reformer_jax import checkpoints, sample

    from .inprocess import run

    cfg = tiny_config("decoding", vocab_size=VOCAB, n_layers=3)
    _, params = _init(cfg, seed=4)
    workdir = str(tmp_path / "run")
    checkpoints.save_params(workdir, cfg, params, step=7)
    args = [f"--workdir={workdir}", "--prompt_ids=1,4,3", "--num_tokens=4", "--seed=2"]
    args += ["--beam_size=3", "--eos_id=2", "--length_penalty=1.0"]
    result = run(sample.main, *args, "--json")
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    expected = jax.device_get(
        sampling.beam_search(
            params,
            cfg,
            np.array([[1, 4, 3]]),
            jax.random.key(2),
            beam_size=3,
            num_tokens=4,
            eos_id=2,
            length_penalty=1.0,
        )
    )
    n = expected.lengths[0]
    assert [b["ids"] for b in record["beams"]] == [
        expected.ids[0, j, : n[j]].tolist() for j in range(3)
    ]
    np.testing.assert_allclose([b["score"] for b in record["beams"]], expected.scores[0])
    assert record["ids"] == record["beams"][0]["ids"]
    text = run(sample.main, *args)
    assert text.returncode == 0, text.stderr
    assert "--- sample 0: best of 3 beams, score " in text.stdout
    assert text.stdout.strip().splitlines()[-1] == ",".join(map(str, record["ids"]))
