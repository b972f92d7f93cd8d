"""Pallas kernels for the accelerator (docs/algorithm.md, "The fused kernel").

Modules:

    window      chunk_attention: the chunked window attention of LSH and local
                layers, fused (GPU through Triton; interpret mode anywhere)
    programs    what runs inside the kernels: tiles, online softmax, dropout hash
"""
