"""Cached decoding and sampling (reformer_jax/sampling.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import attention, decoding, kinds, optim, sampling, trainer
from reformer_jax.data import synthetic
from reformer_jax.model import ReformerConfig, ReformerLM
from tests.conftest import tiny_config

from .reference import MASK, SELF, normalized_keys


def _cfg(**kw):
    return tiny_config("decoding", **kw)


def _init(cfg, seed=0):
    model = ReformerLM(cfg)
    return model, model.init(jax.random.key(seed), jnp.zeros((1, 16), jnp.int32))["params"]


def _tokens(seed, shape, vocab):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


# ------------------------------------------------------------------ cached == recompute


@pytest.mark.parametrize("prompt_len", [7, 4, 21])
def test_cached_decoding_equals_recomputing_the_prefix(prompt_len):
    # local (ring of 2 chunks of 8 = 16 slots, wrapping twice over 48
    # positions), full and full shared-QK layers, two groups of the cycle.
    # Prompt lengths: 7 (prefill fills one local chunk exactly, with the
    # shifted-in 0), 4 (a partial chunk) and 21 (the prompt alone overflows
    # the ring). All three kinds are causal, so the model's output at
    # position t over the whole sequence is the reference for step t.
    cfg = _cfg()
    model, params = _init(cfg, seed=prompt_len)
    tokens = _tokens(prompt_len + 100, (3, cfg.max_len), cfg.vocab_size)
    # [b, l, v], position t predicts t; jitted (an eager call compiles op by op)
    reference = jax.jit(model.apply)({"params": params}, tokens)
    log_probs, cache = decoding.prefill(params, cfg, tokens[:, :prompt_len], jax.random.key(0))
    np.testing.assert_allclose(log_probs, reference[:, prompt_len], rtol=1e-5, atol=1e-5)
    for t in range(prompt_len, cfg.max_len - 1):
        log_probs, cache = decoding.decode_step(params, cfg, cache, tokens[:, t])
        np.testing.assert_allclose(
            log_probs, reference[:, t + 1], rtol=1e-5, atol=1e-5, err_msg=f"step at {t + 1}"
        )
    assert int(cache.length) == cfg.max_len


@pytest.mark.slow
def test_lsh_decoding_within_one_chunk_equals_shared_qk_full_attention():
    # The whole sequence fits one LSH chunk (chunk_len = max_len): training
    # LSH attention is then full shared-QK attention, and so is decoding.
    cfg = _cfg(
        max_len=32,
        chunk_len=32,
        n_buckets=8,
        n_layers=2,
        attention_kinds=("lsh", "local"),
        axial_shape=None,
        axial_dims=None,
    )
    full = cfg.replace(attention_kinds=("full_shared", "local"))
    model, params = _init(full)
    tokens = _tokens(5, (2, cfg.max_len), cfg.vocab_size)
    reference = jax.jit(model.apply)({"params": params}, tokens)
    prompt_len = 3
    log_probs, cache = decoding.prefill(params, cfg, tokens[:, :prompt_len], jax.random.key(1))
    np.testing.assert_allclose(log_probs, reference[:, prompt_len], rtol=1e-5, atol=1e-5)
    for t in range(prompt_len, cfg.max_len - 1):
        log_probs, cache = decoding.decode_step(params, cfg, cache, tokens[:, t])
        np.testing.assert_allclose(log_probs, reference[:, t + 1], rtol=1e-5, atol=1e-5)
    buckets_seen = set(np.unique(cache.layers["0_shared_qk"]["buckets"]).tolist())
    assert len(buckets_seen) > 1  # the tokens really were hashed into several buckets


# ------------------------------------------------------------------ LSH decode step vs float64


def _lsh_decode_reference(q, k, v, buckets, pos, *, n_buckets, window, dedup):
    """The module docstring's definition, per (sample, head, round), in float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    buckets = np.asarray(buckets)
    bsz, heads, rounds, _ = buckets.shape
    out = np.zeros((bsz, heads, v.shape[-1]))
    for b in range(bsz):
        for h in range(heads):
            windows = []
            for r in range(rounds):
                mine = buckets[b, h, r, pos]
                # Cyclic order ending at the new token: own bucket last, then
                # the buckets below it, wrapping to the highest.
                order = sorted(
                    range(pos + 1), key=lambda j: ((buckets[b, h, r, j] - mine - 1) % n_buckets, j)
                )
                windows.append(order[-window:])
            outs, lses = [], []
            for r in range(rounds):
                js = np.array(windows[r])
                logits = k[b, h, js] @ q[b, h] - SELF * (js == pos)
                if dedup:
                    logits -= np.log([sum(j in w for w in windows) for j in js])
                m = logits.max()
                lse = m + np.log(np.exp(logits - m).sum())
                outs.append(np.exp(logits - lse) @ v[b, h, js])
                lses.append(lse)
            lses = np.array(lses)
            weights = np.exp(lses - lses.max())
            weights /= weights.sum()
            out[b, h] = sum(w * o for w, o in zip(weights, outs, strict=True))
    return out


@pytest.mark.parametrize("dedup", [False, True])
@pytest.mark.parametrize("pos", [5, 37])
def test_lsh_decode_step_equals_float64_reference(dedup, pos):
    bsz, heads, rounds, length, d, n_buckets, window = 2, 3, 3, 48, 8, 6, 12
    keys = jax.random.split(jax.random.key(pos + 10 * dedup), 4)
    qk = jax.random.normal(keys[0], (bsz, heads, length, d))
    v = jax.random.normal(keys[1], (bsz, heads, length, d))
    buckets = jax.random.randint(keys[2], (bsz, heads, rounds, length), 0, n_buckets)
    k = attention.normalize_keys(qk)
    q = qk[:, :, pos] * 2.0  # a query larger than unit norm, as unnormalised queries are
    out = kinds.lsh_decode_attention(
        q, k, v, buckets, jnp.int32(pos), n_buckets=n_buckets, window=window, dedup=dedup
    )
    k64 = normalized_keys(np.asarray(qk))
    expected = _lsh_decode_reference(
        q, k64, v, buckets, pos, n_buckets=n_buckets, window=window, dedup=dedup
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert MASK > SELF  # the reference's constants are training's


# ------------------------------------------------------------------ sampling controls


def _logits(seed, shape=(16, 50)):
    return 3.0 * jax.random.normal(jax.random.key(seed), shape)


def test_top_k_1_and_temperature_to_zero_equal_greedy():
    logits = _logits(0)
    greedy = sampling.sample_logits(logits, jax.random.key(0), greedy=True)
    np.testing.assert_array_equal(greedy, np.argmax(np.asarray(logits), axis=-1))
    for seed in range(5):
        key = jax.random.key(seed)
        np.testing.assert_array_equal(sampling.sample_logits(logits, key, top_k=1), greedy)
        np.testing.assert_array_equal(sampling.sample_logits(logits, key, temperature=1e-6), greedy)
    # At temperature 1 the draws do differ from the argmax somewhere.
    draws = sampling.sample_logits(logits, jax.random.key(9))
    assert np.any(np.asarray(draws) != np.asarray(greedy))


@pytest.mark.parametrize("top_p", [0.3, 0.75, 0.95])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p):
    logits = _logits(1)
    kept = np.isfinite(np.asarray(sampling.filter_logits(logits, top_p=top_p)))
    x = np.asarray(logits, np.float64)
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for row, keep in zip(probs, kept, strict=True):
        mass = row[keep].sum()
        assert mass >= top_p - 1e-6
        assert mass - row[keep].min() < top_p  # without its least likely id it falls short
        assert row[keep].min() > row[~keep].max(initial=-1.0)  # the most probable ids
    draws = sampling.sample_logits(logits, jax.random.key(3), top_p=top_p)
    assert kept[np.arange(len(kept)), np.asarray(draws)].all()


def test_top_k_keeps_the_k_largest():
    logits = _logits(2)
    kept = np.isfinite(np.asarray(sampling.filter_logits(logits, top_k=5)))
    assert (kept.sum(-1) == 5).all()
    top5 = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
    assert kept[np.arange(len(kept))[:, None], top5].all()


def test_generate_same_key_same_sample_and_ids_in_vocab():
    cfg = _cfg(vocab_size=13, n_layers=3, attention_kinds=("lsh", "local", "full"))
    _, params = _init(cfg)
    prompt = _tokens(0, (4, 5), cfg.vocab_size)
    kw = dict(num_tokens=20, temperature=2.0)
    a = sampling.generate(params, cfg, prompt, jax.random.key(1), **kw)
    b = sampling.generate(params, cfg, prompt, jax.random.key(1), **kw)
    c = sampling.generate(params, cfg, prompt, jax.random.key(2), **kw)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 20) and a.dtype == jnp.int32
    assert np.any(np.asarray(a) != np.asarray(c))
    assert 0 <= int(a.min()) and int(a.max()) < cfg.vocab_size
    # Samples of one batch differ from each other (different draws per row).
    assert len({tuple(row) for row in np.asarray(a).tolist()}) > 1


def test_a_temperature_and_top_p_sweep_compiles_once():
    cfg = _cfg(vocab_size=13, n_layers=3, attention_kinds=("lsh", "local", "full"))
    _, params = _init(cfg)
    prompt = _tokens(3, (2, 5), cfg.vocab_size)
    run = lambda **kw: np.asarray(
        sampling.generate(params, cfg, prompt, jax.random.key(4), num_tokens=12, **kw)
    )
    greedy = run(greedy=True)
    before = sampling._generate._cache_size()
    cold = [run(temperature=t, top_p=p) for t in (1e-4, 0.5) for p in (0.2, 0.9)]
    assert sampling._generate._cache_size() == before + 1  # one program for the sweep
    # The traced values are used: near T = 0 sampling is greedy; at T = 50 it is not.
    for sample in cold[:2]:
        np.testing.assert_array_equal(sample, greedy)
    assert np.any(run(temperature=50.0) != greedy)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(prompt=np.zeros((1, 45), np.int32)), "exceeds the model's max_len 48"),
        (dict(prompt=np.zeros((1, 0), np.int32)), "prompt is empty"),
        (dict(prompt=np.full((1, 3), 40, np.int32)), r"prompt ids must lie in 0\.\.39"),
        (dict(prompt=np.zeros((3,), np.int32)), r"shape \[samples, length\]"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(top_k=0), "top_k must be an int >= 1"),
        (dict(n_hashes=0), "n_hashes must be a positive int"),
        (dict(num_tokens=0), "num_tokens must be a positive int"),
    ],
)
def test_bad_input_gets_one_clear_line(change, match):
    cfg = _cfg()
    kw = dict(prompt=np.ones((1, 4), np.int32), num_tokens=4)
    kw.update(change)
    with pytest.raises(ValueError, match=match) as info:
        sampling.generate({}, cfg, key=jax.random.key(0), **kw)
    assert "\n" not in str(info.value)


def test_non_causal_model_cannot_sample():
    with pytest.raises(ValueError, match="needs a causal model"):
        sampling.generate(
            {}, _cfg(causal=False), np.ones((1, 3), np.int32), jax.random.key(0), num_tokens=2
        )


# ------------------------------------------------------------------ behaviour: the copy task


@pytest.mark.slow
def test_copy_task_model_writes_the_second_copy_by_greedy_lsh4_decoding():
    # configs/copy.gin shrunk to fit the test budget (~300 steps): the same
    # one-layer shared-QK LSH model trained with LSH-2 (d_model = d_ff = 64,
    # 4 heads), on sequences 0 w 0 w of length 64 (|w| = 31) with chunk 8 and
    # 2L/c = 16 buckets, so the two hash rounds sort into 16 chunks and a
    # query's window holds 16 of the 64 positions: the first copy must be
    # found by hashing, as in the paper's task. Then generation, not teacher
    # forcing: prompted with `0 w 0` only, the model writes w greedily with
    # LSH-4 at decode.
    length, vocab, steps = 64, 64, 300
    cfg = ReformerConfig(
        vocab_size=vocab,
        max_len=length,
        d_model=64,
        d_ff=64,
        n_heads=4,
        d_head=16,
        n_layers=1,
        attention_kinds=("lsh",),
        chunk_len=8,
        n_hashes=2,
        axial_shape=(length,),
        axial_dims=(64,),
    )
    model = ReformerLM(cfg)
    lr = optim.make_schedule("rsqrt", learning_rate=0.05, warmup_steps=50, total_steps=steps)
    opt = optim.make_optimizer("adam", schedule=lr, b1=0.9, b2=0.98, eps=1e-9)
    params = model.init(jax.random.key(0), jnp.zeros((1, length), jnp.int32))["params"]
    state = trainer.TrainState.create(params, opt)
    step = jax.jit(
        lambda s, b, k: trainer.train_step(s, b, k, model=model, optimizer=opt, schedule=lr),
        donate_argnums=0,
    )
    task = synthetic.DuplicationTask(length, vocab, 32, seed=0)
    for i in range(steps):
        state, _ = step(state, task.batch(i), jax.random.key(1))

    tokens = synthetic.DuplicationTask(length, vocab, 64, seed=99).batch(0)["tokens"]
    half = length // 2
    ids = sampling.generate(
        state.params,
        cfg,
        tokens[:, : half + 1],
        jax.random.key(2),
        num_tokens=half - 1,
        greedy=True,
        n_hashes=4,
    )
    accuracy = float(np.mean(np.asarray(ids) == tokens[:, half + 1 :]))
    assert accuracy >= 0.99, accuracy


# ------------------------------------------------------------------ the command line


def _saved_run(tmp_path, **cfg_changes):
    from reformer_jax import checkpoints

    cfg = _cfg(**{"n_layers": 2, "attention_kinds": ("local", "lsh"), **cfg_changes})
    params = ReformerLM(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    workdir = str(tmp_path / "run")
    checkpoints.save_params(workdir, cfg, params, step=7)
    return workdir, cfg, params


@pytest.mark.slow
def test_cli_text_prompt_prints_text_and_json_ids(tmp_path):
    from reformer_jax import sample

    from .inprocess import run

    workdir, cfg, params = _saved_run(tmp_path, vocab_size=258, max_len=64, axial_shape=(8, 8))
    # A byte-level run: its config names a dataset whose text is bytes + 2.
    (tmp_path / "run" / "config.gin").write_text("train.dataset_fn = @enwik8_dataset\n")
    args = [f"--workdir={workdir}", "--prompt=ab", "--num_tokens=5", "--seed=3", "--n_samples=2"]
    result = run(sample.main, *args, "--json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2 and all(len(r["ids"]) == 5 for r in records)
    # The CLI samples what the library samples: prompt "ab" = bytes + 2.
    expected = sampling.generate(
        params, cfg, np.array([[99, 100]] * 2), jax.random.key(3), num_tokens=5
    )
    assert [r["ids"] for r in records] == np.asarray(expected).tolist()
    assert all(isinstance(r["text"], str) for r in records)
    text = run(sample.main, *args)
    assert text.returncode == 0, text.stderr
    assert "--- sample 1 (checkpoint step 7) ---" in text.stdout
    assert "\nab" in text.stdout  # each sample starts with its prompt


@pytest.mark.slow
def test_cli_image_prompt_writes_a_png_grid(tmp_path):
    from PIL import Image

    from reformer_jax import sample

    from .inprocess import run

    # One local layer keeps the 12,096-token prefill cheap; the CLI path is what is tested.
    workdir, _, _ = _saved_run(
        tmp_path,
        n_layers=1,
        attention_kinds=("local",),
        vocab_size=256,
        max_len=12288,
        d_model=16,
        d_ff=16,
        d_head=8,
        chunk_len=64,
        local_chunk_len=64,
        n_buckets=None,
        axial_shape=(64, 64, 3),
        axial_dims=(8, 4, 4),
    )
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = str(tmp_path / "prompt.png")
    Image.fromarray(original).save(png)
    out = str(tmp_path / "grid.png")
    result = run(
        sample.main,
        f"--workdir={workdir}",
        f"--image_prompt={png}",
        "--prompt_rows=63",
        "--n_samples=2",
        f"--output={out}",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    ids = [json.loads(line)["ids"] for line in result.stdout.splitlines()]
    assert [len(i) for i in ids] == [192, 192]  # the last pixel row, completed
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 64, 3 * 64, 3)
    np.testing.assert_array_equal(grid[:64, 128:], original)  # the original column
    np.testing.assert_array_equal(grid[64:, 64 : 64 + 64][:63], original[:63])  # kept rows
    np.testing.assert_array_equal(grid[:64, 64:128][63].reshape(-1), ids[0])  # completion

    small = str(tmp_path / "small.png")
    Image.fromarray(original[:8, :8]).save(small)
    bad = run(sample.main, f"--workdir={workdir}", f"--image_prompt={small}", "--prompt_rows=3")
    assert bad.returncode == 2
    assert bad.last_line.startswith("error: --image_prompt: expected a 64x64 RGB image, got a 8x8")
    gray = str(tmp_path / "gray.png")
    Image.fromarray(original[..., 0]).save(gray)
    bad = run(sample.main, f"--workdir={workdir}", f"--image_prompt={gray}", "--prompt_rows=3")
    assert "got a 64x64 L one" in bad.last_line
