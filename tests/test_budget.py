"""Run settings from a memory budget (reformer_jax/budget.py) and the "auto" defaults.

The search is checked twice: against a made-up memory model, where the best
setting can be found by trying them all, and on compiled plans of a tiny
model (the memory planner's `--fit`, and `train.memory_budget` at the start
of a training run).
"""

import itertools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import budget, config, memory, profiling
from reformer_jax.config import AUTO, RunSettings
from reformer_jax.model import ReformerLM
from tests import inprocess
from tests.conftest import TINY_GIN, tiny_config

GIB = 2**30

# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("40GiB", 40 * GIB),
        ("40 gib", 40 * GIB),
        ("1.5GiB", 3 * GIB // 2),
        ("512MiB", 512 * 2**20),
        ("8GB", 8 * 10**9),
        ("100mb", 10**8),
        ("64KiB", 65536),
        ("1073741824", GIB),
        ("4096B", 4096),
        (123456, 123456),
    ],
)
def test_parse_budget(text, expected):
    assert budget.parse_budget(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "40GiBs", "40 G", "-1GiB", "0", "0GiB", "1e9", 1.5e9])
def test_parse_budget_rejects_with_the_accepted_forms(text):
    with pytest.raises(budget.BudgetError, match='use "40GiB", "512MiB", "8GB"'):
        budget.parse_budget(text)


def test_device_budget_on_the_cpu_is_a_clear_error():
    assert jax.devices()[0].platform == "cpu"
    with pytest.raises(budget.BudgetError, match="cpu backend reports no memory limit"):
        budget.budget_bytes("device")


def test_compiled_bytes_is_the_planners_total():
    f = jax.jit(lambda x, y: (x * 2.0 + y, jnp.sum(x @ y.T)), donate_argnums=0)
    compiled = f.lower(jnp.ones((64, 32)), jnp.ones((64, 32))).compile()
    assert budget.compiled_bytes(compiled) == profiling.xla_memory(compiled)["total"] > 0


# ----------------------------------------------------------------------------- "auto"


def test_resolved_chunks_long_sequences_only_and_keeps_explicit_values():
    auto = RunSettings()
    long = auto.resolved(config.AUTO_CHUNK + 1)
    assert (long.ff_chunk_size, long.loss_chunk_size) == (config.AUTO_CHUNK, config.AUTO_CHUNK)
    assert (long.attention_head_chunk, long.remat) == (None, False)
    short = auto.resolved(config.AUTO_CHUNK)
    assert (short.ff_chunk_size, short.loss_chunk_size) == (None, None)
    given = RunSettings(ff_chunk_size=None, loss_chunk_size=64, attention_head_chunk=1, remat=True)
    assert given.resolved(10 * config.AUTO_CHUNK) == given
    with pytest.raises(ValueError, match="positive int, None or 'auto'"):
        RunSettings(ff_chunk_size="whole")
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        RunSettings(remat="yes")


@pytest.mark.slow
def test_auto_chunks_change_nothing_beyond_rounding(monkeypatch):
    """The model under default settings, at a length "auto" chunks (AUTO_CHUNK lowered to
    8 for 32 tokens): the program of explicit 8-position chunks, and the loss and
    gradients of the unchunked model."""
    monkeypatch.setattr(config, "AUTO_CHUNK", 8)
    cfg = tiny_config("step")
    tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, cfg.vocab_size)
    weights = jax.random.uniform(jax.random.key(1), (2, 32))
    params = ReformerLM(cfg).init(jax.random.key(2), tokens)["params"]

    def loss_and_grads(run):
        model = ReformerLM(cfg, run)
        f = lambda p: model.apply({"params": p}, tokens, weights=weights, output="loss")["nll"]
        return jax.value_and_grad(f)

    auto = loss_and_grads(RunSettings())
    chunked = loss_and_grads(RunSettings(ff_chunk_size=8, loss_chunk_size=8))
    whole = loss_and_grads(RunSettings(ff_chunk_size=None, loss_chunk_size=None))
    program = lambda f: str(jax.make_jaxpr(f)(params))
    assert program(auto) == program(chunked) != program(whole)
    got, want = jax.jit(auto)(params), jax.jit(whole)(params)
    for a, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(got[0])) > 1.0  # a real loss, not a zero


# ----------------------------------------------------------------------------- ladders


def test_ladders_search_auto_knobs_and_hold_explicit_ones():
    cfg = tiny_config("step", n_heads=4, reversible=False)
    rungs = budget.ladders(cfg, RunSettings(), AUTO, seq_len=3 * 1024, batch_size=6, min_chunk=256)
    assert rungs["ff_chunk_size"] == rungs["loss_chunk_size"] == (None, 1024, 512, 256)
    assert rungs["attention_head_chunk"] == (None, 2, 1)
    assert rungs["remat"] == (False, True)
    assert rungs["grad_accum_steps"] == (1, 2, 3, 6)
    fixed = RunSettings(ff_chunk_size=None, loss_chunk_size=128, attention_head_chunk=1)
    rungs = budget.ladders(
        cfg.replace(reversible=True), fixed, 2, seq_len=4096, batch_size=6, min_chunk=256
    )
    assert rungs["ff_chunk_size"] == (None,) and rungs["loss_chunk_size"] == (128,)
    assert rungs["attention_head_chunk"] == (1,) and rungs["grad_accum_steps"] == (2,)
    assert rungs["remat"] == (False,)  # a reversible stack has nothing to rematerialise


# ----------------------------------------------------------------------------- the search


def _made_up_memory(setting):
    """Bytes that fall down every ladder at different rates, plus a fixed part."""
    chunk = lambda c: 64 if c is None else c / 64
    return int(
        1000
        + 300 * (not setting["remat"])
        + 400 / setting["grad_accum_steps"]
        + 40 * (4 if setting["attention_head_chunk"] is None else setting["attention_head_chunk"])
        + 10 * chunk(setting["ff_chunk_size"])
        + 5 * chunk(setting["loss_chunk_size"])
    )


RUNGS = {
    "remat": (False, True),
    "grad_accum_steps": (1, 2, 4, 8),
    "attention_head_chunk": (None, 2, 1),
    "ff_chunk_size": (None, 2048, 1024, 512, 256, 128),
    "loss_chunk_size": (None, 2048, 1024, 512, 256, 128),
}


def _rank(setting):
    """Position on each ladder in priority order: smaller is faster."""
    return tuple(RUNGS[k].index(setting[k]) for k in budget.PRIORITY)


def test_search_finds_the_fastest_fitting_setting_in_few_plans():
    assert tuple(RUNGS) == budget.PRIORITY
    product = [
        dict(zip(RUNGS, values, strict=True)) for values in itertools.product(*RUNGS.values())
    ]
    fits_at = sorted({_made_up_memory(s) for s in product})
    previous = None
    for limit in fits_at[:: max(1, len(fits_at) // 40)] + [fits_at[-1]]:
        compiled = []
        choice = budget.search(
            RUNGS, limit, lambda s, log=compiled: log.append(s) or _made_up_memory(s)
        )
        fitting = [s for s in product if _made_up_memory(s) <= limit]
        assert _rank(choice.settings) == min(_rank(s) for s in fitting)
        assert choice.total_bytes == _made_up_memory(choice.settings) <= limit
        assert choice.plans == len(compiled) <= budget.max_plans(RUNGS) == 13 < len(product)
        if previous is not None:  # a larger budget: as fast or faster
            assert _rank(choice.settings) <= _rank(previous)
        previous = choice.settings
    assert previous == {k: r[0] for k, r in RUNGS.items()}  # everything fits the largest


def test_search_refuses_when_the_leanest_does_not_fit():
    leanest = _made_up_memory({k: r[-1] for k, r in RUNGS.items()})
    with pytest.raises(budget.BudgetError) as e:
        budget.search(RUNGS, leanest - 1, _made_up_memory)
    assert "the leanest (remat=True, grad_accum_steps=8," in str(e.value)
    assert f"({leanest} bytes)" in str(e.value)
    assert "fewer layers, a smaller batch or a shorter seq_len" in str(e.value)


# ----------------------------------------------------------------------------- compiled plans

# The tiny trainer config as one local layer with a wide feed-forward, only the
# feed-forward chunk left "auto": its ladder is None, 16, 8 for 32 tokens.
FIT_FLAGS = (
    f"--gin_file={TINY_GIN}",
    "--gin_param=ReformerConfig.attention_kinds = ('local',)",
    "--gin_param=ReformerConfig.n_layers = 1",
    "--gin_param=ReformerConfig.d_ff = 256",
    "--gin_param=RunSettings.loss_chunk_size = None",
    "--gin_param=RunSettings.attention_head_chunk = None",
    "--gin_param=train.grad_accum_steps = 1",
    "--batch_size=2",
    "--min_chunk=8",
    "--json",
)


def _fit(limit, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main appends to it
    result = inprocess.run(memory.main, *FIT_FLAGS, f"--fit={limit}")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_memory_fit_chunks_only_when_the_budget_needs_it(monkeypatch):
    roomy = _fit("1GiB", monkeypatch)
    assert roomy["settings"]["ff_chunk_size"] is None and roomy["plans"] == 1
    assert roomy["bindings"] == ["RunSettings.ff_chunk_size = None"]
    tight = _fit(roomy["total_bytes"] - 1, monkeypatch)  # the whole sequence no longer fits
    assert tight["settings"]["ff_chunk_size"] in (16, 8)
    assert tight["bindings"] == [
        f"RunSettings.ff_chunk_size = {tight['settings']['ff_chunk_size']}"
    ]
    assert tight["total_bytes"] <= tight["budget_bytes"] == roomy["total_bytes"] - 1
    # The chosen total is the planner's own figure for that setting.
    cfg = tiny_config("step", n_layers=1, attention_kinds=("local",), d_ff=256)
    chunk = tight["settings"]["ff_chunk_size"]
    run = RunSettings(ff_chunk_size=chunk, loss_chunk_size=None, attention_head_chunk=None)
    assert memory.plan(cfg, batch_size=2, run=run)["total_bytes"] == tight["total_bytes"]


@pytest.mark.slow
def test_train_memory_budget_is_applied_and_logged(tmp_path):
    # A budget below the planner's total for one micro-batch: the run must split its batch.
    cfg = tiny_config("step", n_layers=1, attention_kinds=("local",))
    whole = memory.plan(cfg, batch_size=2, run=RunSettings(attention_head_chunk=None))
    limit = whole["total_bytes"] * 4 // 5
    result = inprocess.train(
        f"--gin_file={TINY_GIN}",
        f"--workdir={tmp_path / 'run'}",
        "--gin_param=ReformerConfig.attention_kinds = ('local',)",
        "--gin_param=ReformerConfig.n_layers = 1",
        "--gin_param=RunSettings.attention_head_chunk = None",
        "--gin_param=train.batch_size = 2",
        "--gin_param=train.steps = 1",
        f"--gin_param=train.memory_budget = {limit}",
    )
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stderr.splitlines() if "train.memory_budget:" in ln)
    assert "train.grad_accum_steps = 2;" in line, line
    planned = int(re.search(r"planned total [\d.]+ MiB \((\d+) bytes\)", line).group(1))
    assert planned <= limit and "2 plans compiled" in line, line
    assert os.path.isdir(tmp_path / "run" / "checkpoints")
