"""The generated span task (reformer_jax/data/spans.py): targets, padding, seeds, one-pass eval."""

import numpy as np
import pytest

from reformer_jax.data import spans


def _rows(batch):
    for i in np.flatnonzero(batch["weight"] > 0):
        yield (
            batch["tokens"][i],
            batch["mask"][i],
            int(batch["start"][i]),
            int(batch["end"][i]),
        )


def test_every_span_lies_between_its_two_markers():
    lengths = set()
    for index in range(3):
        batch = spans.span_dataset(
            split="train", batch_size=32, seq_len=48, seed=5, vocab_size=12
        ).source.batch(index)
        assert batch["tokens"].dtype == np.int32 and batch["mask"].dtype == bool
        for tokens, mask, start, end in _rows(batch):
            n = int(mask.sum())
            lengths.add(n)
            assert np.array_equal(mask, np.arange(48) < n)  # real tokens first, then padding
            assert np.all(tokens[n:] == spans.PAD)
            assert 0 < start <= end < n - 1
            assert tokens[start - 1] == spans.OPEN and tokens[end + 1] == spans.CLOSE
            # One marker of each kind; the span and the rest are symbols.
            assert np.flatnonzero(tokens == spans.OPEN).tolist() == [start - 1]
            assert np.flatnonzero(tokens == spans.CLOSE).tolist() == [end + 1]
            symbols = np.delete(tokens[:n], [start - 1, end + 1])
            assert np.all((symbols >= spans.FIRST_SYMBOL) & (symbols < 12))
    assert min(lengths) >= 24 and max(lengths) <= 48 and len(lengths) > 10


def test_batches_are_a_function_of_seed_split_and_index():
    def batch(split, seed, index=0):
        data = spans.span_dataset(split=split, batch_size=4, seq_len=32, seed=seed)
        data.set_state({"position": index})
        return next(data)

    same = [batch("train", 1, 3), batch("train", 1, 3)]
    assert all(np.array_equal(same[0][k], same[1][k]) for k in same[0])
    for other in (batch("train", 2, 3), batch("train", 1, 4), batch("eval", 1, 3)):
        assert not np.array_equal(other["tokens"], same[0]["tokens"])


def test_eval_is_one_pass_with_filler_rows_of_weight_zero():
    data = spans.span_dataset(split="eval", batch_size=8, seq_len=32, seed=0, eval_examples=19)
    batches = list(data)
    assert len(batches) == 3
    weight = np.concatenate([b["weight"] for b in batches])
    assert weight.tolist() == [1.0] * 19 + [0.0] * 5
    last = batches[-1]
    assert not last["mask"][3:].any() and np.all(last["tokens"][3:] == 0)
    # The same pass again, and resumed from its saved position.
    again = spans.span_dataset(split="eval", batch_size=8, seq_len=32, seed=0, eval_examples=19)
    next(again)
    state = again.get_state()
    resumed = spans.span_dataset(split="eval", batch_size=8, seq_len=32, seed=0, eval_examples=19)
    resumed.set_state(state)
    assert np.array_equal(next(resumed)["tokens"], batches[1]["tokens"])


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(split="dev"), "split must be one of"),
        (dict(vocab_size=3), "vocab_size must be >= 4"),
        (dict(min_len=2), "min_len must be in"),
        (dict(min_len=40), "min_len must be in"),
        (dict(max_span=20), "max_span must be in"),
    ],
)
def test_bad_settings_say_what_to_change(kw, match):
    args = dict(split="train", batch_size=2, seq_len=32, seed=0) | kw
    with pytest.raises(ValueError, match=match):
        spans.span_dataset(**args)
