"""ListOps: the generator, the two evaluators, the tokenizer, the cache and the batches.

Every test runs on tiny settings (trees of tens of tokens) so the whole file
takes seconds; LRA's settings differ only in the numbers.
"""

import json
import os
import re

import numpy as np
import pytest

from reformer_jax.data import DatasetError
from reformer_jax.data import listops as lo

TINY = lo.ListOpsSettings(
    data_seed=7, n_train=120, n_eval=45, min_len=20, max_len=100, max_depth=5, max_args=5
)
SEQ_LEN = 100


def tiny_dataset(tmp_path, split, batch_size=8, **overrides):
    settings = {**vars(TINY), **overrides}
    return lo.listops_dataset(
        split=split,
        batch_size=batch_size,
        seq_len=SEQ_LEN,
        seed=3,
        data_dir=str(tmp_path),
        **settings,
    )


def walk(tree):
    """Every operator node of a tree: (operator, arguments)."""
    if isinstance(tree, int):
        return
    yield tree[0], tree[1:]
    for arg in tree[1:]:
        yield from walk(arg)


def lra_text(tree):
    """LRA's written form: the list folded into nested pairs, each in parentheses.

    [MAX 2 9 ] is written ( ( ( [MAX 2 ) 9 ) ] ).
    """
    if isinstance(tree, int):
        return str(tree)
    text = f"( [{tree[0]} {lra_text(tree[1])} )"
    for arg in tree[2:]:
        text = f"( {text} {lra_text(arg)} )"
    return f"( {text} ] )"


# --- Generation ---------------------------------------------------------------


def test_generation_is_deterministic_given_the_seed_and_split():
    a = lo.generate_split("test", TINY)
    b = lo.generate_split("test", TINY)
    other_seed = lo.generate_split("test", lo.ListOpsSettings(**{**vars(TINY), "data_seed": 8}))
    other_split = lo.generate_split("validation", TINY)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert len(a) == TINY.n_eval
    assert not np.array_equal(a.example(0), other_seed.example(0))
    assert not np.array_equal(a.example(0), other_split.example(0))


def test_trees_respect_length_depth_and_argument_limits():
    rng = np.random.default_rng(11)
    trees = lo.random_trees(rng, min_len=20, max_len=100, max_depth=5, max_args=5)
    depths, widths = [], []
    for _ in range(300):
        tree = next(trees)
        assert 20 < len(lo.tree_ids(tree)) < 100
        depths.append(lo.depth(tree))
        for op, args in walk(tree):
            assert op in lo.OPERATORS
            assert 2 <= len(args) <= 5
            widths.append(len(args))
            assert all(isinstance(a, tuple) or a in range(10) for a in args)
    assert max(depths) == 5 and max(widths) == 5 and min(widths) == 2  # the limits are reached


def test_impossible_settings_are_refused():
    with pytest.raises(ValueError, match="max_depth"):
        lo.ListOpsSettings(max_depth=1)
    with pytest.raises(ValueError, match="min_len"):
        lo.ListOpsSettings(min_len=99, max_len=100)
    # Depth 2 and 3 arguments: at most [OP d d d ], 5 tokens.
    with pytest.raises(ValueError, match="longer than 5 tokens"):
        lo.ListOpsSettings(min_len=10, max_len=50, max_depth=2, max_args=3)


# --- Evaluators ---------------------------------------------------------------

HAND_CASES = [
    (("MAX", 2, 9, ("MIN", 4, 7), 0), "[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    (("MIN", 3, 1, 4), "[MIN 3 1 4 ]", 1),
    (("MED", 7, 1, 3), "[MED 7 1 3 ]", 3),
    (("MED", 3, 8), "[MED 3 8 ]", 5),  # 5.5 rounds down
    (("MED", 1, 2), "[MED 1 2 ]", 1),
    (("MED", 9, 0, 9, 2), "[MED 9 0 9 2 ]", 5),  # (2 + 9) / 2
    (("SM", 7, 8, 9), "[SM 7 8 9 ]", 4),
    (("SM", 5, 5), "[SM 5 5 ]", 0),
    (("SM", ("MAX", 1, 9), ("MED", 2, 4, 6, 8), 3), "[SM [MAX 1 9 ] [MED 2 4 6 8 ] 3 ]", 7),
    (("MIN", ("MAX", ("SM", 9, 9), 3), 5), "[MIN [MAX [SM 9 9 ] 3 ] 5 ]", 5),
    (6, "6", 6),
]


@pytest.mark.parametrize("tree, text, answer", HAND_CASES)
def test_hand_written_cases(tree, text, answer):
    assert lo.to_text(tree) == text
    assert lo.value(tree) == answer
    assert lo.evaluate(text) == answer
    assert lo.evaluate(lra_text(tree)) == answer


def test_median_is_lra_int_of_numpy_median():
    rng = np.random.default_rng(5)
    for n in range(2, 11):
        for _ in range(50):
            args = rng.integers(0, 10, n).tolist()
            assert lo.value(("MED", *args)) == int(np.median(args)), args


def test_string_evaluator_agrees_with_every_generated_label():
    data = lo.generate_split("train", lo.ListOpsSettings(**{**vars(TINY), "n_train": 300}))
    for i in range(len(data)):
        assert lo.evaluate(lo.decode(data.example(i))) == data.labels[i], i
    assert len(set(data.labels.tolist())) == 10


def test_lra_text_encodes_like_ours():
    trees = lo.random_trees(
        np.random.default_rng(2), min_len=20, max_len=100, max_depth=5, max_args=5
    )
    for _ in range(50):
        tree = next(trees)
        np.testing.assert_array_equal(lo.encode(lra_text(tree)), lo.tree_ids(tree))
        assert lo.evaluate(lra_text(tree)) == lo.value(tree)


@pytest.mark.parametrize("text", ["[MAX 1 2", "1 ]", "[MAX ]", "1 2", "[FOO 1 ]", "[MAX 12 ]", ""])
def test_evaluator_refuses_malformed_text(text):
    with pytest.raises(ValueError, match="listops"):
        lo.evaluate(text)


# --- Tokens -------------------------------------------------------------------


def test_encode_decode_round_trip():
    rng = np.random.default_rng(9)
    ids = rng.integers(1, lo.VOCAB_SIZE, 200).astype(np.int32)
    np.testing.assert_array_equal(lo.encode(lo.decode(ids)), ids)
    padded = np.concatenate([ids, np.zeros(7, np.int32)])
    assert lo.decode(padded) == lo.decode(ids)
    text = "[SM [MAX 1 9 ] [MED 2 4 6 8 ] 3 ]"
    assert lo.decode(lo.encode(text)) == text
    assert lo.encode(text).dtype == np.int32
    assert lo.VOCAB_SIZE == 16 and lo.encode("0 9 ]").tolist() == [1, 10, 15]
    with pytest.raises(ValueError, match="unknown token"):
        lo.encode("[MAX 1 [X ]")


# --- The cache ----------------------------------------------------------------


def test_cache_is_written_once_and_read_back(tmp_path, monkeypatch):
    first = lo.load_split("train", TINY, str(tmp_path))
    for split in lo.SPLITS:  # train also generated the splits it excludes
        assert all(os.path.isfile(p) for p in lo.split_paths(split, TINY, str(tmp_path)))
    npz, meta = lo.split_paths("train", TINY, str(tmp_path))
    stamps = os.stat(npz).st_mtime_ns, os.stat(meta).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached split")

    monkeypatch.setattr(lo, "generate_split", fail)
    again = lo.load_split("train", TINY, str(tmp_path))
    np.testing.assert_array_equal(first.ids, again.ids)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert (os.stat(npz).st_mtime_ns, os.stat(meta).st_mtime_ns) == stamps

    record = json.load(open(meta))
    assert record["settings"] == vars(TINY) and record["examples"] == TINY.n_train
    assert record["label_counts"] == np.bincount(first.labels, minlength=10).tolist()
    rate = lo.majority_class_rate("train", TINY, str(tmp_path))
    assert rate == record["majority_class_rate"] == max(record["label_counts"]) / TINY.n_train


def test_train_excludes_evaluation_examples(tmp_path):
    # Short trees repeat often enough that the exclusion has work to do.
    settings = lo.ListOpsSettings(
        data_seed=1, n_train=300, n_eval=100, min_len=4, max_len=9, max_depth=3, max_args=3
    )
    unseen = lo.generate_split("train", settings)
    splits = {s: lo.load_split(s, settings, str(tmp_path)) for s in lo.SPLITS}
    examples = {s: {d.example(i).tobytes() for i in range(len(d))} for s, d in splits.items()}
    assert all(len(examples[s]) == len(splits[s]) for s in lo.SPLITS)  # no repeats within
    assert not examples["train"] & (examples["validation"] | examples["test"])
    assert not examples["validation"] & examples["test"]
    held_out = examples["validation"] | examples["test"]
    assert any(unseen.example(i).tobytes() in held_out for i in range(len(unseen)))


def test_cache_written_by_another_generator_version_is_regenerated(tmp_path):
    lo.load_split("test", TINY, str(tmp_path))
    npz, meta = lo.split_paths("test", TINY, str(tmp_path))
    record = json.load(open(meta))
    json.dump({**record, "generator_version": 0}, open(meta, "w"))
    lo.load_split("test", TINY, str(tmp_path))
    assert json.load(open(meta))["generator_version"] == lo.GENERATOR_VERSION


def test_corrupt_cache_files_raise_dataset_error_naming_them(tmp_path):
    lo.load_split("validation", TINY, str(tmp_path))  # also writes test
    npz, meta = lo.split_paths("test", TINY, str(tmp_path))
    good = open(npz, "rb").read()

    # A byte flipped inside the compressed arrays.
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0xFF
    open(npz, "wb").write(bytes(flipped))
    with pytest.raises(
        DatasetError,
        match=f"listops: {re.escape(npz)} .*; delete {re.escape(npz)} and {re.escape(meta)}",
    ):
        lo.load_split("test", TINY, str(tmp_path))

    open(npz, "wb").write(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=f"{re.escape(npz)} is not a readable npz"):
        lo.load_split("test", TINY, str(tmp_path))

    # A readable npz of the same shape that is not the one its JSON describes.
    valid_npz, _ = lo.split_paths("validation", TINY, str(tmp_path))
    open(npz, "wb").write(open(valid_npz, "rb").read())
    with pytest.raises(
        DatasetError,
        match=f"{re.escape(npz)} does not match the sha256 recorded in {re.escape(meta)}",
    ):
        lo.load_split("test", TINY, str(tmp_path))

    open(npz, "wb").write(good)
    lo.load_split("test", TINY, str(tmp_path))  # restored: read without complaint
    open(meta, "w").write(open(meta).read()[:40])
    with pytest.raises(DatasetError, match=f"{re.escape(meta)} is not readable JSON"):
        lo.load_split("test", TINY, str(tmp_path))


# --- Batches ------------------------------------------------------------------


def check_batch(batch, data, batch_size):
    """Checks a batch's form and that each real row is an example with its label."""
    assert set(batch) == {"tokens", "mask", "label", "weight"}
    tokens, mask, label, weight = (batch[k] for k in ("tokens", "mask", "label", "weight"))
    assert tokens.dtype == np.int32 and tokens.shape == (batch_size, SEQ_LEN)
    assert mask.dtype == np.bool_ and mask.shape == (batch_size, SEQ_LEN)
    assert label.dtype == np.int32 and label.shape == (batch_size,)
    assert weight.dtype == np.float32 and weight.shape == (batch_size,)
    np.testing.assert_array_equal(mask, tokens != lo.PAD_ID)
    lengths = mask.sum(1)
    np.testing.assert_array_equal(mask, np.arange(SEQ_LEN) < lengths[:, None])  # a prefix
    labels = {data.example(i).tobytes(): int(data.labels[i]) for i in range(len(data))}
    rows = []
    for row in range(batch_size):
        if weight[row] == 0:
            assert lengths[row] == 0 and label[row] == 0
            continue
        ids = tokens[row, : lengths[row]].astype(np.uint8).tobytes()
        assert labels[ids] == label[row] == lo.evaluate(lo.decode(tokens[row]))
        rows.append(ids)
    return rows


def test_train_batches_cover_an_epoch_then_reshuffle(tmp_path):
    data = lo.load_split("train", TINY, str(tmp_path))
    it = tiny_dataset(tmp_path, "train", batch_size=8)
    epoch = []
    for _ in range(TINY.n_train // 8):  # 120 = 15 batches of 8
        batch = next(it)
        assert np.all(batch["weight"] == 1.0)
        epoch += check_batch(batch, data, 8)
    assert sorted(epoch) == sorted(data.example(i).tobytes() for i in range(len(data)))
    second = check_batch(next(it), data, 8)
    assert second != epoch[:8]


def test_train_resumes_on_the_same_batch(tmp_path):
    it = tiny_dataset(tmp_path, "train", batch_size=16)
    for _ in range(9):  # past the end of the first epoch (120 / 16 = 7.5 batches)
        next(it)
    state = it.get_state()
    expected = next(it)
    resumed = tiny_dataset(tmp_path, "train", batch_size=16)
    resumed.set_state(state)
    got = next(resumed)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


@pytest.mark.parametrize("split", ["eval", "validation", "test"])
def test_evaluation_is_one_ordered_pass_with_filler_rows(tmp_path, split):
    data = lo.load_split(split, TINY, str(tmp_path))
    batches = list(tiny_dataset(tmp_path, split, batch_size=8))
    assert len(batches) == 6  # 45 examples: 5 full batches and 5 rows of a sixth
    rows = [r for b in batches for r in check_batch(b, data, 8)]
    assert rows == [data.example(i).tobytes() for i in range(len(data))]
    np.testing.assert_array_equal(batches[-1]["weight"], [1] * 5 + [0] * 3)
    assert not batches[-1]["tokens"][5:].any()


def test_eval_iterator_resumes_mid_pass(tmp_path):
    it = tiny_dataset(tmp_path, "test", batch_size=8)
    next(it), next(it)
    rest = list(it)
    again = tiny_dataset(tmp_path, "test", batch_size=8)
    again.set_state({"position": 2})
    for a, b in zip(list(again), rest, strict=True):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_examples_longer_than_seq_len_are_refused(tmp_path):
    data = lo.load_split("test", TINY, str(tmp_path))
    longest = int(data.lengths.max())
    with pytest.raises(DatasetError, match=f"raise seq_len to {longest} or set max_len"):
        lo.listops_dataset(
            split="test", batch_size=4, seq_len=longest - 1, data_dir=str(tmp_path), **vars(TINY)
        )
    it = lo.listops_dataset(
        split="test", batch_size=4, seq_len=longest, data_dir=str(tmp_path), **vars(TINY)
    )
    assert next(it)["tokens"].shape == (4, longest)
