"""Corpus BLEU of detokenized translations, as the translation results are reported.

The paper reports BLEU on WMT 2014 English-German newstest2014 (Reformer §5).
BLEU here is sacrebleu's (Post 2018) on detokenized text with its default
"13a" tokenization (the mteval-v13a rules, the standard for the WMT news test
sets), one reference per sentence, case-sensitive, exponential smoothing only
where an n-gram order has no match. Scores computed on text tokenized by the
model's own subwords, or with other tokenizations, are not comparable with
it; the returned signature string says exactly what was computed.

    corpus_bleu(hypotheses, references) -> {"score", "signature", "precisions",
        "brevity_penalty", "hypothesis_length", "reference_length"}
"""

from __future__ import annotations

from collections.abc import Sequence


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """BLEU of `hypotheses` against one reference each, both detokenized text.

    Returns score (0..100), signature (sacrebleu's, e.g.
    "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"), precisions
    (the modified n-gram precisions for n = 1..4, in percent), brevity_penalty
    (exp(1 - r / c) when the hypotheses are shorter than the references, else
    1) and the two lengths in 13a tokens.
    """
    from sacrebleu.metrics import BLEU  # here: only BLEU's users need sacrebleu

    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(
            f"corpus_bleu: {len(hypotheses)} hypotheses but {len(references)} references; "
            "give one reference per hypothesis, in the same order."
        )
    if not hypotheses:
        raise ValueError("corpus_bleu: no hypotheses (an empty corpus has no BLEU).")
    for what, texts in (("hypotheses", hypotheses), ("references", references)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(
                f"corpus_bleu: {what}[{bad}] is {type(texts[bad]).__name__}, not str "
                "(detokenized text)."
            )
    metric = BLEU(tokenize="13a")
    result = metric.corpus_score(hypotheses, [references])
    return {
        "score": float(result.score),
        "signature": str(metric.get_signature()),
        "precisions": [float(p) for p in result.precisions],
        "brevity_penalty": float(result.bp),
        "hypothesis_length": int(result.sys_len),
        "reference_length": int(result.ref_len),
    }
