"""The Reformer encoder-decoder (paper §5, translation): two reversible stacks and an LM head.

Shapes use the package's einsum legend (reformer_jax/__init__.py): b batch,
s source length, t target length, m d_model, v vocabulary.

    ReformerEncDec(cfg)(source [b, s], target [b, t], *, source_mask, target_weights, ...)
        source -> encoder stack (bidirectional, padding mask; cfg.encoder_config())
               -> concat(y1, y2) -> Dense(2m -> m) -> LayerNorm: memory [b, s, m]
        target shifted right (0 = start) -> decoder stack (causal; each block adds a
               cross-attention half to the memory; cfg with cross_attention=True)
               -> LMHead: log-probs of target [b, t, v] | loss sums

cfg describes the decoder; its `n_encoder_layers` and `encoder_attention_kinds`
the encoder (None: as the decoder). With cfg.share_embeddings (the default,
one shared subword vocabulary as the paper's WMT setting) source and target
tokens share one embedding `embed`; otherwise each stack owns its own.

Both stacks are reversible: the memory is the decoder stack's differentiable
context, whose cotangent (summed over every cross-attention half) flows back
into the encoder's custom VJP, so activation memory stays that of one layer
in the depth of both stacks (docs/algorithm.md §3). Token conventions of the
sequence-to-sequence data (reformer_jax/data/seq2seq.py): id 0 pads and
starts the decoder, id 1 ends a sequence (EOS).

Parameters: {"embed" (shared) | "encoder"/"embed" and "decoder"/"embed",
"encoder": the stack's, "memory": {"kernel", "bias", "norm"},
"decoder": the stack's (blocks with "cross_attention"), "head": LMHead's}.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax import layers
from reformer_jax.config import ReformerConfig, RunSettings
from reformer_jax.heads import LMHead
from reformer_jax.model import ReformerStack, token_embedding

Array = jax.Array

PAD_ID = 0  # padding, and the decoder's start token (the target shifted right)
EOS_ID = 1  # the end of a source or target sequence


def check_encdec_config(cfg: ReformerConfig) -> None:
    """One clear error for a config that cannot be an encoder-decoder's."""
    if not cfg.cross_attention:
        raise ValueError(
            "an encoder-decoder's decoder reads the encoder through cross-attention: set "
            "ReformerConfig.cross_attention = True."
        )
    if not cfg.causal:
        raise ValueError(
            "an encoder-decoder's decoder is causal (the encoder is bidirectional anyway): set "
            "ReformerConfig.causal = True."
        )
    if not cfg.shift_inputs:
        raise ValueError(
            "an encoder-decoder reads its target shifted right: keep "
            "ReformerConfig.shift_inputs = True."
        )


def _split(key: Array) -> tuple[Array, Array, Array]:
    """A call's key -> (encoder, decoder, head) keys."""
    enc, dec, head = jax.random.split(key, 3)
    return enc, dec, head


class MemoryProjection(nn.Module):
    """The encoder's streams [b, s, 2m] -> memory [b, s, m]: Dense(2m -> m), then LayerNorm.

    trax's Reformer averages the two streams before a Dense and a LayerNorm;
    a Dense over their concatenation includes that average.
    """

    cfg: ReformerConfig

    @nn.compact
    def __call__(self, h: Array) -> Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (2 * cfg.d_model, cfg.d_model), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros, (cfg.d_model,), jnp.float32)
        norm = layers.LayerNormParams(cfg.d_model, name="norm")()
        y = jnp.einsum("bsn,nm->bsm", h, kernel.astype(h.dtype), preferred_element_type=jnp.float32)
        y = layers.layer_norm(y + bias, norm["scale"], norm["bias"], cfg.layer_norm_eps)
        return y.astype(dtype)


class ReformerEncDec(nn.Module):
    """Encoder stack, memory projection, decoder stack with cross-attention, LM head."""

    cfg: ReformerConfig
    run: RunSettings = RunSettings()

    def setup(self):
        cfg = self.cfg
        check_encdec_config(cfg)
        shared = token_embedding(cfg) if cfg.share_embeddings else None
        if shared is not None:
            self.embed = shared
        self.encoder = ReformerStack(cfg.encoder_config(), self.run, shared_embedding=shared)
        self.decoder = ReformerStack(cfg, self.run, shared_embedding=shared)
        self.memory = MemoryProjection(cfg)
        self.head = LMHead(cfg)

    def encode(
        self,
        source: Array,
        source_mask: Array | None = None,
        *,
        key: Array | None = None,
        deterministic: bool = True,
        n_hashes: int | None = None,
    ) -> Array:
        """source [b, s] (ids), source_mask bool [b, s] (True = real) -> memory [b, s, m].

        `key` is the encoder's own (dropout and hashing); None: deterministic
        with the fixed key(0).
        """
        if source_mask is None:
            source_mask = jnp.ones(source.shape, bool)
        hidden = self.encoder(
            source,
            mask=source_mask,
            causal=False,
            key=key,
            deterministic=deterministic,
            n_hashes=n_hashes,
        )
        return self.memory(hidden)

    def __call__(
        self,
        source: Array,
        target: Array,
        *,
        source_mask: Array | None = None,
        target_weights: Array | None = None,
        key: Array | None = None,
        deterministic: bool = True,
        n_hashes: int | None = None,
        output: str = "log_probs",
        label_smoothing: float = 0.0,
        exact_match: bool = False,
    ):
        """source [b, s], target [b, t] (ids) -> log-probs [b, t, v] | hidden | loss sums.

        Position j of the output predicts target[:, j] from the source and
        target[:, :j]. target_weights float [b, t] (default all ones) marks the
        real target tokens (0 = padding; the decoder's attention never reads
        them) and weighs the loss. output="loss": float32 sums {"nll",
        "correct", "weight"} (and "objective" with label_smoothing > 0; see
        `TokenHead.token_loss`), and with exact_match "exact" and "rows" (targets
        all predicted right: what greedy decoding reproduces), chunked by
        run.loss_chunk_size.
        """
        if output not in ("log_probs", "hidden", "loss"):
            raise ValueError(f"output={output!r}; use 'log_probs', 'hidden' or 'loss'.")
        if source.ndim != 2 or target.ndim != 2 or source.shape[0] != target.shape[0]:
            raise ValueError(
                f"source and target must be [batch, length] with one batch, got shapes "
                f"{source.shape} and {target.shape}."
            )
        if key is None:
            if not deterministic and (self.cfg.dropout or self.cfg.attention_dropout):
                raise ValueError("training with dropout needs `key`.")
            # Each stack then hashes with its fixed evaluation key, as `encode` alone does.
            enc_key = dec_key = head_key = None
        else:
            enc_key, dec_key, head_key = _split(key)
        if source_mask is None:
            source_mask = jnp.ones(source.shape, bool)
        if target_weights is None:
            target_weights = jnp.ones(target.shape, jnp.float32)
        memory = self.encode(
            source, source_mask, key=enc_key, deterministic=deterministic, n_hashes=n_hashes
        )
        # Decoder input j reads target j - 1 and predicts target j: it is real where target j is.
        y1, y2 = self.decoder(
            self.head.inputs(target),
            mask=target_weights > 0,
            context=memory,
            context_mask=source_mask,
            key=dec_key,
            deterministic=deterministic,
            n_hashes=n_hashes,
            streams=True,
        )
        if output == "hidden":
            return jnp.concatenate([y1, y2], axis=-1)
        if output == "log_probs":
            return self.head(
                jnp.concatenate([y1, y2], axis=-1), head_key, deterministic=deterministic
            )
        return self.head.loss(
            (y1, y2),
            target,
            target_weights,
            head_key,
            loss_chunk_size=self.run.resolved(target.shape[1]).loss_chunk_size,
            deterministic=deterministic,
            label_smoothing=label_smoothing,
            exact_match=exact_match,
        )

    # The pieces cached decoding (reformer_jax/decoding.py) runs on their own.

    def decoder_embed(self, tokens: Array, positions: Array) -> Array:
        """The decoder's embedding of tokens [b, n] at int positions [b, n] -> [b, n, m]."""
        return self.decoder.embed(tokens, positions)

    def log_probs(self, hidden: Array) -> Array:
        """The head on the decoder's hidden states [..., 2m] -> log-probs [..., v]."""
        return self.head(hidden)
