"""Builds the HF transformers Reformer fixtures of tests/test_convert.py and test_hf_encoder.py.

    pip install -e '.[peers]'        # torch, transformers, safetensors
    python scripts/make_hf_fixture.py [--out tests/data/hf] [--cases NAME ...] [--report]

For each case of CASES it makes a tiny random `ReformerModelWithLMHead`, runs
it in eval mode and in float64 on a random batch with `use_cache=True`, and
writes <out>/<case>/:

    config.json, model.safetensors   the checkpoint (float32), via save_pretrained
    expected.npz                     input_ids [b, l] int32, logits [b, l, v]
                                     float64, and buckets_<layer> [b, h, r, l]
                                     int32 for every LSH layer that hashed,
                                     exactly as HF returns them in its cache
                                     (round r's buckets offset by r * n_buckets)
    versions.json                    torch / transformers / safetensors versions

ENCODER_CASES are bidirectional models (`is_decoder=False`: HF's
ReformerForMaskedLM, ReformerForSequenceClassification and
ReformerForQuestionAnswering) run the same way on a batch with an `attention_mask` that pads some
rows; their expected.npz holds input_ids, attention_mask [b, l] int32 (1 =
real token), the head's outputs in float64 (see `OUTPUTS`) and the buckets
of every LSH layer as its forward pass returns them: [b, h, r, L] over HF's
own padded length L (a multiple of the chunk lengths' lcm), pads in HF's
extra bucket, so round r is offset by r * (n_buckets + 1) when the batch
holds padding and by r * n_buckets otherwise. A case with `alone` runs each
row through HF by itself, unpadded (its real tokens only, no
attention_mask), as a user runs inputs of different lengths one at a time:
its outputs are HF's for each input alone, and its rows are padded only in
expected.npz, for reformer_jax to read as one batch.

Converted checkpoints use HF's window rule (ReformerConfig.window_rule
"hf", docs/algorithm.md "Window rules"): windows that wrap around all of a
sequence's chunks, pads included, and repeat a chunk as HF's rolled copies
do; padding in an extra bucket of each round. Under it a padded batch gives
each sequence what HF gives that sequence alone (up to its last real token,
rounded up to a multiple of the chunk lengths' lcm). HF on a padded batch
gives the same only when every row rounds up to the batch's own length;
`check_agreement` refuses a case whose rows do not, since HF's result for
such a row depends on how much padding the batch holds.

SPM_CASES are language models with a SentencePiece vocabulary, like
google/reformer-crime-and-punishment (local and LSH layers, axial positions,
factorised buckets) in miniature. The script trains the vocabulary itself,
with reformer_jax's `train_sentencepiece` (BPE, the model type HF's
ReformerTokenizer reads, on Python's standard library sources; no
third-party text is shipped), and runs the model on a batch of that text's
ids. Their directory also holds spiece.model, and expected.npz also holds
HF ReformerTokenizer's ids for `SPM_SENTENCES` (sentence_ids, flattened, and
sentence_lengths), the sentences in sentences.json. Needs sentencepiece and
protobuf beside transformers.

Parameters are redrawn at trained-model scales (HF's init, N(0, 0.02), makes
every attention nearly uniform, which would hide a wrong mask or sort), and
lm_head.bias is set to a vector that differs from lm_head.decoder.bias: HF
transformers 5.x keeps both but uses only the decoder's, so a converter that
read the other would fail the test. The test needs none of torch,
transformers or network access.

Why float64: with two or more hash rounds, a query whose only admissible keys
are copies of itself (position 0, causally) has every logit at HF's self-mask
value -1e5, where a float32 log-sum-exp is off by up to 4e-3, so HF's float32
probabilities there do not sum to 1 and its float32 logits move by ~4e-3.
The float64 run is HF's model without that rounding (docs/conversion.md,
"Differences from HF worth knowing"). --report converts each fixture with
reformer_jax and prints the largest difference from HF run in float64 and in
float32 (each with its own buckets injected) of the log-probabilities, or of
the class or span logits at the real positions: the figures in
docs/benchmarks.md. It needs
reformer_jax importable beside torch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import zlib

import numpy as np
import safetensors
import torch
import transformers
from transformers import (
    ReformerConfig,
    ReformerForMaskedLM,
    ReformerForQuestionAnswering,
    ReformerForSequenceClassification,
    ReformerModelWithLMHead,
    ReformerTokenizer,
)
from transformers.models.reformer.modeling_reformer import LSHSelfAttention

BATCH = 2
COMMON = dict(
    is_decoder=True,
    hidden_size=16,
    feed_forward_size=32,
    num_attention_heads=2,
    attention_head_size=8,
    vocab_size=24,
    layer_norm_eps=1e-12,
    hash_seed=0,
    pad_token_id=0,
    eos_token_id=1,
)
# name -> (config overrides, sequence length). Lengths are multiples of the
# chunk lengths' lcm, so HF does not pad the input itself.
CASES = {
    # Two groups of (local, lsh); learned absolute positions (axial_pos_embds=False).
    "mixed": (
        dict(
            attn_layers=["local", "lsh", "local", "lsh"],
            lsh_attn_chunk_length=8,
            local_attn_chunk_length=8,
            num_buckets=4,
            num_hashes=1,
            axial_pos_embds=False,
            max_position_embeddings=32,
        ),
        32,
    ),
    # All LSH, two hash rounds, exact GELU, axial positions.
    "two_hashes": (
        dict(
            attn_layers=["lsh", "lsh"],
            lsh_attn_chunk_length=8,
            num_buckets=8,
            num_hashes=2,
            hidden_act="gelu",
            axial_pos_shape=[4, 8],
            axial_pos_embds_dim=[6, 10],
            max_position_embeddings=32,
        ),
        32,
    ),
    # Factorised buckets 2 x 4 with two rounds.
    "factorised": (
        dict(
            attn_layers=["lsh", "local"],
            lsh_attn_chunk_length=8,
            local_attn_chunk_length=16,
            num_buckets=[2, 4],
            num_hashes=2,
            axial_pos_shape=[8, 8],
            axial_pos_embds_dim=[8, 8],
            max_position_embeddings=64,
        ),
        64,
    ),
    # The enwik8 layout in miniature: cycle (local, local, lsh, local), axial
    # positions, local chunks twice the LSH chunk, tanh GELU.
    "axial_enwik8_like": (
        dict(
            attn_layers=["local", "local", "lsh", "local"],
            lsh_attn_chunk_length=8,
            local_attn_chunk_length=16,
            num_buckets=8,
            num_hashes=2,
            hidden_act="gelu_new",
            axial_pos_shape=[8, 8],
            axial_pos_embds_dim=[4, 12],
            max_position_embeddings=64,
        ),
        64,
    ),
    # L <= lsh_attn_chunk_length: HF runs its LSH layers as full shared-QK
    # attention and returns no buckets for them.
    "short": (
        dict(
            attn_layers=["local", "lsh"],
            lsh_attn_chunk_length=16,
            local_attn_chunk_length=8,
            num_buckets=4,
            num_hashes=2,
            axial_pos_shape=[4, 8],
            axial_pos_embds_dim=[8, 8],
            max_position_embeddings=32,
        ),
        16,
    ),
}


# name -> (config overrides, sequence length, vocabulary size).
SPM_CASES = {
    # crime-and-punishment's layout in miniature: (local, lsh) x 2, axial
    # positions, factorised buckets, one hash round, relu.
    "spm_lm": (
        dict(
            attn_layers=["local", "lsh", "local", "lsh"],
            lsh_attn_chunk_length=4,
            local_attn_chunk_length=4,
            num_buckets=[2, 2],
            num_hashes=1,
            hidden_act="relu",
            axial_pos_shape=[4, 4],
            axial_pos_embds_dim=[6, 10],
            max_position_embeddings=16,
        ),
        16,
        128,
    ),
}
# Text the tokenizer test encodes with HF's tokenizer and with ours. Not
# "<unk>" or "</s>" written out: HF reads those as the special tokens,
# sentencepiece as characters.
SPM_SENTENCES = (
    "The model converts HF checkpoints into a workdir.",
    "def main(argv): return parse(argv[1:])",
    "Reversible layers keep one copy of the activations, 42 times over.",
    "naïve café: unknown characters become unk",
    "if x == 1:",
)


@dataclasses.dataclass(frozen=True)
class EncoderCase:
    """A bidirectional HF model and its input: `padding[row]` = (pads in front, pads at the end)
    of each of the batch's rows. `alone`: HF runs each row by itself, without its pads."""

    architecture: type
    overrides: dict
    length: int
    padding: tuple[tuple[int, int], ...]
    alone: bool = False


# The head's outputs each architecture's expected.npz holds.
OUTPUTS = {
    ReformerForMaskedLM: ("logits",),  # [b, l, v]
    ReformerForSequenceClassification: ("logits",),  # [b, num_labels]
    ReformerForQuestionAnswering: ("start_logits", "end_logits"),  # each [b, l]
}

ENCODER_CASES = {
    # All LSH, looking one chunk back and one ahead; length 29, so HF pads the
    # input to 32 itself; row 1 also masks its last 4 tokens (7 pads < 8).
    "mlm_lsh": EncoderCase(
        ReformerForMaskedLM,
        dict(
            attn_layers=["lsh", "lsh"],
            lsh_attn_chunk_length=8,
            num_buckets=4,
            num_hashes=1,
            lsh_num_chunks_after=1,
            axial_pos_shape=[4, 8],
            axial_pos_embds_dim=[6, 10],
            max_position_embeddings=32,
        ),
        29,
        ((0, 0), (0, 4)),
    ),
    # Local and LSH layers, learned positions, factorised buckets; the local
    # layers attend within their own chunk (no neighbours: HF's would wrap);
    # row 0 is padded in front, row 1 at the end.
    "mlm_mixed": EncoderCase(
        ReformerForMaskedLM,
        dict(
            attn_layers=["local", "lsh", "local", "lsh"],
            lsh_attn_chunk_length=8,
            local_attn_chunk_length=16,
            local_num_chunks_before=0,
            local_num_chunks_after=0,
            num_buckets=[2, 2],
            num_hashes=1,
            lsh_num_chunks_after=1,
            hidden_act="gelu",
            axial_pos_embds=False,
            max_position_embeddings=32,
        ),
        32,
        ((3, 0), (0, 5)),
    ),
    # Two hash rounds without padding (the mask is all ones); HF's default
    # window for encoders, one chunk back and none ahead.
    "mlm_two_hashes": EncoderCase(
        ReformerForMaskedLM,
        dict(
            attn_layers=["lsh", "lsh"],
            lsh_attn_chunk_length=8,
            num_buckets=8,
            num_hashes=2,
            lsh_num_chunks_after=0,
            axial_pos_shape=[8, 4],
            axial_pos_embds_dim=[8, 8],
            max_position_embeddings=32,
        ),
        32,
        ((0, 0), (0, 0)),
    ),
    # Three labels from position 0; the local layer's chunk spans the input,
    # so HF runs it as full attention (its window would otherwise wrap).
    "classifier": EncoderCase(
        ReformerForSequenceClassification,
        dict(
            num_labels=3,
            attn_layers=["lsh", "local"],
            lsh_attn_chunk_length=8,
            local_attn_chunk_length=32,
            num_buckets=4,
            num_hashes=1,
            lsh_num_chunks_after=1,
            axial_pos_shape=[4, 8],
            axial_pos_embds_dim=[6, 10],
            max_position_embeddings=32,
        ),
        32,
        ((0, 0), (0, 6)),
    ),
    # HF's windows in both kinds, with padding and two hash rounds: local layers of 2 chunks
    # looking one back and one ahead (both are the other chunk: HF counts it twice) and LSH
    # layers over 4 sorted chunks, each round's pads in its own extra bucket.
    "mlm_windows": EncoderCase(
        ReformerForMaskedLM,
        dict(
            attn_layers=["local", "lsh"],
            lsh_attn_chunk_length=8,
            local_attn_chunk_length=8,
            local_num_chunks_before=1,
            local_num_chunks_after=1,
            num_buckets=4,
            num_hashes=2,
            lsh_num_chunks_after=1,
            axial_pos_shape=[4, 4],
            axial_pos_embds_dim=[8, 8],
            max_position_embeddings=16,
        ),
        16,
        ((0, 0), (0, 3)),
    ),
    # LSH windows that repeat a chunk: 2 sorted chunks, 3 back (rolls by 3 and 2 of 2 chunks
    # leave them in place, so a window holds its own chunk 3 times and the other once);
    # padded in front and at the end.
    "mlm_lsh_repeat": EncoderCase(
        ReformerForMaskedLM,
        dict(
            attn_layers=["lsh", "lsh"],
            lsh_attn_chunk_length=8,
            num_buckets=4,
            num_hashes=1,
            lsh_num_chunks_before=3,
            lsh_num_chunks_after=0,
            axial_pos_shape=[4, 4],
            axial_pos_embds_dim=[6, 10],
            max_position_embeddings=16,
        ),
        16,
        ((2, 0), (0, 3)),
    ),
    # The classifier users convert and run through predict: local attention in chunks of
    # 16, one chunk before and after, inputs of 32 to 64 tokens that HF runs one at a time
    # (padded by HF itself to 32, 48, 48, 64 and 64: windows over 2, 3 and 4 chunks).
    "classifier_local": EncoderCase(
        ReformerForSequenceClassification,
        dict(
            num_labels=3,
            attn_layers=["local", "local"],
            local_attn_chunk_length=16,
            local_num_chunks_before=1,
            local_num_chunks_after=1,
            axial_pos_shape=[8, 8],
            axial_pos_embds_dim=[6, 10],
            max_position_embeddings=64,
        ),
        64,
        ((0, 32), (0, 24), (0, 17), (0, 7), (0, 0)),
        alone=True,
    ),
    # Start and end logits; local layers of 4 chunks looking both ways, LSH layers with two
    # hash rounds over 4 sorted chunks; padded in front and at the end.
    "span_windows": EncoderCase(
        ReformerForQuestionAnswering,
        dict(
            attn_layers=["local", "lsh"],
            lsh_attn_chunk_length=16,
            local_attn_chunk_length=8,
            local_num_chunks_before=1,
            local_num_chunks_after=1,
            num_buckets=4,
            num_hashes=2,
            lsh_num_chunks_after=1,
            axial_pos_shape=[4, 8],
            axial_pos_embds_dim=[8, 8],
            max_position_embeddings=32,
        ),
        32,
        ((1, 0), (0, 9)),
    ),
    # Start and end logits; five LSH chunks, tanh GELU.
    "span": EncoderCase(
        ReformerForQuestionAnswering,
        dict(
            attn_layers=["local", "lsh"],
            lsh_attn_chunk_length=8,
            local_attn_chunk_length=8,
            local_num_chunks_before=0,
            local_num_chunks_after=0,
            num_buckets=4,
            num_hashes=1,
            lsh_num_chunks_after=1,
            hidden_act="gelu_new",
            axial_pos_shape=[5, 8],
            axial_pos_embds_dim=[8, 8],
            max_position_embeddings=40,
        ),
        40,
        ((0, 2), (0, 7)),
    ),
}


def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Redraws every parameter at the scale of a trained model."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            elif "position_embeddings" in name or "word_embeddings" in name:
                p.copy_(noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:  # a Linear weight [out, in]
                p.copy_(1.5 * noise / p.shape[1] ** 0.5)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def hf_buckets(out) -> dict[int, np.ndarray]:
    return {i: b.numpy() for i, b in enumerate(out.past_buckets_states.buckets_cache) if b.numel()}


def hf_padded_length(config: ReformerConfig, length: int) -> int:
    """The length HF runs at in evaluation: rounded up to the chunk lengths' lcm when longer
    than the smaller chunk (ReformerModel.forward)."""
    chunks = {"lsh": config.lsh_attn_chunk_length, "local": config.local_attn_chunk_length}
    used = [chunks[k] for k in set(config.attn_layers)]
    lcm = math.lcm(*used)
    if length % lcm == 0 or length <= min(used):
        return length
    return length + lcm - length % lcm


def check_agreement(name: str, config: ReformerConfig, mask: np.ndarray) -> None:
    """Refuses a padded batch on which HF gives a row other than what it gives the row alone
    (module docstring): each row, up to its last real token, must round up to the batch's
    own length."""
    length = hf_padded_length(config, mask.shape[1])
    for row, real in enumerate(mask.astype(bool)):
        end = int(np.flatnonzero(real).max()) + 1
        if hf_padded_length(config, end) != length:
            raise ValueError(
                f"{name}: row {row} ends at {end}, which HF runs alone at length "
                f"{hf_padded_length(config, end)}, but in this batch at {length}."
            )


def hf_outputs(model: torch.nn.Module, case: EncoderCase, ids: torch.Tensor, mask: torch.Tensor):
    """HF's outputs ({field: array}) and LSH buckets ({layer: [b, h, r, L]}) for the batch: one
    forward pass with the attention_mask, or, for an `alone` case, one per row without its pads
    (its outputs padded with zeros to the batch's length)."""
    if not case.alone:
        with torch.no_grad(), captured_buckets(model) as buckets:
            out = model(input_ids=ids, attention_mask=mask)
        return {f: getattr(out, f).numpy() for f in OUTPUTS[case.architecture]}, buckets
    rows = []
    for row, (front, back) in enumerate(case.padding):
        assert front == 0, "an `alone` row is its first tokens"
        with torch.no_grad(), captured_buckets(model) as buckets:
            out = model(input_ids=ids[row : row + 1, : case.length - back])
        assert not buckets, "an `alone` case has no LSH layers (their buckets differ per row)"
        rows.append({f: getattr(out, f).numpy() for f in OUTPUTS[case.architecture]})

    def pad(x):  # a row's outputs per position [1, n, ...] -> [1, length, ...]
        if case.architecture is ReformerForSequenceClassification:
            return x
        return np.pad(x, [(0, 0), (0, case.length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))

    return {f: np.concatenate([pad(r[f]) for r in rows]) for f in OUTPUTS[case.architecture]}, {}


@contextlib.contextmanager
def captured_buckets(model: torch.nn.Module):
    """Hooks every LSH layer while open: the dict fills with its buckets [b, h, r, L]."""
    captured = {}

    def hook(module, args, output):
        if output.buckets is not None:
            captured[module.layer_idx] = output.buckets.numpy()

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LSHSelfAttention)
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def report(name: str, model: torch.nn.Module, ids: torch.Tensor, case_dir: str) -> None:
    """Max |log p(reformer_jax) - log p(HF)| against HF in float64 and in float32."""
    import jax

    from reformer_jax import convert
    from reformer_jax.model import ReformerLM

    jax.config.update("jax_default_matmul_precision", "highest")
    cfg, params = convert.load_hf_reformer(case_dir)
    errors = []
    for dtype in (torch.float64, torch.float32):
        with torch.no_grad():
            out = model.to(dtype)(ids, use_cache=True)
        buckets = hf_buckets(out)
        ours = ReformerLM(cfg).apply(
            {"params": params},
            ids.numpy(),
            buckets=convert.buckets_from_hf(buckets, cfg) if buckets else None,
        )
        errors.append(np.abs(np.asarray(ours, np.float64) - log_softmax(out.logits.numpy())).max())
    model.float()
    print(f"  {name}: vs HF float64 {errors[0]:.1e}, vs HF float32 {errors[1]:.1e}")


def report_encoder(
    name: str, model: torch.nn.Module, case: EncoderCase, ids, mask, case_dir: str
) -> None:
    """Max |reformer_jax - HF| at the real positions against HF in float64 and float32: of
    log-probs (masked LM), class logits (every example) or start and end logits."""
    import jax
    import jax.numpy as jnp

    from reformer_jax import convert

    jax.config.update("jax_default_matmul_precision", "highest")
    checkpoint = convert.load_hf(case_dir)
    arch = checkpoint.architecture
    real = mask.numpy().astype(bool)
    errors = []
    for dtype in (torch.float64, torch.float32):
        hf, hf_buckets = hf_outputs(model.to(dtype), case, ids, mask)
        buckets = hf_buckets and convert.buckets_from_hf(
            hf_buckets, checkpoint.cfg, length=ids.shape[1]
        )

        def run(m, buckets=buckets or None):  # the stack with HF's buckets, then the head
            hidden = m.stack(jnp.asarray(ids.numpy()), mask=real, causal=False, buckets=buckets)
            return m.head(hidden) if arch == convert.MLM_ARCHITECTURE else m.head(hidden, real)

        ours = checkpoint.model().apply({"params": checkpoint.params}, method=run)
        if arch == convert.MLM_ARCHITECTURE:
            diff = np.abs(np.asarray(ours, np.float64) - log_softmax(hf["logits"]))
            errors.append(diff.max(-1)[real].max())
        elif arch == convert.CLASSIFIER_ARCHITECTURE:
            errors.append(np.abs(np.asarray(ours, np.float64) - hf["logits"]).max())
        else:
            want = (hf["start_logits"], hf["end_logits"])
            errors.append(
                max(np.abs(np.asarray(o) - h)[real].max() for o, h in zip(ours, want, strict=True))
            )
    model.float()
    print(f"  {name}: vs HF float64 {errors[0]:.1e}, vs HF float32 {errors[1]:.1e}")


def build(
    name: str,
    overrides: dict,
    length: int,
    out_dir: str,
    with_report: bool,
    ids: torch.Tensor | None = None,
    extra: dict | None = None,
) -> None:
    """One LM case; ids [BATCH, length] (default: random), extra: more arrays for expected.npz."""
    seed = sorted(CASES).index(name) if name in CASES else zlib.crc32(name.encode()) % 1000
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(1000 + seed)
    config = ReformerConfig(**{**COMMON, **overrides})
    model = ReformerModelWithLMHead(config).eval()
    randomize(model, generator)
    if ids is None:
        ids = torch.randint(2, config.vocab_size, (BATCH, length), generator=generator)
    with torch.no_grad():
        out = model.double()(ids, use_cache=True)
    model.float()  # the checkpoint is float32, as published ones are
    expected = {
        "input_ids": ids.numpy().astype(np.int32),
        "logits": out.logits.numpy().astype(np.float64),
    }
    for layer, buckets in hf_buckets(out).items():
        expected[f"buckets_{layer}"] = buckets.astype(np.int32)
    save(name, model, {**expected, **(extra or {})}, out_dir)
    if with_report:
        report(name, model, ids, os.path.join(out_dir, name))


def stdlib_sentences(split: str) -> list[str]:
    """The non-blank lines of a split of reformer_jax's stdlib corpus, spaces collapsed."""
    from reformer_jax.data import stdlib

    lines = (" ".join(line.split()) for line in stdlib.stdlib_text(split).splitlines())
    return [line for line in lines if line]


def build_spm(
    name: str, overrides: dict, length: int, vocab_size: int, out_dir: str, with_report: bool
) -> None:
    """A vocabulary trained here, HF's tokenizer's ids for SPM_SENTENCES, then an LM case on
    HF-tokenized validation text with that vocabulary."""
    from reformer_jax.data import tokenizers

    with tempfile.TemporaryDirectory() as tmp:
        spiece = os.path.join(tmp, tokenizers.SPIECE_FILE)
        # identity normalization: nmt_nfkc's tables would add 240 KB to the file.
        tokenizers.train_sentencepiece(
            stdlib_sentences("train"),
            spiece,
            vocab_size=vocab_size,
            model_type="bpe",
            normalization="identity",
            max_sentences=20_000,
        )
        hf_tokenizer = ReformerTokenizer.from_pretrained(tmp)
        with open(spiece, "rb") as f:
            model_file = f.read()
    sentence_ids = [hf_tokenizer(s)["input_ids"] for s in SPM_SENTENCES]
    text = " ".join(stdlib_sentences("validation")[:200])
    ids = torch.tensor(hf_tokenizer(text)["input_ids"][: BATCH * length]).reshape(BATCH, length)
    extra = {
        "sentence_ids": np.concatenate(sentence_ids).astype(np.int32),
        "sentence_lengths": np.asarray([len(i) for i in sentence_ids], np.int32),
    }
    build(name, dict(overrides, vocab_size=vocab_size), length, out_dir, with_report, ids, extra)
    case_dir = os.path.join(out_dir, name)
    with open(os.path.join(case_dir, tokenizers.SPIECE_FILE), "wb") as f:
        f.write(model_file)
    with open(os.path.join(case_dir, "sentences.json"), "w") as f:
        json.dump({"sentences": SPM_SENTENCES, "hf_tokenizer": type(hf_tokenizer).__name__}, f)
        f.write("\n")


def build_encoder(name: str, case: EncoderCase, out_dir: str, with_report: bool) -> None:
    seed = zlib.crc32(name.encode())
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    config = ReformerConfig(**dict(COMMON, is_decoder=False), **case.overrides)
    model = case.architecture(config).eval()
    randomize(model, generator)
    ids = torch.randint(2, config.vocab_size, (len(case.padding), case.length), generator=generator)
    mask = torch.ones_like(ids)
    for row, (front, back) in enumerate(case.padding):
        mask[row, :front] = 0
        mask[row, case.length - back :] = 0
    ids = ids * mask + config.pad_token_id * (1 - mask)
    if not case.alone:
        check_agreement(name, config, mask.numpy())
    outputs, buckets = hf_outputs(model.double(), case, ids, mask)
    model.float()
    expected = {
        "input_ids": ids.numpy().astype(np.int32),
        "attention_mask": mask.numpy().astype(np.int32),
    }
    for field, value in outputs.items():
        expected[field] = value.astype(np.float64)
    for layer, b in buckets.items():
        expected[f"buckets_{layer}"] = b.astype(np.int32)
    save(name, model, expected, out_dir)
    if with_report:
        report_encoder(name, model, case, ids, mask, os.path.join(out_dir, name))


def save(name: str, model: torch.nn.Module, expected: dict, out_dir: str) -> None:
    case_dir = os.path.join(out_dir, name)
    shutil.rmtree(case_dir, ignore_errors=True)
    model.save_pretrained(case_dir, safe_serialization=True)
    for extra in os.listdir(case_dir):  # keep only what a converter reads
        if extra not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(case_dir, extra))
    np.savez_compressed(os.path.join(case_dir, "expected.npz"), **expected)
    versions = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "command": "python scripts/make_hf_fixture.py",
    }
    with open(os.path.join(case_dir, "versions.json"), "w") as f:
        json.dump(versions, f, indent=1)
        f.write("\n")
    buckets = sorted(k for k in expected if k.startswith("buckets_"))
    length = expected["input_ids"].shape[1]
    print(f"{name}: length {length}, buckets for {buckets or 'no layer'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join("tests", "data", "hf"))
    parser.add_argument("--cases", nargs="+", help="build only these cases (default: all)")
    parser.add_argument("--report", action="store_true", help="compare reformer_jax with HF")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    names = [*CASES, *ENCODER_CASES, *SPM_CASES]
    unknown = set(args.cases or ()) - set(names)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from {names}")
    wanted = lambda name: args.cases is None or name in args.cases
    for name, (overrides, length) in CASES.items():
        if wanted(name):
            build(name, overrides, length, args.out, args.report)
    for name, case in ENCODER_CASES.items():
        if wanted(name):
            build_encoder(name, case, args.out, args.report)
    for name, (overrides, length, vocab_size) in SPM_CASES.items():
        if wanted(name):
            build_spm(name, overrides, length, vocab_size, args.out, args.report)


if __name__ == "__main__":
    main()
