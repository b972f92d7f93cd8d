"""Heads: what a task reads off the Reformer stack's hidden states.

Shapes use the package's einsum legend (reformer_jax/__init__.py): b batch,
l length, m d_model (the stack's two streams concatenate to 2m), v vocabulary.

    LMHead(cfg)      next-token prediction: owns the input shift, LayerNorm(2m) ->
                     dropout -> Dense(v) -> log-softmax, and the chunked loss

Each head owns the LayerNorm over the concatenated streams (docs/algorithm.md
§5), so a head that works one chunk of positions at a time (the LM loss)
normalises one chunk at a time and the [b, l, 2m] normalised states are
never alive whole (4 GiB at a million tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax import layers, lsh
from reformer_jax.chunked import sum_chunks

Array = jax.Array


def shift_right(tokens: Array) -> Array:
    """[b, l] -> [b, l]: prepend 0 and drop the last token (teacher forcing)."""
    return jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]


class LMHead(nn.Module):
    """The language-model head: the input shift, next-token log-probs and their loss.

    With cfg.shift_inputs (the default) the network reads the tokens shifted
    right (a 0 in front), so position t predicts token t from tokens < t.
    Without it (HF transformers' ReformerModelWithLMHead, reformer_jax.convert)
    the network reads the tokens as given and position t predicts token t + 1.
    """

    cfg: object  # reformer_jax.config.ReformerConfig

    def setup(self):
        width, vocab = 2 * self.cfg.d_model, self.cfg.vocab_size
        self.norm = layers.LayerNormParams(width)
        self.kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (width, vocab), jnp.float32
        )
        self.bias = self.param("bias", nn.initializers.zeros, (vocab,), jnp.float32)

    def inputs(self, tokens: Array) -> Array:
        """The tokens [b, l] the network reads for next-token prediction of `tokens`."""
        return shift_right(tokens) if self.cfg.shift_inputs else tokens

    def __call__(self, h: Array, key: Array | None = None, *, deterministic: bool = True):
        """h [..., 2m] -> float32 log-probs [..., v]."""
        return self._log_probs(self._params(), h, key, deterministic)

    def _params(self):
        return {"norm": self.norm(), "kernel": self.kernel, "bias": self.bias}

    def _log_probs(self, p, h, key, deterministic):
        # Pure in p: safe inside the chunk loops.
        h = layers.layer_norm(h, p["norm"]["scale"], p["norm"]["bias"], self.cfg.layer_norm_eps)
        h = layers.dropout(h, self.cfg.dropout, key, deterministic)
        logits = (
            jnp.einsum(
                "...m,mv->...v", h, p["kernel"].astype(h.dtype), preferred_element_type=jnp.float32
            )
            + p["bias"]
        )
        return jax.nn.log_softmax(logits, axis=-1)

    def loss(
        self,
        streams: Sequence[Array],
        tokens: Array,
        weights: Array | None,
        key: Array,
        *,
        loss_chunk_size: int | None = None,
        deterministic: bool = True,
    ) -> dict[str, Array]:
        """Sums {"nll" (nats), "correct", "weight"} of the next-token loss of `tokens` [b, l].

        streams: the stack's two outputs, each [b, l, m], for the inputs
        `inputs(tokens)`; weights [b, l] (default all ones) weigh each target
        token. The head reads the streams' concatenation one chunk of
        loss_chunk_size positions at a time (`chunked.sum_chunks`), so
        neither the [b, l, v] logits nor the [b, l, 2m] input is ever alive
        whole. Without shift_inputs the loss scores tokens 1..l-1.
        """
        if weights is None:
            weights = jnp.ones(tokens.shape, jnp.float32)
        targets = tokens
        if not self.cfg.shift_inputs:  # position t predicts token t + 1
            streams = tuple(s[:, :-1] for s in streams)
            targets, weights = tokens[:, 1:], weights[:, 1:]
        params = self._params()

        def chunk_stats(p, args, k):
            *parts, t_c, w_c = args
            h_c = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
            logp = self._log_probs(p, h_c, k, deterministic)
            nll = -jnp.take_along_axis(logp, t_c[..., None], axis=-1)[..., 0]
            correct = (jnp.argmax(logp, axis=-1) == t_c).astype(jnp.float32)
            return jnp.stack([jnp.sum(nll * w_c), jnp.sum(correct * w_c), jnp.sum(w_c)])

        weights = weights.astype(jnp.float32)
        length = targets.shape[1]
        args = (*streams, targets, weights)
        c = loss_chunk_size
        if not c or c >= length:
            sums = chunk_stats(params, args, key)
        else:
            padded = lsh.round_up(length, c)
            args = tuple(lsh.pad_length(a, padded, axis=1) for a in args)
            sums = sum_chunks(chunk_stats, c, params, args, key)
        return {"nll": sums[0], "correct": sums[1], "weight": sums[2]}
