"""Padding changes nothing: the pad-invariance property of every attention kind.

A batch of sequences of different lengths, padded to one length and masked,
gives every sequence, at every real position, the hidden states it gets
alone without any padding, and the gradient of a loss over the real
positions is the sum of the sequences' own gradients. Checked causal and
bidirectional, reversible and not, on a stack whose layers cycle through
every attention kind (a kind that let padding in would change every later
layer), with a fixed n_buckets (the automatic 2L/c count changes with the
length on purpose, docs/algorithm.md, "Padding").
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.config import ReformerConfig, RunSettings
from reformer_jax.model import ReformerStack

LENGTHS = (13, 21)  # neither a multiple of the chunk (4): the chunk round-up pads too
PADDED = 31  # room for 10 and 18 pads, more than a chunk of them


def _cfg(causal, reversible):
    return ReformerConfig(
        vocab_size=16,
        max_len=32,
        d_model=16,
        d_ff=32,
        n_heads=2,
        d_head=8,
        n_layers=4,  # each layer after the first reads the previous outputs at the pads
        attention_kinds=("lsh", "local", "full", "full_shared"),
        causal=causal,
        reversible=reversible,
        chunk_len=4,
        local_chunk_len=4,
        n_hashes=2,
        n_buckets=4,
        pos_encoding="sinusoidal",
    )


# Causal and bidirectional, reversible (custom VJP) and plain (autodiff): the
# fourth combination, causal and plain, adds no path the others miss (35 s of CI).
@pytest.mark.parametrize(
    "causal,reversible",
    [(True, True), (False, True), (False, False)],
    ids=["causal-reversible", "bidirectional-reversible", "bidirectional-plain"],
)
def test_padded_batch_equals_each_sequence_alone(causal, reversible):
    cfg = _cfg(causal, reversible)
    stack = ReformerStack(cfg)
    seed = 2 * causal + reversible
    k_tok, k_init, k_probe, k_hash, k_pad = jax.random.split(jax.random.key(seed), 5)
    seqs = [
        jax.random.randint(jax.random.fold_in(k_tok, i), (n,), 0, 16) for i, n in enumerate(LENGTHS)
    ]
    params = jax.jit(stack.init)(k_init, seqs[0][None])["params"]  # eager init takes ~10 s
    # Random tokens under the padding: what sits there must not matter either.
    filler = jax.random.randint(k_pad, (len(LENGTHS), PADDED), 0, 16)
    tokens = jnp.stack([filler[i].at[: len(s)].set(s) for i, s in enumerate(seqs)])
    mask = jnp.arange(PADDED)[None, :] < jnp.array(LENGTHS)[:, None]
    probe = jax.random.normal(k_probe, (PADDED, 2 * cfg.d_model))

    def run(params, tokens, mask):
        """Hidden states and a loss over the real positions: sum(hidden * probe)."""
        hidden = stack.apply({"params": params}, tokens, mask=mask, key=k_hash, deterministic=True)
        real = jnp.ones(tokens.shape, bool) if mask is None else mask
        length = tokens.shape[1]
        return jnp.sum(jnp.where(real[..., None], hidden * probe[:length], 0.0)), hidden

    grad = jax.jit(jax.value_and_grad(run, has_aux=True))
    (_, hidden), g_batch = grad(params, tokens, mask)
    g_alone = []
    for i, s in enumerate(seqs):
        (_, alone), g = grad(params, s[None], None)
        # float32 through four layers: the same arithmetic in a different order.
        np.testing.assert_allclose(hidden[i, : len(s)], alone[0], rtol=1e-5, atol=1e-5)
        g_alone.append(g)
    g_sum = jax.tree_util.tree_map(lambda *g: sum(g), *g_alone)
    for want, got in zip(
        jax.tree_util.tree_leaves(g_sum), jax.tree_util.tree_leaves(g_batch), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_encoder_step_memory_is_flat_in_depth():
    """A bidirectional, padded step's compiled temporaries do not grow with the layers.

    Reversible layers keep no activations: 4 and 24 layers (2 and 12 scanned
    groups of the local/LSH cycle) need the same temporaries, padding mask
    and all (XLA's compiled memory analysis, deterministic).
    """
    length = 2048

    def temp_bytes(n_layers):
        cfg = ReformerConfig(
            vocab_size=16,
            max_len=length,
            d_model=64,
            d_ff=128,
            n_heads=2,
            d_head=32,
            n_layers=n_layers,
            attention_kinds=("local", "lsh"),
            causal=False,
            chunk_len=64,
            local_chunk_len=64,
            pos_encoding="sinusoidal",
        )
        stack = ReformerStack(cfg, RunSettings(ff_chunk_size=512, attention_head_chunk=1))
        tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
        mask = jax.ShapeDtypeStruct((1, length), bool)
        params = jax.eval_shape(lambda: stack.init(jax.random.key(0), jnp.zeros((1, 64), int)))

        def loss(p, t, m):
            hidden = stack.apply(p, t, mask=m, key=jax.random.key(1))
            return jnp.sum(jnp.where(m[..., None], hidden, 0.0))

        compiled = jax.jit(jax.grad(loss)).lower(params, tokens, mask).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    four, twenty_four = temp_bytes(4), temp_bytes(24)
    assert twenty_four <= 1.1 * four, (four, twenty_four)
