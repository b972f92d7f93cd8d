"""Encoder models: the Reformer stack, attending both ways over a padded sequence, under a head.

Shapes use the package's einsum legend (reformer_jax/__init__.py): b batch,
l length, m d_model, v vocabulary.

    ReformerMLM(cfg)(tokens [b, l], *, mask, ...)            masked-LM log-probs [b, l, v]
        (or hidden states, or the loss sums of given targets and weights)
    ReformerClassifier(cfg, n_classes, pooling)(tokens, *, mask, ...)
                                                              logits [b, n_classes]
    ReformerSpanModel(cfg)(tokens, *, mask, ...)             (start, end) logits, each [b, l]

Each is `ReformerStack` (reformer_jax/model.py) called with causal=False and
the padding mask (padding is never a key), under the matching head of
reformer_jax/heads.py. As in ReformerLM, the stack's parameters sit at the top
level (`embed`, `axial_pos`, `blocks`) and the head's under `head`: the
stack's parameters have the same names and shapes in every model.

The config must say causal=False: a model config describes what was trained,
and an encoder trained with bidirectional attention is not a decoder. LSH
and local layers then look one chunk back and one ahead with
n_chunks_after=1 (trax's encoder configs; docs/algorithm.md §1).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.config import ReformerConfig, RunSettings
from reformer_jax.heads import ClassifierHead, MLMHead, SpanHead
from reformer_jax.model import ReformerStack, split_key

Array = jax.Array


def check_encoder(cfg: ReformerConfig, who: str) -> None:
    """Raises ValueError (one line: what to set) unless cfg describes a bidirectional stack."""
    if cfg.causal:
        raise ValueError(
            f"{who} is an encoder (bidirectional attention): set ReformerConfig.causal=False "
            "(and ReformerConfig.n_chunks_after=1, so LSH and local chunks look one ahead)."
        )


def _encode(model: nn.Module, tokens, mask, key, deterministic, n_hashes, streams=False):
    """The model's stack run bidirectionally over tokens with their padding mask."""
    check_encoder(model.cfg, type(model).__name__)
    return model.stack(
        tokens,
        mask=mask,
        causal=False,
        key=key,
        deterministic=deterministic,
        n_hashes=n_hashes,
        streams=streams,
    )


def _head_key(key: Array | None) -> Array:
    # The stack uses the fixed key(0) without a key: so does the head.
    return split_key(jax.random.key(0) if key is None else key)[2]


class ReformerMLM(nn.Module):
    """Masked language model: `ReformerStack` (bidirectional) under an `MLMHead`."""

    cfg: ReformerConfig
    run: RunSettings = RunSettings()

    def setup(self):
        self.stack = ReformerStack(self.cfg, self.run)
        nn.share_scope(self, self.stack)
        self.head = MLMHead(self.cfg)

    def __call__(
        self,
        tokens: Array,
        *,
        mask: Array | None = None,
        key: Array | None = None,
        deterministic: bool = True,
        n_hashes: int | None = None,
        output: str = "log_probs",
        targets: Array | None = None,
        weights: Array | None = None,
    ):
        """Runs the model on tokens [b, l] (the masked input), mask bool [b, l] (True = real).

        output="log_probs": float32 [b, l, v]; "hidden": [b, l, 2m]; "loss":
        float32 sums {"nll", "correct", "weight"} of predicting targets [b, l]
        (the original tokens) at the positions weights [b, l] select, computed
        in run.loss_chunk_size chunks (`MLMHead.loss`).
        """
        if output not in ("log_probs", "hidden", "loss"):
            raise ValueError(f"output={output!r}; use 'log_probs', 'hidden' or 'loss'.")
        y1, y2 = _encode(self, tokens, mask, key, deterministic, n_hashes, streams=True)
        head_key = _head_key(key)
        if output == "loss":
            if targets is None or weights is None:
                raise ValueError(
                    "output='loss' needs `targets` and `weights` (the scored positions)."
                )
            return self.head.loss(
                (y1, y2),
                targets,
                weights,
                head_key,
                loss_chunk_size=self.run.resolved(targets.shape[1]).loss_chunk_size,
                deterministic=deterministic,
            )
        hidden = jnp.concatenate([y1, y2], axis=-1)
        if output == "hidden":
            return hidden
        return self.head(hidden, head_key, deterministic=deterministic)


class ReformerClassifier(nn.Module):
    """Sequence classifier: `ReformerStack` (bidirectional) under a `ClassifierHead`.

    n_classes: labels 0..n_classes-1. pooling: "first" (position 0, as HF
    ReformerForSequenceClassification) or "mean" (over the real positions).
    """

    cfg: ReformerConfig
    n_classes: int
    pooling: str = "first"
    run: RunSettings = RunSettings()

    def setup(self):
        self.stack = ReformerStack(self.cfg, self.run)
        nn.share_scope(self, self.stack)
        self.head = ClassifierHead(self.cfg, self.n_classes, self.pooling)

    def __call__(
        self,
        tokens: Array,
        *,
        mask: Array | None = None,
        key: Array | None = None,
        deterministic: bool = True,
        n_hashes: int | None = None,
    ) -> Array:
        """tokens [b, l], mask bool [b, l] (True = real; None: all) -> logits [b, n_classes]."""
        hidden = _encode(self, tokens, mask, key, deterministic, n_hashes)
        return self.head(hidden, mask, _head_key(key), deterministic=deterministic)


class ReformerSpanModel(nn.Module):
    """Span extraction: `ReformerStack` (bidirectional) under a `SpanHead` (HF
    ReformerForQuestionAnswering): start and end logits per position."""

    cfg: ReformerConfig
    run: RunSettings = RunSettings()

    def setup(self):
        self.stack = ReformerStack(self.cfg, self.run)
        nn.share_scope(self, self.stack)
        self.head = SpanHead(self.cfg)

    def __call__(
        self,
        tokens: Array,
        *,
        mask: Array | None = None,
        key: Array | None = None,
        deterministic: bool = True,
        n_hashes: int | None = None,
    ) -> tuple[Array, Array]:
        """tokens [b, l], mask bool [b, l] -> (start, end) float32 logits [b, l]; pads never win."""
        hidden = _encode(self, tokens, mask, key, deterministic, n_hashes)
        return self.head(hidden, mask, _head_key(key), deterministic=deterministic)
