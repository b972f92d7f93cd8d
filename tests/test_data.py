"""Datasets: the duplication task."""

import numpy as np
import pytest

from reformer_jax.data import synthetic


def test_duplication_layout_and_weights():
    task = synthetic.DuplicationTask(seq_len=20, vocab_size=6, batch_size=5, seed=1)
    b = task.batch(0)
    tokens, weights = b["tokens"], b["weights"]
    assert tokens.shape == weights.shape == (5, 20) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[:, 0], 0)
    np.testing.assert_array_equal(tokens[:, 10], 0)
    np.testing.assert_array_equal(tokens[:, 1:10], tokens[:, 11:])
    assert tokens[:, 1:10].min() >= 1 and tokens[:, 1:10].max() <= 5
    # Only the second copy of w is scored.
    np.testing.assert_array_equal(weights[:, :11], 0)
    np.testing.assert_array_equal(weights[:, 11:], 1)
    # Uniform over 1..5: every symbol appears.
    assert set(np.unique(tokens[:, 1:10])) == {1, 2, 3, 4, 5}


def test_batches_are_a_function_of_seed_and_index():
    a = synthetic.DuplicationTask(16, 10, 4, seed=3)
    b = synthetic.DuplicationTask(16, 10, 4, seed=3)
    np.testing.assert_array_equal(a.batch(7)["tokens"], b.batch(7)["tokens"])
    assert not np.array_equal(a.batch(7)["tokens"], a.batch(8)["tokens"])
    other = synthetic.DuplicationTask(16, 10, 4, seed=4)
    assert not np.array_equal(a.batch(7)["tokens"], other.batch(7)["tokens"])


def test_iterator_position_resumes_exactly():
    it = synthetic.duplication_dataset(split="train", batch_size=2, seq_len=8, seed=0, vocab_size=5)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it)["tokens"] for _ in range(2)]
    again = synthetic.duplication_dataset(
        split="train", batch_size=2, seq_len=8, seed=0, vocab_size=5
    )
    again.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(again)["tokens"], want)
    evals = synthetic.duplication_dataset(
        split="eval", batch_size=2, seq_len=8, seed=0, vocab_size=5
    )
    assert not np.array_equal(
        next(evals)["tokens"],
        synthetic.duplication_dataset(
            split="train", batch_size=2, seq_len=8, seed=0, vocab_size=5
        ).source.batch(0)["tokens"],
    )


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(seq_len=7, vocab_size=5, batch_size=1), "even"),
        (dict(seq_len=8, vocab_size=1, batch_size=1), "vocab_size"),
        (dict(seq_len=8, vocab_size=5, batch_size=0), "batch_size"),
    ],
)
def test_bad_task_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        synthetic.DuplicationTask(**kw)
