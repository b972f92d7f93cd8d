"""reformer_jax: the Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020) in JAX.

Einsum legend: one meaning per letter across the package, in shape comments,
docstrings and einsum strings.

    b  batch                         h  attention heads
    l  sequence length               g  heads per group (attention_head_chunk)
    m  d_model, one stream's width   d  per-head query/key dim (d_head)
    f  d_ff                          e  per-head value dim
    v  vocabulary                    r  hash rounds (n_hashes)
    u  chunks (attention, feed-      k  rotation columns per round (n_buckets / 2)
       forward or loss chunks)       n  sorted slots, r * l
    c  chunk length                  w  attention window, (before + 1 + after) * c
    p  prompt length (sampling)      s  local-attention ring length (sampling)

Modules, bottom to top: lsh, attention (pure functions) -> layers, reversible
-> model -> sampling, data, optim, checkpoints, metrics -> train (the library
trainer) -> cli (gin and flags) -> the entry points `python -m
reformer_jax.train`, `reformer_jax.evaluate`, `reformer_jax.memory`,
`reformer_jax.sample` and `reformer_jax.convert` (HF checkpoints).
"""
