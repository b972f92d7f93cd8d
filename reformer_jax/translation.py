"""Decode a sequence-to-sequence split and score it: decoded exact match and BLEU.

    decode_split(params, cfg, batches, key, *, beam_size=None, length_penalty=0.6,
                 num_tokens=None, max_batches=None, n_hashes=None)
        -> Decoded(hypotheses: list of int32 ids, references: list of int32 ids)
    score(decoded, tokenizer=None, reference_texts=None) -> {"decoded_exact_match", ...,
                                                            "bleu", "bleu_signature", ...}

`batches` are sequence-to-sequence batches (reformer_jax/tasks.py, Seq2SeqTask):
rows whose target weights are all 0 are filler and are skipped. Each source
is decoded by `sampling.translate` (greedy) or, with beam_size, by
`sampling.translate_beam` (the best hypothesis); ids stop before the first EOS.
Teacher-forced metrics come from the task's own sums (reformer_jax/evaluation.py);
these are the metrics of what the model writes.

BLEU (reformer_jax/bleu.py, sacrebleu on detokenized text) needs text: the
hypotheses are decoded with the run's tokenizer, and compared with
`reference_texts` when given (WMT: the raw newstest sentences,
`wmt14.wmt14_references`), else with the tokenizer's decoding of the
reference ids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from reformer_jax import bleu, sampling
from reformer_jax.config import ReformerConfig
from reformer_jax.encdec import EOS_ID

PyTree = Any


@dataclasses.dataclass
class Decoded:
    """What the model wrote for each real row, and the row's reference target (ids, no EOS)."""

    hypotheses: list[np.ndarray]
    references: list[np.ndarray]


def _until_eos(ids: np.ndarray) -> np.ndarray:
    ends = np.flatnonzero(ids == EOS_ID)
    return np.asarray(ids[: ends[0]] if len(ends) else ids, np.int32)


def decode_split(
    params: PyTree,
    cfg: ReformerConfig,
    batches: Iterable[dict],
    key: jax.Array,
    *,
    beam_size: int | None = None,
    length_penalty: float = 0.6,
    num_tokens: int | None = None,
    max_batches: int | None = None,
    n_hashes: int | None = None,
) -> Decoded:
    """Decodes every real row of `batches` (at most max_batches of them; None: all).

    num_tokens: the longest target written (default cfg.max_len). Batch i
    decodes with fold_in(key, i) (LSH rotations, sampling draws).
    """
    num_tokens = cfg.max_len if num_tokens is None else num_tokens
    out = Decoded([], [])
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        real = np.asarray(batch["target_weights"]).sum(axis=1) > 0
        if not real.any():
            continue
        source = np.asarray(batch["source"])
        mask = np.asarray(batch["source_mask"]).astype(bool)
        k = jax.random.fold_in(key, i)
        if beam_size is None:
            ids = sampling.translate(
                params,
                cfg,
                source,
                k,
                source_mask=mask,
                num_tokens=num_tokens,
                greedy=True,
                n_hashes=n_hashes,
            )
        else:
            ids = sampling.translate_beam(
                params,
                cfg,
                source,
                k,
                source_mask=mask,
                beam_size=beam_size,
                num_tokens=num_tokens,
                length_penalty=length_penalty,
                n_hashes=n_hashes,
            ).ids[:, 0]
        ids = np.asarray(jax.device_get(ids))
        targets = np.asarray(batch["target"])
        for row in np.flatnonzero(real):
            out.hypotheses.append(_until_eos(ids[row]))
            out.references.append(_until_eos(targets[row]))
    return out


def score(
    decoded: Decoded, tokenizer=None, reference_texts: list[str] | None = None
) -> dict[str, Any]:
    """decoded_exact_match (ids equal the reference's), examples, and with a tokenizer BLEU."""
    n = len(decoded.hypotheses)
    exact = sum(
        np.array_equal(h, r) for h, r in zip(decoded.hypotheses, decoded.references, strict=True)
    )
    metrics: dict[str, Any] = {"decoded_exact_match": exact / max(n, 1), "examples": n}
    if tokenizer is None:
        return metrics
    hypotheses = [tokenizer.decode(h) for h in decoded.hypotheses]
    if reference_texts is None:
        reference_texts = [tokenizer.decode(r) for r in decoded.references]
    elif len(reference_texts) < n:
        raise ValueError(
            f"{len(reference_texts)} reference texts for {n} decoded examples: the references "
            "must list the split's examples in order."
        )
    result = bleu.corpus_bleu(hypotheses, list(reference_texts[:n]))
    metrics["bleu"] = result["score"]
    metrics["bleu_signature"] = result["signature"]
    return metrics
