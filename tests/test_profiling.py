"""reformer_jax.profiling and reformer_jax.flops: what the benchmark scripts measure with."""

import math
import os
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import flops, profiling, tasks
from reformer_jax.model import ReformerConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4096", 4096),
        ("12288", 12288),
        ("4K", 4096),
        ("4k", 4096),
        (" 64K ", 65536),
        ("1M", 2**20),
        ("2m", 2**21),
        ("0", 0),
    ],
)
def test_parse_length(text, expected):
    assert profiling.parse_length(text) == expected


@pytest.mark.parametrize("text", ["", " ", "K", "4G", "-1", "1.5K", "4KK", "4 K", "abc", "٤"])
def test_parse_length_rejects(text):
    with pytest.raises(ValueError, match="whole number"):
        profiling.parse_length(text)


def test_xla_memory_total_is_the_hand_sum_of_the_analysis():
    # x is donated and the first output has its shape: the two may alias.
    f = jax.jit(lambda x, y: (x * 2.0 + y, jnp.sum(x @ y.T)), donate_argnums=0)
    x, y = jnp.ones((64, 32), jnp.float32), jnp.ones((64, 32), jnp.float32)
    compiled = f.lower(x, y).compile()
    mem = compiled.memory_analysis()
    got = profiling.xla_memory(compiled)
    hand = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    assert got["total"] == hand
    assert got["argument"] == mem.argument_size_in_bytes >= 2 * 64 * 32 * 4
    assert got["temp"] == mem.temp_size_in_bytes
    assert got["generated_code"] == mem.generated_code_size_in_bytes
    assert set(got) == {*profiling.XLA_MEMORY_FIELDS, "total"}


def test_model_flops_of_full_attention_by_hand():
    b, l, m, h, d, f, v, n_layers = 2, 16, 8, 2, 4, 24, 10, 2
    cfg = ReformerConfig(
        vocab_size=v,
        max_len=l,
        d_model=m,
        n_heads=h,
        d_head=d,
        d_ff=f,
        n_layers=n_layers,
        attention_kinds=("full",),
    )
    mm = lambda rows, cols, inner: 2 * rows * cols * inner  # [rows, inner] x [inner, cols]
    t = b * l
    projections = 4 * mm(t, h * d, m)  # q, k, v from m; o back to m (same count)
    attention = b * h * (mm(l, l, d) + mm(l, d, l))  # q k^T, then probs @ v
    feed_forward = mm(t, f, m) + mm(t, m, f)
    head = mm(t, v, 2 * m)  # the two residual streams, concatenated
    layers = n_layers * (projections + attention + feed_forward)
    forward = layers + head

    got = flops.model_flops(cfg, b, l)
    assert got["forward"] == forward
    assert got["train"] == 3 * forward
    assert got["train_with_recompute"] == 3 * forward + layers  # reversible: layers run twice
    plain = flops.model_flops(cfg.replace(reversible=False), b, l)
    assert plain["train_with_recompute"] == 3 * forward
    assert flops.attention_flops("full", cfg, b, l) == projections + attention


def test_attention_flops_of_windowed_kinds_by_hand():
    b, l, m, h, d = 1, 256, 16, 2, 8
    cfg = ReformerConfig(
        max_len=l,
        d_model=m,
        n_heads=h,
        d_head=d,
        chunk_len=32,
        local_chunk_len=64,
        n_hashes=4,
        n_chunks_before=1,
        n_chunks_after=0,
    )
    t = b * l
    # Shared QK: three projections; each query attends to its chunk and the one before.
    lsh_window = 4 * 32 * 2
    assert flops.attention_flops("lsh", cfg, b, l) == 3 * 2 * t * m * h * d + 2 * (
        2 * t * h * d * lsh_window
    )
    assert flops.attention_flops("local", cfg, b, l) == 4 * 2 * t * m * h * d + 2 * (
        2 * t * h * d * 64 * 2
    )
    # The local layers' own window, where it differs from the LSH layers'.
    wide = cfg.replace(local_n_chunks_before=2, local_n_chunks_after=1)
    assert flops.attention_flops("local", wide, b, l) == 4 * 2 * t * m * h * d + 2 * (
        2 * t * h * d * 64 * 4
    )
    assert flops.attention_flops("full_shared", cfg, b, l) == 3 * 2 * t * m * h * d + 2 * (
        2 * t * h * d * l
    )


def test_time_steps_times_each_call():
    calls = []
    before = []
    result = profiling.time_steps(
        lambda: calls.append(jnp.ones(3) * len(calls)) or calls[-1], 5, before_each=before.append
    )
    assert len(calls) == 5 and before == [0, 1, 2, 3, 4]
    assert len(result.times) == 5 and len(result.others_cpu_share) == 5
    assert all(s > 0 for s in result.times)
    assert all(0.0 <= s <= 1.0 for s in result.others_cpu_share)
    assert result.median == statistics.median(result.times)
    assert profiling.time_steps(lambda: None, 0).times == []


def test_train_setup_runs_steps():
    cfg = ReformerConfig(
        vocab_size=16, max_len=32, d_model=16, d_ff=16, n_heads=2, d_head=8, n_layers=1,
        attention_kinds=("full",),
    )  # fmt: skip
    setup = profiling.train_setup(cfg, batch_size=2)
    assert setup.batch["tokens"].shape == (2, 32) and setup.compile() > 0
    mem = profiling.xla_memory(setup.fn)
    assert mem["alias"] > 0  # the donated state
    timed = profiling.time_steps(setup, 2)
    assert len(timed.times) == 2 and int(setup.state.step) == 2
    assert 0.0 < setup.loss() < 2 * math.log(16)
    # abstract=True (the memory planner's): the same shapes, nothing allocated.
    shapes = profiling.train_setup(cfg, batch_size=2, abstract=True)
    spec = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
    assert spec(shapes.state) == spec(setup.state) and spec(shapes.batch) == spec(setup.batch)
    assert isinstance(shapes.batch["tokens"], jax.ShapeDtypeStruct)


@pytest.mark.parametrize(
    "task",
    [
        tasks.LanguageModelTask(),
        tasks.MaskedLMTask(),
        tasks.ClassificationTask(n_classes=3),
        tasks.SpanTask(),
        tasks.Seq2SeqTask(),
    ],
    ids=lambda t: type(t).__name__,
)
def test_random_batch_is_a_batch_the_task_accepts(task):
    """train_setup's batch for any task (scripts/benchmark.py step): the task's own
    check_batch passes, ids lie in the vocabulary, and the ids are not all alike."""
    cfg = ReformerConfig(vocab_size=11, max_len=32)
    spec = task.batch_spec(cfg, 3, 32)
    assert list(spec) == list(task.batch_keys)
    batch = profiling.random_batch(spec, cfg.vocab_size, seed=0)
    task.check_batch(batch)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: (s.shape, s.dtype) for k, s in spec.items()
    }
    for name in ("tokens", "source", "target"):
        if name in batch:
            ids = np.asarray(batch[name])
            assert 0 <= ids.min() < ids.max() < cfg.vocab_size


def test_probes_and_no_jax_import():
    rss = profiling.rss_bytes()
    assert profiling.peak_rss_bytes() >= rss > 0  # VmHWM is at least VmRSS, read after it
    assert profiling.process_peak_rss_bytes() > 0
    busy, total, own = profiling.cpu_jiffies()
    assert 0 <= busy <= total and own >= 0
    # compare_peers' torch cells use the probes and timers without importing jax.
    code = (
        "import sys; from reformer_jax import flops, profiling\n"
        "profiling.time_steps(lambda: None, 2); profiling.rss_bytes()\n"
        "print('jax' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_model_flops_of_an_encoder_decoder_by_hand():
    """Encoder (full, 3 layers) + decoder (full, 2 layers, each with cross-attention to the
    memory) + the memory projection + the head, source and target both l tokens."""
    b, l, m, h, d, f, v = 2, 16, 8, 2, 4, 24, 10
    cfg = ReformerConfig(
        vocab_size=v,
        max_len=l,
        d_model=m,
        n_heads=h,
        d_head=d,
        d_ff=f,
        n_layers=2,
        n_encoder_layers=3,
        attention_kinds=("full",),
        cross_attention=True,
    )
    mm = lambda rows, cols, inner: 2 * rows * cols * inner
    t = b * l
    self_layer = 4 * mm(t, h * d, m) + b * h * (mm(l, l, d) + mm(l, d, l))
    layer = self_layer + mm(t, f, m) + mm(t, m, f)
    cross = 2 * mm(t, h * d, m) + 2 * mm(t, h * d, m) + b * h * (mm(l, l, d) + mm(l, d, l))
    memory = mm(t, m, 2 * m)
    head = mm(t, v, 2 * m)
    layers = 3 * layer + 2 * (layer + cross) + memory
    got = flops.model_flops(cfg, b, l)
    assert got["forward"] == layers + head
    assert got["train_with_recompute"] == 3 * (layers + head) + layers
