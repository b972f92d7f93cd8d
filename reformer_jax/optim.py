"""Optimizers and learning-rate schedules (docs/algorithm.md §6), as plain optax factories."""

from __future__ import annotations

import math
import numbers

import jax.numpy as jnp
import optax

SCHEDULES = ("rsqrt", "cosine", "constant")
OPTIMIZERS = ("adam", "adafactor")


def _is_number(value) -> bool:
    """A real number, not a bool (True would pass as 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_positive(name: str, value) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


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
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; use one of {SCHEDULES}.")
    # 0 is allowed: a run that leaves the parameters as they are (restore checks, probes).
    if not _is_number(learning_rate) or not math.isfinite(learning_rate) or learning_rate < 0:
        raise ValueError(f"learning_rate must be a finite number >= 0, got {learning_rate!r}.")
    if not _is_int(warmup_steps) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}.")
    if total_steps is not None and (not _is_int(total_steps) or total_steps < 1):
        raise ValueError(f"total_steps must be None or an int >= 1, got {total_steps!r}.")
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
    # cosine
    if not total_steps or total_steps <= warmup_steps:
        raise ValueError(
            "the cosine schedule needs total_steps > warmup_steps (it decays to 0 at "
            f"total_steps), got total_steps={total_steps}, warmup_steps={warmup_steps}."
        )
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps)


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

    clip_norm clips the global gradient norm before the update (None: no clipping).
    Adafactor ignores b1, b2 and eps, but they are checked all the same.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {OPTIMIZERS}.")
    for beta_name, beta in (("b1", b1), ("b2", b2)):
        # beta = 1 divides by zero in Adam's bias correction (1 - beta^t).
        if not _is_number(beta) or not 0 <= beta < 1:
            raise ValueError(f"{beta_name} must be a number in [0, 1), got {beta!r}.")
    _check_positive("eps", eps)
    if not _is_number(weight_decay) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}.")
    if clip_norm is not None and (
        not _is_number(clip_norm) or not math.isfinite(clip_norm) or clip_norm <= 0
    ):
        raise ValueError(
            f"clip_norm must be None (no clipping) or a finite number > 0, got {clip_norm!r}."
        )
    if name == "adam":
        opt = (
            optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
            if weight_decay
            else optax.adam(schedule, b1=b1, b2=b2, eps=eps)
        )
    else:
        opt = optax.adafactor(schedule, weight_decay_rate=weight_decay or None)
    if clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
    return opt
