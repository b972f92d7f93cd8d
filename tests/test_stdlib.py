"""The standard-library byte corpus (reformer_jax/data/stdlib.py): contents, splits, windows."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from reformer_jax.data import stdlib

BUDGET = 300_000


def test_the_corpus_is_the_sorted_package_sources_cut_to_the_budget():
    # Found another way: from where the json package lives, as the notebook once did.
    lib = Path(inspect.getsourcefile(json)).parent.parent
    files = sorted(p for d in stdlib.PACKAGES for p in (lib / d).glob("*.py"))
    want = b"".join(p.read_bytes() + b"\n" for p in files)[:BUDGET]
    got = stdlib.stdlib_bytes(BUDGET)
    assert got.dtype == np.uint8 and len(got) == BUDGET
    assert bytes(got) == want
    assert not got.flags.writeable
    assert stdlib.stdlib_files() == files


def test_eval_splits_cover_their_bytes_once_after_the_train_split():
    data = stdlib.stdlib_bytes(BUDGET)
    seen = []
    for split in ("validation", "test"):
        batches = list(
            stdlib.stdlib_dataset(split=split, batch_size=4, seq_len=100, seed=0, max_bytes=BUDGET)
        )
        tokens = np.concatenate([b["tokens"].reshape(-1) for b in batches])
        weights = np.concatenate([b["weights"].reshape(-1) for b in batches])
        seen.append((tokens[weights > 0] - 2).astype(np.uint8))
    # 90% train, then validation and test: together exactly the last 10%.
    assert np.array_equal(np.concatenate(seen), data[BUDGET * 9 // 10 :])
    assert len(seen[0]) == len(seen[1]) == BUDGET // 20


def test_train_windows_come_from_the_train_split_and_replay_from_the_seed():
    data = stdlib.stdlib_bytes(BUDGET)
    train = bytes(data[: BUDGET * 9 // 10])
    first = stdlib.stdlib_dataset(split="train", batch_size=4, seq_len=64, seed=3, max_bytes=BUDGET)
    batch = next(first)
    assert batch["weights"].shape == (4, 64) and np.all(batch["weights"] == 1.0)
    for row in batch["tokens"]:
        assert bytes((row - 2).astype(np.uint8)) in train
    again = stdlib.stdlib_dataset(split="train", batch_size=4, seq_len=64, seed=3, max_bytes=BUDGET)
    assert np.array_equal(next(again)["tokens"], batch["tokens"])


def test_bad_arguments_say_what_to_change():
    with pytest.raises(ValueError, match="split must be one of"):
        stdlib.stdlib_dataset(split="dev", batch_size=1, seq_len=8, seed=0)
    with pytest.raises(ValueError, match="raise stdlib_dataset.max_bytes"):
        stdlib.stdlib_dataset(split="train", batch_size=1, seq_len=2000, seed=0, max_bytes=1000)
    with pytest.raises(ValueError, match="max_bytes must be a positive int"):
        stdlib.stdlib_bytes(0)
