"""Heads: what a task reads off the Reformer stack's hidden states.

Shapes use the package's einsum legend (reformer_jax/__init__.py): b batch,
l length, m d_model (the stack's two streams concatenate to 2m), v vocabulary.

    TokenHead(cfg)      LayerNorm(2m) -> dropout -> Dense(v) -> log-softmax at every
                        position, and the chunked weighted loss of given targets
    LMHead(cfg)         a TokenHead that owns the input shift: next-token prediction
    MLMHead(cfg)        a TokenHead scoring the tokens at the masked positions
    ClassifierHead(cfg, n_classes, pooling)
                        LayerNorm -> pool ("first" position or "mean" over the mask)
                        -> dropout -> Dense(m), tanh -> dropout -> Dense(n_classes)
    SpanHead(cfg)       LayerNorm -> dropout -> Dense(2): start and end logits [b, l],
                        padding masked so it is never chosen

Each head owns the LayerNorm over the concatenated streams (docs/algorithm.md
§5), so a head that works one chunk of positions at a time (the LM loss)
normalises one chunk at a time and the [b, l, 2m] normalised states are
never alive whole (4 GiB at a million tokens).

Parameter names follow HF transformers' Reformer heads, so checkpoints convert
by renaming: the token heads' `kernel`/`bias` are `lm_head.decoder` of
ReformerModelWithLMHead and ReformerForMaskedLM (ReformerOnlyLMHead); the
classifier's `dense`/`out_proj` are ReformerClassificationHead's; the span
head's `qa_outputs` is ReformerForQuestionAnswering's. HF keeps the final
LayerNorm in its encoder; here it is each head's `norm`.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax import attention, layers, lsh
from reformer_jax.chunked import sum_chunks

Array = jax.Array

POOLINGS = ("first", "mean")


def shift_right(tokens: Array) -> Array:
    """[b, l] -> [b, l]: prepend 0 and drop the last token (teacher forcing)."""
    return jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]


def _split(key: Array | None, n: int) -> Sequence[Array | None]:
    return [None] * n if key is None else jax.random.split(key, n)


class TokenHead(nn.Module):
    """Log-probs over the vocabulary at every position, and their chunked loss.

    The shared part of the language-model and masked-LM heads: LayerNorm over
    the concatenated streams, dropout, a Dense(2m -> v) and a log-softmax.
    """

    cfg: object  # reformer_jax.config.ReformerConfig

    def setup(self):
        width, vocab = 2 * self.cfg.d_model, self.cfg.vocab_size
        self.norm = layers.LayerNormParams(width)
        self.kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (width, vocab), jnp.float32
        )
        self.bias = self.param("bias", nn.initializers.zeros, (vocab,), jnp.float32)

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

    def token_loss(
        self,
        streams: Sequence[Array],
        targets: Array,
        weights: Array,
        key: Array,
        *,
        loss_chunk_size: int | None = None,
        deterministic: bool = True,
        label_smoothing: float = 0.0,
        exact_match: bool = False,
    ) -> dict[str, Array]:
        """Sums {"nll" (nats), "correct", "weight"} of predicting targets [b, l] where weighted.

        streams: the stack's two outputs, each [b, l, m]; position t is scored
        against targets[:, t] with weight weights[:, t] (float [b, l]; 0 = not
        scored). The head reads the streams' concatenation one chunk of
        loss_chunk_size positions at a time (`chunked.sum_chunks`), so
        neither the [b, l, v] logits nor the [b, l, 2m] input is ever alive
        whole.

        label_smoothing = eps > 0 adds "objective": the sum of the smoothed
        cross-entropy (1 - eps) * nll + eps * (mean over the vocabulary of
        -log p), the loss of a target spread eps uniformly over the vocabulary
        (Szegedy et al. 2016; the paper's translation setting, eps = 0.1).
        The trainer minimises "objective" when a task's sums hold it; "nll"
        stays the plain cross-entropy, which the metrics report.

        exact_match=True adds "exact" (rows whose weighted positions are all
        predicted right, among rows with any weight) and "rows" (rows with any
        weight). For teacher-forced next-token targets, a row is exact exactly
        when greedy decoding reproduces it (up to argmax ties).
        """
        params = self._params()
        eps = float(label_smoothing)
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")

        def chunk_stats(p, args, k):
            *parts, t_c, w_c = args
            h_c = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
            logp = self._log_probs(p, h_c, k, deterministic)
            nll = -jnp.take_along_axis(logp, t_c[..., None], axis=-1)[..., 0]
            correct = (jnp.argmax(logp, axis=-1) == t_c).astype(jnp.float32)
            stats = [jnp.sum(nll * w_c), jnp.sum(correct * w_c), jnp.sum(w_c)]
            if eps:
                smoothed = (1.0 - eps) * nll - eps * jnp.mean(logp, axis=-1)
                stats.append(jnp.sum(smoothed * w_c))
            stats = jnp.stack(stats)
            if exact_match:  # then per row: weighted errors, weight
                per_row = [jnp.sum((1.0 - correct) * w_c, axis=1), jnp.sum(w_c, axis=1)]
                stats = jnp.concatenate([stats, *per_row])
            return stats

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
        out = {"nll": sums[0], "correct": sums[1], "weight": sums[2]}
        if eps:
            out["objective"] = sums[3]
        if exact_match:
            b = targets.shape[0]
            errors, row_weight = sums[-2 * b : -b], sums[-b:]
            scored = row_weight > 0
            out["exact"] = jnp.sum((scored & (errors == 0)).astype(jnp.float32))
            out["rows"] = jnp.sum(scored.astype(jnp.float32))
        return out


class LMHead(TokenHead):
    """The language-model head: the input shift, next-token log-probs and their loss.

    With cfg.shift_inputs (the default) the network reads the tokens shifted
    right (a 0 in front), so position t predicts token t from tokens < t.
    Without it (HF transformers' ReformerModelWithLMHead, reformer_jax.convert)
    the network reads the tokens as given and position t predicts token t + 1.
    """

    def inputs(self, tokens: Array) -> Array:
        """The tokens [b, l] the network reads for next-token prediction of `tokens`."""
        return shift_right(tokens) if self.cfg.shift_inputs else tokens

    def loss(
        self,
        streams: Sequence[Array],
        tokens: Array,
        weights: Array | None,
        key: Array,
        *,
        loss_chunk_size: int | None = None,
        deterministic: bool = True,
        label_smoothing: float = 0.0,
        exact_match: bool = False,
    ) -> dict[str, Array]:
        """Sums {"nll" (nats), "correct", "weight"} of the next-token loss of `tokens` [b, l].

        streams: the stack's two outputs, each [b, l, m], for the inputs
        `inputs(tokens)`; weights [b, l] (default all ones) weigh each target
        token. Chunked as `TokenHead.token_loss`. Without shift_inputs the
        loss scores tokens 1..l-1.
        """
        if weights is None:
            weights = jnp.ones(tokens.shape, jnp.float32)
        targets = tokens
        if not self.cfg.shift_inputs:  # position t predicts token t + 1
            streams = tuple(s[:, :-1] for s in streams)
            targets, weights = tokens[:, 1:], weights[:, 1:]
        return self.token_loss(
            streams,
            targets,
            weights,
            key,
            loss_chunk_size=loss_chunk_size,
            deterministic=deterministic,
            label_smoothing=label_smoothing,
            exact_match=exact_match,
        )


class MLMHead(TokenHead):
    """The masked-LM head (BERT; HF ReformerForMaskedLM): log-probs of the original token.

    No shift: position t, which the network read masked (or replaced, or
    kept), predicts the token that was there. `loss` scores only the
    selected positions: their weights are nonzero, every other weight is 0.
    """

    def loss(
        self,
        streams: Sequence[Array],
        targets: Array,
        weights: Array,
        key: Array,
        *,
        loss_chunk_size: int | None = None,
        deterministic: bool = True,
    ) -> dict[str, Array]:
        """Sums {"nll", "correct", "weight"} over the positions weights [b, l] select.

        targets [b, l]: the original tokens; "weight" sums the selected
        positions' weights (with 0/1 weights, the number of masked tokens).
        """
        return self.token_loss(
            streams,
            targets,
            weights,
            key,
            loss_chunk_size=loss_chunk_size,
            deterministic=deterministic,
        )


class ClassifierHead(nn.Module):
    """One label per sequence (HF ReformerForSequenceClassification's head).

    hidden [b, l, 2m] -> LayerNorm -> pool -> dropout -> Dense(2m -> m) ->
    tanh -> dropout -> Dense(m -> n_classes): float32 logits [b, n_classes].
    pooling "first" reads position 0 (HF's choice: a [CLS]-like first
    token); "mean" averages the positions the mask marks real.
    """

    cfg: object  # reformer_jax.config.ReformerConfig
    n_classes: int
    pooling: str = "first"

    def setup(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"ClassifierHead: pooling={self.pooling!r}; use one of {POOLINGS}.")
        self.norm = layers.LayerNormParams(2 * self.cfg.d_model)
        self.dense = nn.Dense(self.cfg.d_model, name="dense")
        self.out_proj = nn.Dense(self.n_classes, name="out_proj")

    def pool(self, hidden: Array, mask: Array | None) -> Array:
        """The normalised hidden states [b, l, 2m] pooled to [b, 2m] (float32)."""
        norm, eps = self.norm(), self.cfg.layer_norm_eps
        if self.pooling == "first":
            return layers.layer_norm(hidden[:, 0], norm["scale"], norm["bias"], eps).astype(
                jnp.float32
            )
        h = layers.layer_norm(hidden, norm["scale"], norm["bias"], eps).astype(jnp.float32)
        if mask is None:
            return jnp.mean(h, axis=1)
        m = mask.astype(jnp.float32)[..., None]  # [b, l, 1]
        # A row with no real token (a filler row) pools to zeros, not NaN.
        return jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)

    def __call__(
        self,
        hidden: Array,
        mask: Array | None = None,
        key: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> Array:
        """hidden [b, l, 2m], mask bool [b, l] (True = real; None: all) -> logits [b, n_classes]."""
        k1, k2 = _split(key, 2)
        x = layers.dropout(self.pool(hidden, mask), self.cfg.dropout, k1, deterministic)
        x = jnp.tanh(self.dense(x))
        x = layers.dropout(x, self.cfg.dropout, k2, deterministic)
        return self.out_proj(x)


class SpanHead(nn.Module):
    """Start and end of a span (HF ReformerForQuestionAnswering's `qa_outputs`).

    hidden [b, l, 2m] -> LayerNorm -> dropout -> Dense(2m -> 2) -> (start, end)
    float32 logits, each [b, l]. Padding positions get -MASK_PENALTY, so a
    softmax gives them no mass and argmax never picks one (unless a row has
    no real position at all).
    """

    cfg: object  # reformer_jax.config.ReformerConfig

    def setup(self):
        self.norm = layers.LayerNormParams(2 * self.cfg.d_model)
        self.qa_outputs = nn.Dense(2, name="qa_outputs")

    def __call__(
        self,
        hidden: Array,
        mask: Array | None = None,
        key: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> tuple[Array, Array]:
        """hidden [b, l, 2m], mask bool [b, l] (True = real) -> (start, end) logits [b, l]."""
        norm = self.norm()
        h = layers.layer_norm(hidden, norm["scale"], norm["bias"], self.cfg.layer_norm_eps)
        h = layers.dropout(h.astype(jnp.float32), self.cfg.dropout, key, deterministic)
        logits = self.qa_outputs(h)  # [b, l, 2]
        if mask is not None:
            logits = jnp.where(mask[..., None], logits, -attention.MASK_PENALTY)
        return logits[..., 0], logits[..., 1]
