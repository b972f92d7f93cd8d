"""Tasks: the trainer and evaluator run whatever task they are given (reformer_jax/tasks.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reformer_jax import evaluation, tasks, trainer
from reformer_jax.config import ReformerConfig


@dataclasses.dataclass(frozen=True)
class _SecondHalfTask(tasks.LanguageModelTask):
    """A task the trainer has never heard of: the LM loss on the second half only,
    with an extra sum the task reports."""

    def loss_sums(self, model, params, batch, key, *, deterministic):
        length = batch["tokens"].shape[1]
        weights = batch["weights"] * (jnp.arange(length) >= length // 2)
        sums = super().loss_sums(
            model, params, {**batch, "weights": weights}, key, deterministic=deterministic
        )
        return {**sums, "examples": jnp.float32(batch["tokens"].shape[0])}


def _cfg():
    return ReformerConfig(
        vocab_size=16,
        max_len=32,
        d_model=32,
        d_ff=32,
        n_heads=2,
        d_head=16,
        n_layers=1,
        attention_kinds=("full",),
    )


@pytest.mark.slow
def test_train_step_minimises_the_task_loss_with_its_own_sums():
    cfg, task = _cfg(), _SecondHalfTask()
    model = task.model(cfg)
    params = task.init_params(model, jax.random.key(0), cfg)
    opt = optax.sgd(0.1)
    rng = np.random.default_rng(0)
    batch = {
        "tokens": jnp.asarray(rng.integers(0, 16, (4, 32)), jnp.int32),
        "weights": jnp.asarray(rng.uniform(0.5, 1.0, (4, 32)), jnp.float32),
    }
    step = lambda accum: trainer.train_step(
        trainer.TrainState.create(params, opt),
        batch,
        jax.random.key(1),
        model=model,
        optimizer=opt,
        schedule=lambda s: 0.1,
        grad_accum_steps=accum,
        task=task,
    )
    (state1, m1), (state2, m2) = step(1), step(2)
    assert float(m1["examples"]) == 4.0 and float(m2["examples"]) == 4.0
    np.testing.assert_allclose(m1["weight"], np.sum(np.asarray(batch["weights"])[:, 16:]), 1e-6)
    # The update is the gradient of nll / weight of the task's own sums, also accumulated.
    want = jax.grad(
        lambda p: (lambda s: s["nll"] / s["weight"])(
            task.loss_sums(
                model, p, batch, jax.random.fold_in(jax.random.key(1), 0), deterministic=False
            )
        )
    )(params)
    got = jax.tree_util.tree_map(lambda a, b: (a - b) / 0.1, params, state1.params)
    for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(w))))
    for a, b in zip(
        jax.tree_util.tree_leaves(state1.params),
        jax.tree_util.tree_leaves(state2.params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert (
        evaluation.eval_step(params, batch, jax.random.key(2), model=model, task=task)["examples"]
        == 4.0
    )


def test_a_task_names_the_arrays_it_reads_and_refuses_what_it_cannot_train():
    task = tasks.LanguageModelTask()
    with pytest.raises(tasks.TaskError, match=r"missing \['weights'\]"):
        task.check_batch({"tokens": np.zeros((1, 4))})
    with pytest.raises(tasks.TaskError, match="causal=False cannot be trained"):
        task.check(_cfg().replace(causal=False))
