"""Model FLOPs of a ReformerLM training step, for MFU figures.

    model_flops(cfg, batch, length) -> {"forward", "train", "train_with_recompute"}
    attention_flops(kind, cfg, batch, length) -> forward FLOPs of one attention sublayer

Counted the usual way: 2 FLOPs per multiply-add of every matmul (an [m, k] x
[k, n] product is 2 * m * n * k); element-wise work (norms, softmax, hashing,
sorting) is not counted. Pure arithmetic on the config: nothing is traced or
compiled, and jax is not imported.
"""

from __future__ import annotations

from typing import Any


def attention_flops(kind: str, cfg: Any, batch: int, length: int) -> float:
    """Forward matmul FLOPs of one `kind` attention sublayer on [batch, length] tokens.

    Projections q, v and out, plus k unless QK is shared ("lsh", "full_shared");
    logits and probs @ v over every key slot a query's window admits, masked or
    not: "full(_shared)" `length`, "lsh" n_hashes * chunk_len * (1 + chunks
    before + after), "local" local_chunk_len * (1 + cfg.local_window's chunks).
    """
    t = batch * length
    d, h, k = cfg.d_model, cfg.n_heads, cfg.d_head
    n_proj = 3 if kind in ("lsh", "full_shared") else 4  # q(k), v, o (+ k)
    proj = 2 * t * d * h * k * n_proj
    if kind == "lsh":
        window = cfg.n_hashes * cfg.chunk_len * (1 + cfg.n_chunks_before + cfg.n_chunks_after)
    elif kind == "local":
        window = cfg.local_chunk_len * (1 + sum(cfg.local_window))
    else:
        window = length
    attend = 2 * 2 * t * h * k * window  # logits and probs @ v
    return proj + attend


def model_flops(cfg: Any, batch: int, length: int) -> dict[str, float]:
    """Matmul FLOPs of one training step of ReformerLM `cfg` on [batch, length] tokens.

    A training step is the forward pass plus a backward pass of twice its
    cost. `train` is that (3x forward); `train_with_recompute` adds the
    reversible backward pass's second forward through every layer (4x forward
    for the layers, 3x for the embedding and head). Each layer is an attention
    sublayer (attention_flops) and a feed-forward sublayer (two matmuls,
    d_model -> d_ff -> d_model); the head maps the two concatenated residual
    streams (2 * d_model) to the vocabulary.
    """
    t = batch * length
    d = cfg.d_model
    layer = 0.0
    for kind in cfg.attention_kinds:
        ff = 2 * 2 * t * d * cfg.d_ff
        layer += attention_flops(kind, cfg, batch, length) + ff
    layers = layer * cfg.n_groups
    head = 2 * t * 2 * d * cfg.vocab_size
    forward = layers + head
    return {
        "forward": forward,
        "train": 3 * forward,
        "train_with_recompute": 3 * forward + (layers if cfg.reversible else 0.0),
    }
