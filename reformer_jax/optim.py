"""Optimizers and learning-rate schedules (docs/algorithm.md §6), as plain optax factories."""

from __future__ import annotations

import jax.numpy as jnp
import optax

SCHEDULES = ("rsqrt", "cosine", "constant")
OPTIMIZERS = ("adam", "adafactor")


def make_schedule(
    name: str = "rsqrt",
    *,
    learning_rate: float = 0.03125,
    warmup_steps: int = 2000,
    total_steps: int | None = None,
) -> optax.Schedule:
    """Learning rate as a function of the step.

    "rsqrt" is trax's constant * linear_warmup * rsqrt_decay:
    lr(s) = learning_rate * min(1, s / w) / sqrt(max(s, w)), w = warmup_steps.
    "cosine": linear warmup to learning_rate, cosine decay to 0 at total_steps.
    "constant": linear warmup, then learning_rate.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
    w = max(warmup_steps, 1)
    if name == "rsqrt":

        def schedule(step):
            s = jnp.asarray(step, jnp.float32)
            return learning_rate * jnp.minimum(1.0, s / w) / jnp.sqrt(jnp.maximum(s, w))

        return schedule
    if name == "constant":
        return (
            optax.linear_schedule(0.0, learning_rate, w)
            if warmup_steps
            else (optax.constant_schedule(learning_rate))
        )
    if name == "cosine":
        if not total_steps or total_steps <= warmup_steps:
            raise ValueError("the cosine schedule needs total_steps > warmup_steps.")
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps)
    raise ValueError(f"unknown schedule {name!r}; use one of {SCHEDULES}.")


def make_optimizer(
    name: str = "adam",
    *,
    schedule: optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-9,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """Adam with the paper's settings (β = (0.9, 0.98), ε = 1e-9) or Adafactor.

    clip_norm clips the global gradient norm before the update.
    """
    if name == "adam":
        opt = (
            optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
            if weight_decay
            else optax.adam(schedule, b1=b1, b2=b2, eps=eps)
        )
    elif name == "adafactor":
        opt = optax.adafactor(schedule, weight_decay_rate=weight_decay or None)
    else:
        raise ValueError(f"unknown optimizer {name!r}; use one of {OPTIMIZERS}.")
    if clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    return opt
