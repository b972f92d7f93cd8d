"""reformer_jax: the Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020) in JAX.

Einsum legend: one meaning per letter across the package, in shape comments,
docstrings and einsum strings.

    b  batch                         h  attention heads
    l  sequence length               a  heads per head chunk (attention_head_chunk)
    m  d_model, one stream's width   d  per-head query/key dim (d_head)
    f  d_ff                          e  per-head value dim
    v  vocabulary                    r  hash rounds (n_hashes)
    u  chunks (attention, feed-      k  rotation columns per round (n_buckets / 2)
       forward or loss chunks)       n  sorted slots, r * l
    c  chunk length                  w  attention window, (before + 1 + after) * c
    p  prompt length (sampling)      s  local-attention ring length (decoding)
    t  context (memory) length       g  layer groups (n_layers / len(attention_kinds))

"Group" means only that: the layers of one pass through the attention cycle,
whose parameters are stacked and scanned together.

Modules, bottom to top:

    lsh, dropout, attention,         pure functions: hashing, sorting, dropout, the jnp
    kernels                          attention and its fused Pallas kernel
    kinds                            one object per attention kind (the registry)
    positions, config, chunked       positional encodings; ReformerConfig and
                                     RunSettings; the chunk loops' custom VJPs
    layers, reversible               the halves of a block; the reversible stack
    heads, model, encoders           LM, MLM, classifier and span heads; ReformerStack
                                     and ReformerLM; the encoders (stack + head)
    tasks, decoding, sampling        what is trained; cached decoding; sampling
    data, optim, metrics, sharding,  inputs, optimizers, metric files, the mesh,
    checkpoints, flops, profiling    checkpoints, FLOPs and benchmark probes
    evaluation, trainer              the Evaluator and Table 2 variants; the loop
    cli                              gin and flags
    the entry points                 `python -m reformer_jax.train`, `.evaluate`,
                                     `.memory`, `.sample`, `.convert` (HF checkpoints)
"""
