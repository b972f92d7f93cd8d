"""corpus_bleu against BLEU computed here from n-gram counts (Papineni et al. 2002)."""

import math
from collections import Counter

import pytest

from reformer_jax.bleu import corpus_bleu

# Two detokenized sentence pairs and their 13a tokens, written out by hand: 13a
# splits the final period and the comma from the words before them.
HYPOTHESES = ["the cat sat on the mat.", "he read the book, then slept"]
REFERENCES = ["the cat sat on a mat today.", "he read the book, and then he slept"]
HYPOTHESIS_TOKENS = [
    ["the", "cat", "sat", "on", "the", "mat", "."],
    ["he", "read", "the", "book", ",", "then", "slept"],
]
REFERENCE_TOKENS = [
    ["the", "cat", "sat", "on", "a", "mat", "today", "."],
    ["he", "read", "the", "book", ",", "and", "then", "he", "slept"],
]


def ngrams(tokens, n):
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu_by_hand(hypotheses, references):
    """(score, precisions in percent, brevity penalty) from clipped n-gram counts."""
    precisions = []
    for n in range(1, 5):
        matches = total = 0
        for hyp, ref in zip(hypotheses, references, strict=True):
            h, r = ngrams(hyp, n), ngrams(ref, n)
            matches += sum(min(count, r[gram]) for gram, count in h.items())
            total += sum(h.values())
        precisions.append(matches / total)
    c = sum(map(len, hypotheses))
    r = sum(map(len, references))
    bp = 1.0 if c >= r else math.exp(1 - r / c)
    score = 100 * bp * math.exp(sum(math.log(p) for p in precisions) / 4)
    return score, [100 * p for p in precisions], bp


def test_matches_bleu_from_ngram_counts():
    want_score, want_precisions, want_bp = bleu_by_hand(HYPOTHESIS_TOKENS, REFERENCE_TOKENS)
    # The example is not degenerate: every order has matches and misses, the hypotheses are short.
    assert all(0 < p < 100 for p in want_precisions) and want_bp < 1
    got = corpus_bleu(HYPOTHESES, REFERENCES)
    assert got["score"] == pytest.approx(want_score, rel=1e-9)
    assert got["precisions"] == pytest.approx(want_precisions, rel=1e-9)
    assert got["brevity_penalty"] == pytest.approx(want_bp, rel=1e-9)
    assert (got["hypothesis_length"], got["reference_length"]) == (14, 17)
    # 13a tokenization, one reference, mixed case: what the WMT numbers use.
    for part in ("nrefs:1", "case:mixed", "tok:13a", "smooth:exp"):
        assert part in got["signature"], got["signature"]
    # Whitespace tokens alone ("mat." one token) would give another score.
    untokenized = bleu_by_hand([h.split() for h in HYPOTHESES], [r.split() for r in REFERENCES])
    assert untokenized[0] != pytest.approx(got["score"], rel=1e-3)


def test_identical_text_scores_100_and_order_matters():
    got = corpus_bleu(REFERENCES, REFERENCES)
    assert got["score"] == pytest.approx(100.0) and got["brevity_penalty"] == 1.0
    swapped = corpus_bleu(REFERENCES[::-1], REFERENCES)
    assert swapped["score"] < 50


def test_bad_input():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_bleu(HYPOTHESES, REFERENCES[:1])
    with pytest.raises(ValueError, match="no hypotheses"):
        corpus_bleu([], [])
    with pytest.raises(TypeError, match=r"hypotheses\[1\] is bytes"):
        corpus_bleu([HYPOTHESES[0], b"x"], REFERENCES)
