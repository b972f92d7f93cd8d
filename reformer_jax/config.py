"""ReformerConfig: everything that shapes a Reformer stack, in groups.

    ReformerConfig     what the model is (saved with every checkpoint)
    RunSettings        how a step runs: chunk sizes and rematerialisation, which
                       change memory and speed but not what is computed (a
                       setting of each run, never saved as the model's identity)
    LEGACY_RUN_FIELDS  the RunSettings fields older ReformerConfigs held

ReformerConfig's fields are grouped as the class lists them: shape, LSH
attention (`chunk_len`, `n_chunks_before`, ... as in the paper's §2), local
attention (the same names with a `local_` prefix), positions, dropout.
"""

from __future__ import annotations

import dataclasses

import jax

from reformer_jax import kinds, lsh
from reformer_jax.kernels.window import IMPLS as ATTENTION_IMPLS
from reformer_jax.positions import check_axial

ACTIVATIONS = ("relu", "gelu", "gelu_exact", "silu")
POS_ENCODINGS = ("axial", "sinusoidal", "none")


@dataclasses.dataclass(frozen=True)
class ReformerConfig:
    """Everything that shapes a ReformerLM. Defaults: a small LSH language model.

    attention_kinds is the per-layer cycle of kinds (reformer_jax/kinds.py:
    "lsh", "local", "full", "full_shared"); n_layers must be a multiple of its
    length. n_buckets=None uses the paper's 2L/c (docs/algorithm.md §1.2).
    pos_encoding is "axial" (axial_shape and axial_dims), "sinusoidal" or
    "none"; left as "auto" it is axial when axial_shape is set.

    Fields that imported checkpoints need (reformer_jax.convert), each
    defaulting to the behaviour trained models here already have:
    layer_norm_eps (HF transformers uses 1e-12); hash_seed (fixed LSH
    rotations: layer i hashes with fold_in(key(hash_seed), i) on every call,
    instead of rotations drawn from the call's key); shift_inputs (False: the
    model reads tokens as given, so position t predicts token t + 1, as HF's
    ReformerModelWithLMHead does); local_n_chunks_before/after (the local
    layers' window when it differs from the LSH layers'; None = the same);
    window_rule ("hf": HF transformers' windows and padding in the LSH and
    local layers, see the field's comment).
    """

    # Shape.
    vocab_size: int = 256
    max_len: int = 1024
    d_model: int = 256
    d_ff: int = 512
    n_heads: int = 4
    d_head: int = 64
    n_layers: int = 2
    attention_kinds: tuple[str, ...] = ("lsh",)
    ff_activation: str = "relu"
    causal: bool = True
    cross_attention: bool = False  # a cross-attention half per block (decoders of enc-dec)
    # The encoder of an encoder-decoder (reformer_jax/encdec.py; the fields above describe
    # its decoder): None = the decoder's n_layers / attention_kinds.
    n_encoder_layers: int | None = None
    encoder_attention_kinds: tuple[str, ...] | None = None
    share_embeddings: bool = True  # one token embedding for source and target
    reversible: bool = True
    dtype: str = "float32"
    layer_norm_eps: float = 1e-6
    shift_inputs: bool = True  # a setting of the LM head (reformer_jax/heads.py)
    # LSH attention (docs/algorithm.md §1): its chunks and their window.
    chunk_len: int = 64
    n_chunks_before: int = 1
    n_chunks_after: int | None = None  # None: 0 if causal, else 1 (paper §2, trax's encoders)
    n_hashes: int = 2
    n_buckets: int | tuple[int, ...] | None = None
    dedup: bool = False
    hash_seed: int | None = None
    # Local attention (docs/algorithm.md §2): local_* (None: the same as LSH's window).
    local_chunk_len: int = 128
    local_n_chunks_before: int | None = None
    local_n_chunks_after: int | None = None
    # The windows of both chunked kinds (docs/algorithm.md, "Window rules"): "reformer", this
    # package's (LSH windows hold each chunk once; local windows do not wrap around), or "hf",
    # HF transformers' (every window wraps around all of a sequence's chunks, holds a chunk as
    # often as HF's rolled copies do, and padding sorts as HF sorts it), which
    # reformer_jax.convert sets so that a converted checkpoint computes what it was trained to.
    window_rule: str = "reformer"
    # Positions (docs/algorithm.md §5).
    pos_encoding: str = "auto"  # "axial" | "sinusoidal" | "none"; "auto": axial if axial_shape
    axial_shape: tuple[int, ...] | None = None
    axial_dims: tuple[int, ...] | None = None
    # Dropout.
    dropout: float = 0.0
    attention_dropout: float | None = None  # None: same as dropout

    def __post_init__(self):
        # Sequences given as lists (gin, JSON) become tuples so the config hashes.
        for name in (
            "attention_kinds",
            "encoder_attention_kinds",
            "n_buckets",
            "axial_shape",
            "axial_dims",
        ):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.attention_dropout is None:
            object.__setattr__(self, "attention_dropout", self.dropout)
        if self.pos_encoding == "auto":  # the name before "axial" and "sinusoidal" were spelled out
            encoding = "sinusoidal" if self.axial_shape is None else "axial"
            object.__setattr__(self, "pos_encoding", encoding)
        self.validate()

    def validate(self) -> None:
        positive = (
            "vocab_size",
            "max_len",
            "d_model",
            "d_ff",
            "n_heads",
            "d_head",
            "n_layers",
            "chunk_len",
            "local_chunk_len",
            "n_hashes",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ReformerConfig.{name} must be a positive int, got {value!r}.")
        cycle = self.attention_kinds
        if not cycle or any(k not in kinds.KINDS for k in cycle):
            raise ValueError(
                f"ReformerConfig.attention_kinds={cycle!r}: each kind must be one of "
                f"{tuple(kinds.KINDS)}."
            )
        if self.n_layers % len(cycle):
            raise ValueError(
                f"n_layers={self.n_layers} is not a multiple of the attention cycle "
                f"{cycle} (length {len(cycle)}): layers are stacked per cycle position, so "
                f"use n_layers = {len(cycle)} * k."
            )
        if self.n_buckets is not None:
            lsh.bucket_factors(self.n_buckets)
        if self.n_encoder_layers is not None or self.encoder_attention_kinds is not None:
            enc_layers = self.n_layers if self.n_encoder_layers is None else self.n_encoder_layers
            enc_cycle = self.encoder_attention_kinds or cycle
            if isinstance(enc_layers, bool) or not isinstance(enc_layers, int) or enc_layers <= 0:
                raise ValueError(
                    f"ReformerConfig.n_encoder_layers must be a positive int, got {enc_layers!r}."
                )
            if any(k not in kinds.KINDS for k in enc_cycle):
                raise ValueError(
                    f"ReformerConfig.encoder_attention_kinds={enc_cycle!r}: each kind must be one "
                    f"of {tuple(kinds.KINDS)}."
                )
            if enc_layers % len(enc_cycle):
                raise ValueError(
                    f"n_encoder_layers={enc_layers} is not a multiple of the encoder's attention "
                    f"cycle {enc_cycle} (length {len(enc_cycle)}): use n_encoder_layers = "
                    f"{len(enc_cycle)} * k."
                )
        if self.ff_activation not in ACTIVATIONS:
            raise ValueError(
                f"ff_activation={self.ff_activation!r}; use one of {sorted(ACTIVATIONS)}."
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}.")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding={self.pos_encoding!r}; use one of {POS_ENCODINGS}.")
        if (self.axial_shape is None) != (self.axial_dims is None):
            raise ValueError("set both axial_shape and axial_dims, or neither.")
        if self.pos_encoding == "axial" and self.axial_shape is None:
            raise ValueError("pos_encoding='axial' needs axial_shape and axial_dims.")
        if self.axial_shape is not None:
            check_axial(self.axial_shape, self.axial_dims, self.max_len, self.d_model)
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r}; use 'float32' or 'bfloat16'.")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            raise ValueError(
                f"layer_norm_eps must be a positive float, got {self.layer_norm_eps!r}."
            )
        if self.hash_seed is not None and (
            isinstance(self.hash_seed, bool) or not isinstance(self.hash_seed, int)
        ):
            raise ValueError(
                f"hash_seed must be an int (fixed LSH rotations) or None, got {self.hash_seed!r}."
            )
        if self.window_rule not in lsh.WINDOW_RULES:
            raise ValueError(
                f"window_rule={self.window_rule!r}; use one of {lsh.WINDOW_RULES} ('hf': HF "
                "transformers' windows, as reformer_jax.convert sets for its checkpoints)."
            )
        if self.window_rule == "hf" and self.dedup:
            raise ValueError(
                "dedup=True needs window_rule='reformer': HF transformers' windows count every "
                "copy of a key, and App. A's correction is defined for ours."
            )
        for name in ("n_chunks_before", "n_chunks_after") + tuple(
            f"local_{n}" for n in ("n_chunks_before", "n_chunks_after")
        ):
            value = getattr(self, name)
            if value is None and name != "n_chunks_before":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}.")

    def encoder_config(self) -> ReformerConfig:
        """The encoder stack's config in an encoder-decoder: bidirectional, no cross-attention,
        `n_encoder_layers` layers of `encoder_attention_kinds` (None: the decoder's)."""
        return self.replace(
            causal=False,
            cross_attention=False,
            n_layers=self.n_layers if self.n_encoder_layers is None else self.n_encoder_layers,
            attention_kinds=self.encoder_attention_kinds or self.attention_kinds,
            n_encoder_layers=None,
            encoder_attention_kinds=None,
        )

    @property
    def n_groups(self) -> int:
        return self.n_layers // len(self.attention_kinds)

    def lsh_buckets(self, length: int) -> int | tuple[int, ...]:
        """Buckets per round: as configured, or the paper's default for `length`."""
        if self.n_buckets is not None:
            return self.n_buckets
        return lsh.default_n_buckets(lsh.round_up(length, self.chunk_len), self.chunk_len)

    def lsh_window(self, causal: bool | None = None) -> tuple[int, int]:
        """(chunks before, chunks after) of the LSH layers' window for `causal` (default cfg's).

        n_chunks_after=None looks one chunk ahead in bidirectional attention
        and none in causal attention, where every key ahead is masked anyway.
        """
        causal = self.causal if causal is None else causal
        after = self.n_chunks_after
        return self.n_chunks_before, (0 if causal else 1) if after is None else after

    def local_window(self, causal: bool | None = None) -> tuple[int, int]:
        """(chunks before, chunks after) of the local layers' window (None fields: LSH's)."""
        lsh_before, lsh_after = self.lsh_window(causal)
        before, after = self.local_n_chunks_before, self.local_n_chunks_after
        return (
            lsh_before if before is None else before,
            lsh_after if after is None else after,
        )

    def lsh_layers(self) -> list[int]:
        """Indices of the layers that hash (the keys of `buckets`)."""
        cycle = self.attention_kinds
        return [i for i in range(self.n_layers) if kinds.get(cycle[i % len(cycle)]).hashes]

    def replace(self, **changes) -> ReformerConfig:
        return dataclasses.replace(self, **changes)


# "auto" run settings: chosen for you, by the sequence length (`RunSettings.resolved`) or,
# under a memory budget, by the planner's search (reformer_jax/budget.py).
AUTO = "auto"
# With "auto", sequences longer than this run their feed-forward and loss in chunks of
# this many positions. At 64K tokens 8,192-position chunks keep the compiled step within
# 0.2% of 4,096-position ones (docs/benchmarks.md); shorter sequences run whole, as before.
AUTO_CHUNK = 8192


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How a step runs; none of these changes a result beyond float rounding.

    ff_chunk_size: positions per chunk of the position-wise parts (the
      feed-forward, the attention projections, cross-attention queries);
      None = the whole sequence at once (paper §3, "Chunking").
    loss_chunk_size: positions per chunk of the LM head's logits and loss.
    attention_head_chunk: heads per step of the attention; None = all at once.
    remat: with a non-reversible stack, rematerialise each layer group in the
      backward pass.
    attention_impl: how LSH and local layers attend (docs/algorithm.md, "The
      fused kernel"): "xla" (jnp, the reference), "pallas" (the fused GPU
      kernel), "auto" (the kernel on a GPU where it takes the chunk and head
      sizes, jnp elsewhere), "interpret" (the kernel in Pallas's interpret
      mode, on any backend; slow, for checks). The kernel draws different
      dropout bits from the jnp path; everything else agrees to rounding.

    The first four default to "auto": without a memory budget,
    `resolved(length)` (chunks of AUTO_CHUNK positions above AUTO_CHUNK, all
    heads, no remat); with `train.memory_budget`, the budget's search. An
    explicit value, None included, is used as given. attention_impl defaults
    to "xla" until the kernel is timed on a GPU (docs/benchmarks.md).
    """

    ff_chunk_size: int | None | str = AUTO
    loss_chunk_size: int | None | str = AUTO
    attention_head_chunk: int | None | str = AUTO
    remat: bool | str = AUTO
    attention_impl: str = "xla"

    def __post_init__(self):
        for name in ("ff_chunk_size", "loss_chunk_size", "attention_head_chunk"):
            value = getattr(self, name)
            if (
                value is not None
                and value != AUTO
                and (isinstance(value, bool) or not isinstance(value, int) or value <= 0)
            ):
                raise ValueError(
                    f"RunSettings.{name} must be a positive int, None or 'auto', got {value!r}."
                )
        if not isinstance(self.remat, bool) and self.remat != AUTO:
            raise ValueError(
                f"RunSettings.remat must be True, False or 'auto', got {self.remat!r}."
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"RunSettings.attention_impl must be one of {ATTENTION_IMPLS}, "
                f"got {self.attention_impl!r}."
            )

    def resolved(self, length: int) -> RunSettings:
        """These settings for sequences of `length` positions, "auto" fields replaced:
        feed-forward and loss chunks of AUTO_CHUNK positions when length > AUTO_CHUNK
        (else the whole sequence), all heads at once, no remat."""
        chunk = AUTO_CHUNK if length > AUTO_CHUNK else None
        auto = {
            "ff_chunk_size": chunk,
            "loss_chunk_size": chunk,
            "attention_head_chunk": None,
            "remat": False,
        }
        return dataclasses.replace(
            self, **{name: value for name, value in auto.items() if getattr(self, name) == AUTO}
        )

    def check(self, cfg: ReformerConfig, backend: str | None = None) -> None:
        """Errors for settings that do not fit the model `cfg` on `backend` (default: JAX's)."""
        backend = jax.default_backend() if backend is None else backend
        if self.attention_impl == "pallas" and backend != "gpu":
            raise ValueError(
                f"RunSettings.attention_impl='pallas' runs only on a GPU, and this run's backend "
                f"is {backend}: use 'auto' (the kernel where it can run, jnp elsewhere), 'xla', "
                "or 'interpret' (the kernel interpreted, slow)."
            )
        h = self.attention_head_chunk
        if h not in (None, AUTO) and cfg.n_heads % h:
            raise ValueError(
                f"RunSettings.attention_head_chunk={h} must divide n_heads={cfg.n_heads} (or be "
                "None for all heads at once)."
            )


# The RunSettings fields that older ReformerConfigs held (attention_impl never was one).
LEGACY_RUN_FIELDS = ("ff_chunk_size", "loss_chunk_size", "attention_head_chunk", "remat")
