"""Model FLOPs of a ReformerLM training step, for MFU figures.

    model_flops(cfg, batch, length) -> {"forward", "train", "train_with_recompute"}
        (an encoder-decoder, cfg.cross_attention: source and target both `length`)
    attention_flops(kind, cfg, batch, length) -> forward FLOPs of one attention sublayer

Counted the usual way: 2 FLOPs per multiply-add of every matmul (an [m, k] x
[k, n] product is 2 * m * n * k); element-wise work (norms, softmax, hashing,
sorting) is not counted. Pure arithmetic on the config: nothing is traced or
compiled, and importing this module does not import jax.
"""

from __future__ import annotations

from typing import Any


def attention_flops(kind: str, cfg: Any, batch: int, length: int) -> float:
    """Forward matmul FLOPs of one `kind` attention sublayer on [batch, length] tokens.

    The kind's own count (reformer_jax/kinds.py, `AttentionKind.flops`):
    projections q, v and out, plus k unless QK is shared; logits and
    probs @ v over every key slot a query's window admits, masked or not.
    """
    from reformer_jax import kinds  # imports jax: only when counting, not at import

    return kinds.get(kind).flops(cfg, batch, length)


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
    layers = _stack_flops(cfg, batch, length)
    head = 2 * t * 2 * d * cfg.vocab_size
    if cfg.cross_attention:  # ReformerEncDec: the encoder, its memory, the cross-attention
        hd = cfg.n_heads * cfg.d_head
        # q and out projections of the queries, k and v of the memory, logits and probs @ v.
        cross = 2 * 2 * t * d * hd + 2 * 2 * t * d * hd + 2 * 2 * t * length * hd
        memory = 2 * t * 2 * d * d
        layers += _stack_flops(cfg.encoder_config(), batch, length) + cross * cfg.n_layers + memory
    forward = layers + head
    return {
        "forward": forward,
        "train": 3 * forward,
        "train_with_recompute": 3 * forward + (layers if cfg.reversible else 0.0),
    }


def _stack_flops(cfg: Any, batch: int, length: int) -> float:
    """Forward matmul FLOPs of the attention and feed-forward sublayers of every layer."""
    t = batch * length
    layer = 0.0
    for kind in cfg.attention_kinds:
        ff = 2 * 2 * t * cfg.d_model * cfg.d_ff
        layer += attention_flops(kind, cfg, batch, length) + ff
    return layer * cfg.n_groups
