"""The attention kinds: one object per kind, owning everything that differs between them.

Shapes use the package's einsum legend (reformer_jax/__init__.py): b batch,
h heads, l length, d per-head dim (e for values), r hash rounds, s local ring
length, k rotation columns per round; a leading `g` on a cache array is the
layer-group axis (one slice per layer of that cycle position).

    get(name) -> AttentionKind          "lsh" | "local" | "full" | "full_shared"
    KINDS                               the registry, name -> kind
    attend_one(q, k, v, admissible)     one query per row against a cache (decoding)
    lsh_decode_attention(q, k, v, buckets, pos, *, n_buckets, window, dedup)
                                        the LSH kind's decode-time rule
                                        (docs/algorithm.md, "LSH at decode time")
    hf_lengths(cfg, length, mask)       the lengths HF transformers runs the chunked
                                        kinds at (cfg.window_rule "hf")

An `AttentionKind` has

    name, family                        its config name; the parameter family that
                                        names its block ("shared_qk", "local", "full")
    shared_qk                           no W_k: the keys are the normalised queries
    hashes                              returns LSH buckets (replayed in the backward pass)
    attend(cfg, q, k, v, ...)           training/evaluation attention over [b, h, l, .]
    init_cache(cfg, batch, ...)         the decoding cache of one cycle position
    prefill(cfg, q, k, v, entry, g)     attention over a prompt, filling layer g's cache
    decode(cfg, q, k, v, entry, g, pos) attention of one new position against the cache
    chunk_length(cfg)                   a chunked kind's chunk length (else None)
    flops(cfg, batch, length)           matmul FLOPs of the attention half's forward
    variant(name)                       the kind this layer takes in an evaluation
                                        column of the paper's Table 2 ("full", "lsh-N")

Layers (reformer_jax/layers.py), decoding (reformer_jax/decoding.py), the FLOPs
count and evaluation ask this registry; nothing else dispatches on a kind's
name. A new kind is one more subclass registered in KINDS.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax import attention, lsh

Array = jax.Array


def write_at(stack: Array, value: Array, g: int, pos: Array, axis: int = 3) -> Array:
    """stack with `value` written at layer group g and position pos (on `axis`), in place.

    stack: k/v [g, b, h, l, d] (axis 3) or buckets [g, b, h, r, l] (axis 4);
    value: the slice without the group and position axes.
    """
    update = jnp.expand_dims(value, (0, axis)).astype(stack.dtype)
    start = [jnp.int32(0)] * stack.ndim
    start[0], start[axis] = jnp.int32(g), jnp.asarray(pos, jnp.int32)
    return jax.lax.dynamic_update_slice(stack, update, start)


def _window_flops(batch: int, length: int, heads: int, d_head: int, window: int) -> float:
    """Logits and probabilities @ values: 2 matmuls of [t, d] x [d, window] per head."""
    return 2.0 * 2 * batch * length * heads * d_head * window


# ----------------------------------------------------------------------------- one query at a time


def attend_one(q, k, v, admissible, self_mask=None, bias=None):
    """q [b, h, (r,) d] against k [b, h, (r,) w, d]; returns out [b, h, (r,) e], lse float32.

    The masks and the softmax are those of training's chunked kernel.
    """
    logits = jnp.einsum("...d,...wd->...w", q, k, preferred_element_type=jnp.float32)
    logits = logits + jnp.where(admissible, 0.0, -attention.MASK_PENALTY)
    if self_mask is not None:
        logits = logits - jnp.where(self_mask, attention.SELF_PENALTY, 0.0)
    if bias is not None:
        logits = logits + bias
    peak = jnp.max(logits, axis=-1, keepdims=True)
    unnorm = jnp.exp(logits - peak)
    total = jnp.sum(unnorm, axis=-1, keepdims=True)
    probs = unnorm / total
    lse = (peak + jnp.log(total))[..., 0]
    out = jnp.einsum(
        "...w,...we->...e", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.astype(v.dtype), lse


def lsh_decode_attention(
    q: Array,
    k: Array,
    v: Array,
    buckets: Array,
    pos: Array,
    *,
    n_buckets: int,
    window: int,
    dedup: bool = False,
) -> Array:
    """Decode-time LSH attention (docs/algorithm.md, "LSH at decode time") for the token at `pos`.

    q: [b, h, d] the new token's (unnormalised) query; k: [b, h, l, d]
    normalised keys and v: [b, h, l, e] values of positions 0..pos (the new
    token's already written at `pos`); buckets: int32 [b, h, r, l], likewise.
    Entries past `pos` are ignored. Returns [b, h, e].
    """
    length = k.shape[2]
    if n_buckets * length >= 2**31:
        raise ValueError(
            f"n_buckets ({n_buckets}) x cache length ({length}) overflows int32 sort keys; "
            "use fewer buckets or a shorter max_len for decoding."
        )
    positions = jnp.arange(length, dtype=jnp.int32)
    mine = jax.lax.dynamic_index_in_dim(buckets, pos, axis=3, keepdims=True)  # [b, h, r, 1]
    # Cyclic (bucket, position) order ending at the new token: its own bucket
    # ranks highest, then the next lower buckets; future slots rank below all.
    rank = jnp.mod(buckets - mine - 1, n_buckets) * length + positions
    rank = jnp.where(positions <= pos, rank, -1)
    in_window = rank >= _window_threshold(rank, window, n_buckets * length)  # [b, h, r, l]
    # One [l] row of logits serves every round: rounds differ only in their window.
    logits = jnp.einsum("bhd,bhld->bhl", q, k, preferred_element_type=jnp.float32)
    logits = logits[:, :, None] - jnp.where(positions == pos, attention.SELF_PENALTY, 0.0)
    logits = logits + jnp.where(in_window, 0.0, -attention.MASK_PENALTY)
    if dedup:
        # N_j: in how many rounds' windows key j appears (paper App. A).
        counts = jnp.sum(in_window, axis=2, keepdims=True).astype(jnp.float32)
        logits = logits - jnp.log(jnp.maximum(counts, 1.0))
    peak = jnp.max(logits, axis=-1, keepdims=True)
    unnorm = jnp.exp(logits - peak)
    total = jnp.sum(unnorm, axis=-1, keepdims=True)
    lse = (peak + jnp.log(total))[..., 0]  # [b, h, r]
    out = jnp.einsum(
        "bhrl,bhle->bhre", (unnorm / total).astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    weights = jax.nn.softmax(lse, axis=2)[..., None]  # paper eq. 14
    return jnp.sum(out * weights, axis=2).astype(v.dtype)


def _window_threshold(rank: Array, window: int, bound: int) -> Array:
    """The window-th largest value of each row of rank [..., l] -> [..., 1] (0 if fewer valid).

    Valid ranks are distinct integers in [0, bound); invalid ones are -1. A
    bisection on the threshold (about log2(bound) counting passes over the
    row) replaces a top-k, which XLA's CPU backend runs as a slow sort.
    """
    lo = jnp.zeros(rank.shape[:-1], jnp.int32)  # count(rank >= lo) >= window, or lo = 0
    hi = jnp.full(rank.shape[:-1], bound, jnp.int32)  # count(rank >= hi) = 0 < window

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(rank >= mid[..., None], axis=-1) >= window
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, max(bound, 2).bit_length(), halve, (lo, hi))
    return lo[..., None]


# ----------------------------------------------------------------------------- HF's lengths


def hf_lengths(cfg, length: int, mask: Array | None) -> tuple[int, int | Array]:
    """The lengths HF transformers runs cfg's chunked layers at (window_rule "hf").

    HF rounds a sequence up to a multiple of the lcm of its layers' chunk
    lengths unless it fits the smallest chunk; here a sequence ends at its
    last real token (mask: bool [b, l]), so the padding past it changes
    nothing. Returns (the static length a batch of `length` runs at, each
    sequence's length: that int without a mask, else int32 [b]).
    """
    chunks = [n for n in (get(name).chunk_length(cfg) for name in cfg.attention_kinds) if n]
    lcm, smallest = math.lcm(*chunks), min(chunks)
    padded = length if length % lcm == 0 or length <= smallest else lsh.round_up(length, lcm)
    if mask is None:
        return padded, padded
    last = lsh.sequence_ends(mask)
    return padded, jnp.where((last % lcm == 0) | (last <= smallest), last, -(-last // lcm) * lcm)


def _hf_inputs(cfg, mask, arrays, axes):
    """mask and arrays (length on `axes`) padded to HF's length (`hf_lengths`), which
    the mask marks as padding; returns (mask, arrays, each sequence's length)."""
    length = arrays[0].shape[2]
    padded, seq_len = hf_lengths(cfg, length, mask)
    if padded > length:
        mask = jnp.ones((arrays[0].shape[0], length), bool) if mask is None else mask
        mask = lsh.pad_length(mask, padded, axis=1, value=False)
        pad = lambda a, axis: a if a is None else lsh.pad_length(a, padded, axis)
        arrays = [pad(a, axis) for a, axis in zip(arrays, axes, strict=True)]
    return mask, arrays, seq_len


# ----------------------------------------------------------------------------- the kinds


class AttentionKind(abc.ABC):
    """The interface (and the parts every kind shares); see the module docstring."""

    name: str
    family: str
    shared_qk: bool = False
    hashes: bool = False  # computes LSH buckets, which the reversible backward pass replays

    def __repr__(self) -> str:
        return f"<attention kind {self.name!r}>"

    # -- training --------------------------------------------------------------------------

    @abc.abstractmethod
    def attend(
        self,
        cfg,
        q: Array,
        k: Array | None,
        v: Array,
        *,
        causal: bool,
        mask: Array | None = None,
        n_hashes: int | None = None,
        hash_key: Array | None = None,
        buckets: Array | None = None,
        dropout_rate: float = 0.0,
        dropout_key: Array | None = None,
        impl: str = "xla",
    ) -> tuple[Array, Array | None]:
        """q, k (None if shared_qk), v: [b, h, l, .] -> (out [b, h, l, e], LSH buckets or None).

        `impl` (RunSettings.attention_impl) picks the chunked kinds' kernel
        (`kernels.window.resolve_impl`); the full kinds have no chunks and ignore it.
        """

    # -- decoding --------------------------------------------------------------------------

    def cache_len(self, cfg) -> int:
        """Positions a layer's key/value cache holds."""
        return cfg.max_len

    def init_cache(
        self,
        cfg,
        batch: int,
        *,
        n_hashes: int,
        layers: Sequence[int],
        key: Array | None = None,
    ) -> dict[str, Array]:
        """Zero caches of the len(layers) layers of one cycle position (model-wide indices)."""
        shape = (len(layers), batch, cfg.n_heads, self.cache_len(cfg), cfg.d_head)
        dtype = jnp.dtype(cfg.dtype)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    def cache_keys(self, q: Array, k: Array | None) -> Array:
        """The keys a cache stores: k, or the normalised queries of a shared-QK kind."""
        return attention.normalize_keys(q) if self.shared_qk else k

    def prefill(self, cfg, q, k, v, entry, g: int, *, n_hashes: int) -> tuple[Array, dict]:
        """Causal attention over a prompt q, k, v [b, h, n, .]; writes layer g's cache."""
        out, _ = self.attend(cfg, q, k, v, causal=True, n_hashes=n_hashes)
        n = q.shape[2]
        entry = dict(entry)
        entry["k"] = entry["k"].at[g, :, :, :n].set(self.cache_keys(q, k))
        entry["v"] = entry["v"].at[g, :, :, :n].set(v)
        return out, entry

    def decode(self, cfg, q, k, v, entry, g: int, pos: Array) -> tuple[Array, dict]:
        """One new position: q, k, v [b, h, .] at `pos` -> (out [b, h, e], entry updated)."""
        entry = dict(entry)
        entry["k"] = write_at(entry["k"], self.cache_keys(q, k), g, pos)
        entry["v"] = write_at(entry["v"], v, g, pos)
        positions = jnp.arange(entry["k"].shape[3])
        self_mask = positions == pos if self.shared_qk else None
        if not self.shared_qk:
            q = q * jnp.asarray(cfg.d_head**-0.5, q.dtype)
        out, _ = attend_one(q, entry["k"][g], entry["v"][g], positions <= pos, self_mask=self_mask)
        return out, entry

    # -- accounting and evaluation -----------------------------------------------------------

    def window(self, cfg, length: int) -> int:
        """Keys each query's logits are computed against (masked or not)."""
        return length

    def chunk_length(self, cfg) -> int | None:
        """The chunk length of a chunked kind (its windows follow cfg.window_rule), else None."""
        return None

    def flops(self, cfg, batch: int, length: int) -> float:
        """Matmul FLOPs of the attention half's forward: projections and attention."""
        n_proj = 3 if self.shared_qk else 4  # q (= k), v, o (+ k)
        proj = 2.0 * batch * length * cfg.d_model * cfg.n_heads * cfg.d_head * n_proj
        return proj + _window_flops(
            batch, length, cfg.n_heads, cfg.d_head, self.window(cfg, length)
        )

    def variant(self, name: str) -> str:
        """The kind of this layer in evaluation column `name` ("full" or "lsh-N")."""
        return self.name


class FullAttention(AttentionKind):
    """Dense scaled dot-product attention with W_q, W_k, W_v (docs/algorithm.md §2)."""

    name, family = "full", "full"

    def attend(self, cfg, q, k, v, *, causal, mask=None, dropout_rate=0.0, dropout_key=None, **_):
        out = attention.full_attention(
            q, k, v, causal=causal, mask=mask, dropout_rate=dropout_rate, dropout_key=dropout_key
        )
        return out, None


class SharedQKFullAttention(AttentionKind):
    """Dense shared-QK attention: LSH's parameters, every key visible (paper Table 2, "Full")."""

    name, family, shared_qk = "full_shared", "shared_qk", True

    def attend(self, cfg, q, k, v, *, causal, mask=None, dropout_rate=0.0, dropout_key=None, **_):
        out = attention.full_attention(
            q,
            None,
            v,
            causal=causal,
            shared_qk=True,
            mask=mask,
            dropout_rate=dropout_rate,
            dropout_key=dropout_key,
        )
        return out, None

    def variant(self, name: str) -> str:
        return "lsh" if name.startswith("lsh-") else self.name


class LocalAttention(AttentionKind):
    """Chunked attention in the original order (docs/algorithm.md §2)."""

    name, family = "local", "local"

    def attend(
        self,
        cfg,
        q,
        k,
        v,
        *,
        causal,
        mask=None,
        dropout_rate=0.0,
        dropout_key=None,
        impl="xla",
        **_,
    ):
        before, after = cfg.local_window(causal)
        out = self._local(
            cfg,
            q,
            k,
            v,
            causal=causal,
            n_chunks_before=before,
            n_chunks_after=after,
            mask=mask,
            dropout_rate=dropout_rate,
            dropout_key=dropout_key,
            impl=impl,
        )
        return out, None

    @staticmethod
    def _local(cfg, q, k, v, *, mask=None, **kw):
        """attention.local_attention under cfg.window_rule ("hf": at HF's length)."""
        length, rule = q.shape[2], {}
        if cfg.window_rule == "hf":
            mask, (q, k, v), seq_len = _hf_inputs(cfg, mask, (q, k, v), (2, 2, 2))
            rule = dict(window_rule="hf", hf_length=seq_len)
        out = attention.local_attention(
            q, k, v, chunk_len=cfg.local_chunk_len, mask=mask, **rule, **kw
        )
        return out[:, :, :length]

    def chunk_length(self, cfg):
        return cfg.local_chunk_len

    def init_cache(self, cfg, batch, *, n_hashes, layers, key=None):
        before = cfg.local_window(causal=True)[0]
        if cfg.window_rule == "hf" and before > 1:
            # HF's window holds a chunk twice while the sequence has at most `before` chunks;
            # the ring cache holds each position once, so decoding would not be the forward.
            raise ValueError(
                f"cached decoding cannot reproduce window_rule='hf' with {before} chunks "
                "before in the local layers (HF's windows count a chunk twice in sequences of "
                f"up to {before} chunks); score whole sequences instead, e.g. with evaluate"
            )
        return super().init_cache(cfg, batch, n_hashes=n_hashes, layers=layers, key=key)

    def cache_len(self, cfg) -> int:
        # A ring of the last (before + 1) chunks: all a causal query can see.
        return (cfg.local_window(causal=True)[0] + 1) * cfg.local_chunk_len

    def prefill(self, cfg, q, k, v, entry, g, *, n_hashes):
        before = cfg.local_window(causal=True)[0]
        out = self._local(cfg, q, k, v, causal=True, n_chunks_before=before)
        n = q.shape[2]
        ring = entry["k"].shape[3]
        keep = min(ring, n)  # the last `keep` positions go to slots position % ring
        slots = np.arange(n - keep, n) % ring
        entry = dict(entry)
        for field, a in (("k", k), ("v", v)):
            entry[field] = (
                entry[field].at[g].set(entry[field][g].at[:, :, slots].set(a[:, :, n - keep :]))
            )
        return out, entry

    def decode(self, cfg, q, k, v, entry, g, pos):
        entry = dict(entry)
        ring = entry["k"].shape[3]
        entry["k"] = write_at(entry["k"], k, g, pos % ring)
        entry["v"] = write_at(entry["v"], v, g, pos % ring)
        # Slot s holds the latest position congruent to s; a query sees its own
        # chunk and n_chunks_before chunks before it, as in training.
        slots = jnp.arange(ring, dtype=jnp.int32)
        key_pos = pos - jnp.mod(pos - slots, ring)
        chunk = cfg.local_chunk_len
        ok = (key_pos >= 0) & (key_pos // chunk >= pos // chunk - cfg.local_window(causal=True)[0])
        q = q * jnp.asarray(cfg.d_head**-0.5, q.dtype)
        out, _ = attend_one(q, entry["k"][g], entry["v"][g], ok)
        return out, entry

    def window(self, cfg, length):
        return cfg.local_chunk_len * (1 + sum(cfg.local_window()))


class LSHAttention(AttentionKind):
    """Shared-QK LSH attention (docs/algorithm.md §1, paper §2)."""

    name, family, shared_qk, hashes = "lsh", "shared_qk", True, True

    def attend(
        self,
        cfg,
        q,
        k,
        v,
        *,
        causal,
        mask=None,
        n_hashes=None,
        hash_key=None,
        buckets=None,
        dropout_rate=0.0,
        dropout_key=None,
        impl="xla",
    ):
        return self._lsh(
            cfg,
            q,
            v,
            key=hash_key,
            n_hashes=cfg.n_hashes if n_hashes is None else n_hashes,
            n_buckets=cfg.lsh_buckets(q.shape[2]),
            causal=causal,
            n_chunks_before=cfg.lsh_window(causal)[0],
            n_chunks_after=cfg.lsh_window(causal)[1],
            buckets=buckets,
            mask=mask,
            dropout_rate=dropout_rate,
            dropout_key=dropout_key,
            impl=impl,
        )

    @staticmethod
    def _lsh(cfg, q, v, *, mask=None, buckets=None, **kw):
        """attention.lsh_attention under cfg.window_rule ("hf": at HF's length)."""
        length, rule = q.shape[2], {}
        if cfg.window_rule == "hf":
            mask, (q, v, buckets), seq_len = _hf_inputs(cfg, mask, (q, v, buckets), (2, 2, 3))
            rule = dict(window_rule="hf", hf_length=seq_len)
        out, buckets = attention.lsh_attention(
            q, v, chunk_len=cfg.chunk_len, dedup=cfg.dedup, mask=mask, buckets=buckets, **rule, **kw
        )
        return out[:, :, :length], buckets[..., :length]

    def chunk_length(self, cfg):
        return cfg.chunk_len

    @staticmethod
    def decode_factors(cfg) -> tuple[int, ...]:
        """Bucket factors of the decoding hash: fixed for max_len, whatever the prompt."""
        return lsh.bucket_factors(cfg.lsh_buckets(cfg.max_len))

    def init_cache(self, cfg, batch, *, n_hashes, layers, key=None):
        entry = super().init_cache(cfg, batch, n_hashes=n_hashes, layers=layers)
        cols = sum(f // 2 for f in self.decode_factors(cfg))
        g, h = len(layers), cfg.n_heads
        entry["buckets"] = jnp.zeros((g, batch, h, n_hashes, cfg.max_len), jnp.int32)
        shape = (h, cfg.d_head, n_hashes, cols)
        if key is None:
            entry["rotations"] = jnp.zeros((g, batch, *shape), jnp.float32)
            return entry

        # One hashing key per sample and layer, fixed for prefill and every step
        # (a token's bucket must not change between writing and reading it):
        # fold_in(fold_in(key, sample), layer), or with cfg.hash_seed the model's
        # own fixed rotations fold_in(key(hash_seed), layer) for every sample.
        def draw(layer, sample):
            if cfg.hash_seed is not None:
                k = jax.random.fold_in(jax.random.key(cfg.hash_seed), layer)
            else:
                k = jax.random.fold_in(jax.random.fold_in(key, sample), layer)
            return jax.random.normal(k, shape, jnp.float32)

        per_layer = lambda layer: jax.vmap(lambda s: draw(layer, s))(jnp.arange(batch))
        entry["rotations"] = jnp.stack([per_layer(i) for i in layers])
        return entry

    def prefill(self, cfg, q, k, v, entry, g, *, n_hashes):
        factors = self.decode_factors(cfg)
        buckets = lsh.hash_with_rotations(q, entry["rotations"][g], factors)  # [b, h, r, n]
        # The decoder's window looks back only (docs/algorithm.md, "LSH at decode time").
        out, _ = self._lsh(
            cfg,
            q,
            v,
            buckets=buckets,
            n_hashes=n_hashes,
            n_buckets=factors,
            causal=True,
            n_chunks_before=cfg.n_chunks_before,
            n_chunks_after=0,
        )
        n = q.shape[2]
        entry = dict(entry)
        entry["k"] = entry["k"].at[g, :, :, :n].set(attention.normalize_keys(q))
        entry["v"] = entry["v"].at[g, :, :, :n].set(v)
        entry["buckets"] = entry["buckets"].at[g, :, :, :, :n].set(buckets)
        return out, entry

    def decode(self, cfg, q, k, v, entry, g, pos):
        factors = self.decode_factors(cfg)
        entry = dict(entry)
        entry["k"] = write_at(entry["k"], attention.normalize_keys(q), g, pos)
        entry["v"] = write_at(entry["v"], v, g, pos)
        new = lsh.hash_with_rotations(q[:, :, None], entry["rotations"][g], factors)
        entry["buckets"] = write_at(entry["buckets"], new[..., 0], g, pos, axis=4)
        out = lsh_decode_attention(
            q,
            entry["k"][g],
            entry["v"][g],
            entry["buckets"][g],
            pos,
            n_buckets=math.prod(factors),
            window=self.decode_window(cfg),
            dedup=cfg.dedup,
        )
        return out, entry

    @staticmethod
    def decode_window(cfg) -> int:
        """Slots a new token's LSH window holds per round (itself included)."""
        return min((cfg.n_chunks_before + 1) * cfg.chunk_len, cfg.max_len)

    def window(self, cfg, length):
        return cfg.n_hashes * cfg.chunk_len * (1 + sum(cfg.lsh_window()))

    def variant(self, name):
        return "full_shared" if name == "full" else self.name


KINDS: dict[str, AttentionKind] = {
    kind.name: kind
    for kind in (LSHAttention(), LocalAttention(), FullAttention(), SharedQKFullAttention())
}


def get(name: str) -> AttentionKind:
    """The kind called `name`; a clear error naming the choices otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attention kind {name!r}; use one of {tuple(KINDS)}.") from None
