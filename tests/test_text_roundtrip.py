"""Text means the same to train, predict and sample (reformer_jax/data/tokenizers.py).

For each text dataset (enwik8 from a small zip in the real format, the
stdlib corpus, ListOps, WMT14 with a tiny SentencePiece vocabulary), a run
whose config.gin names the dataset gets its tokenizer as every command gets
it (`cli.run_tokenizer` on the parsed config). Then:

- the ids predict builds for a text (`predict.parse_line`, or the command
  itself) equal the ids the dataset's training batch holds for that text,
  whose bytes are read back from the data itself, not through a tokenizer;
- the run's tokenizer, which sample prints with, decodes those ids back to
  the text (and `python -m reformer_jax.sample` prints it);
- a masked LM fitted to the training batches (a unigram model: its output
  bias the log-frequencies of the batches' ids) fills a [MASK] through
  python -m reformer_jax.predict with the corpus's most common character.

Byte-level runs failed all three when predict encoded raw bytes (ids 0..255)
and the batches held byte + 2.
"""

import collections
import json
import os
import zipfile

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import checkpoints, cli, predict, sample, tasks
from reformer_jax.data import enwik8, listops, stdlib, wmt14
from reformer_jax.model import ReformerLM
from tests import inprocess
from tests.conftest import tiny_config
from tests.test_wmt14 import fake_example, fake_tfds, train_sentencepiece  # noqa: F401

SEQ_LEN = 32
N = 20_000  # enwik8 file size: 18,000 train bytes


def _workdir(path, *bindings) -> str:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.gin"), "w") as f:
        f.write("\n".join(bindings) + "\n")
    return str(path)


def _run_tokenizer(workdir):
    """The tokenizer predict, sample and evaluate use for the run in workdir."""
    cli.parse_gin([os.path.join(workdir, "config.gin")], [])
    try:
        return cli.run_tokenizer(workdir)
    finally:
        gin.clear_config()


def _predict_ids(text, tokenizer, vocab_size=259):
    _, ids = predict.parse_line(
        json.dumps({"text": text}),
        "in.jsonl:1",
        vocab_size=vocab_size,
        max_len=SEQ_LEN,
        tokenizer=tokenizer,
        mask_text="[MASK]",
        mask_id=None,
    )
    return ids


def _enwik8_text(rng) -> bytes:
    """N bytes of words over ASCII and multi-byte UTF-8 letters."""
    letters = list("abcdefghijklmnopqrstuvwxyz") + ["é", "ß", "ü", "中", "文", "€"]
    words, size = [], 0
    while size < N:
        words.append("".join(rng.choice(letters, rng.integers(1, 8))))
        size += len(words[-1].encode()) + 1
    return " ".join(words).encode()[:N]


def _check_windows(batch_tokens, windows, tokenizer):
    """Every window that is whole UTF-8 text: predict's ids == the batch's, decode == text."""
    checked = 0
    for row, window in zip(batch_tokens, windows, strict=True):
        try:
            text = bytes(window).decode("utf-8")
        except UnicodeDecodeError:  # the window cuts a character: no text to type
            continue
        np.testing.assert_array_equal(_predict_ids(text, tokenizer), row)
        assert tokenizer.decode(row) == text
        checked += 1
    return checked


def test_enwik8_text_round_trips(tmp_path):
    data = _enwik8_text(np.random.default_rng(3))
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", data)
    it = enwik8.enwik8_dataset(
        split="train",
        batch_size=16,
        seq_len=SEQ_LEN,
        seed=5,
        data_dir=str(tmp_path),
        download=False,
        expected_size=N,
    )
    windows = [np.frombuffer(data[o : o + SEQ_LEN], np.uint8) for o in it.source.offsets(0)]
    tokens = next(it)["tokens"]
    tokenizer = _run_tokenizer(_workdir(tmp_path / "run", "train.dataset_fn = @enwik8_dataset"))
    assert _check_windows(tokens, windows, tokenizer) >= 4
    # Non-ASCII text: "é" is two bytes, two ids.
    np.testing.assert_array_equal(_predict_ids("é", tokenizer), [0xC3 + 2, 0xA9 + 2])


def test_stdlib_text_round_trips(tmp_path):
    it = stdlib.stdlib_dataset(
        split="train", batch_size=16, seq_len=SEQ_LEN, seed=2, max_bytes=300_000
    )
    data = stdlib.stdlib_bytes(300_000)  # the train split starts at byte 0
    windows = [data[o : o + SEQ_LEN] for o in it.source.offsets(0)]
    tokens = next(it)["tokens"]
    tokenizer = _run_tokenizer(_workdir(tmp_path / "run", "train.dataset_fn = @stdlib_dataset"))
    assert _check_windows(tokens, windows, tokenizer) >= 12


def test_listops_text_round_trips(tmp_path):
    batch = next(
        listops.listops_dataset(
            split="train",
            batch_size=6,
            seq_len=SEQ_LEN,
            data_dir=str(tmp_path / "data"),
            n_train=6,
            n_eval=2,
            min_len=4,
            max_len=SEQ_LEN,
            max_depth=4,
            max_args=4,
        )
    )
    tokenizer = _run_tokenizer(_workdir(tmp_path / "run", "train.dataset_fn = @listops_dataset"))
    for row, mask, label in zip(batch["tokens"], batch["mask"], batch["label"], strict=True):
        text = tokenizer.decode(row)  # what the run's tokenizer prints for the ids
        # The text is the batch's expression: computed from the text alone, it gives the label.
        assert listops.evaluate(text) == label
        np.testing.assert_array_equal(_predict_ids(text, tokenizer, 16), row[mask])


def test_wmt14_text_round_trips(tmp_path, fake_tfds):  # noqa: F811
    vocab = str(tmp_path / "spiece.model")
    train_sentencepiece(vocab)
    workdir = _workdir(
        tmp_path / "run",
        "train.dataset_fn = @wmt14_dataset",
        f"wmt14_dataset.vocab_file = '{vocab}'",
    )
    cli.parse_gin([os.path.join(workdir, "config.gin")], [])
    try:
        cli.store_vocabulary(workdir)  # as python -m reformer_jax.train does
    finally:
        gin.clear_config()
    tokenizer = _run_tokenizer(workdir)
    assert tokenizer.name == "sentencepiece"
    batch = next(
        wmt14.wmt14_dataset(split="validation", batch_size=9, seq_len=SEQ_LEN, vocab_file=vocab)
    )
    checked = 0
    for i in range(9):
        example = fake_example("validation", i)
        source = batch["source"][i][batch["source_mask"][i]]
        target = batch["target"][i][batch["target_weights"][i] > 0]
        args = type("Args", (), {"source_ids": None, "source": example["en"]})()
        ((_, ids),) = sample._sources(args, tokenizer)  # what sample --source encodes
        if len(ids) > SEQ_LEN or len(tokenizer.encode(example["de"])) >= SEQ_LEN:
            continue  # a long example, truncated in the batch
        np.testing.assert_array_equal(ids, source)
        assert target[-1] == wmt14.EOS_ID
        assert tokenizer.decode(target[:-1]) == example["de"]  # what sample prints
        checked += 1
    assert checked >= 5


@pytest.mark.slow
def test_sample_prints_a_byte_runs_text(tmp_path):
    """python -m reformer_jax.sample on ids of stdlib text prints that text."""
    cfg = tiny_config("step", vocab_size=258)  # max_len 32: 16 prompt ids and more
    params = ReformerLM(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    workdir = _workdir(tmp_path / "run", "train.dataset_fn = @stdlib_dataset")
    checkpoints.save_params(workdir, cfg, params)
    it = stdlib.stdlib_dataset(split="train", batch_size=16, seq_len=16, seed=2)
    data = stdlib.stdlib_bytes()
    row, start = next(it)["tokens"][0], it.source.offsets(0)[0]
    text = bytes(data[start : start + 16]).decode("utf-8")
    ids = ",".join(str(i) for i in row)
    argv = [f"--workdir={workdir}", f"--prompt_ids={ids}", "--num_tokens=1"]
    result = inprocess.run(sample.main, *argv)
    assert result.returncode == 0, result.stderr
    header, printed = result.stdout.split("\n", 1)
    assert header == "--- sample 0 (checkpoint step 0) ---"
    assert printed.startswith(text)  # the prompt's text, then the sampled byte


@pytest.mark.slow
def test_masked_lm_fill_decodes_to_the_corpus_character(tmp_path):
    """A unigram masked LM of stdlib_dataset's batches fills [MASK] with the corpus's most
    common byte, and predict prints it as that character."""
    it = stdlib.stdlib_dataset(split="train", batch_size=64, seq_len=SEQ_LEN, seed=0)
    batch_ids = next(it)["tokens"]
    counts = np.bincount(batch_ids.reshape(-1), minlength=259).astype(np.float64)
    # The reference, from the batches' bytes (read from the corpus, not the ids).
    data = stdlib.stdlib_bytes()
    windows = [bytes(data[o : o + SEQ_LEN]) for o in it.source.offsets(0)]
    byte, _ = collections.Counter(b"".join(windows)).most_common(1)[0]

    task = tasks.MaskedLMTask()
    cfg = tiny_config(
        "step",
        vocab_size=259,
        causal=False,
        n_layers=2,
        attention_kinds=("local", "lsh"),
        n_buckets=4,
    )
    params = jax.jit(lambda k: task.init_params(task.model(cfg), k, cfg))(jax.random.key(1))
    head = params["head"]
    assert head["bias"].shape == (259,)
    head["kernel"] = jnp.zeros_like(head["kernel"])
    head["bias"] = jnp.asarray(np.log(counts + 1e-3), jnp.float32)
    workdir = _workdir(
        tmp_path / "run", "train.task = @MaskedLMTask()", "train.dataset_fn = @stdlib_dataset"
    )
    checkpoints.save_params(workdir, cfg, params)
    source = tmp_path / "in.jsonl"
    # Saved with a UTF-8 byte-order mark, which predict drops (reformer_jax/user_files.py).
    source.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "x = [MASK]1"}).encode() + b"\r\n")
    out = tmp_path / "out.jsonl"
    result = inprocess.run(
        predict.main, f"--workdir={workdir}", f"--input={source}", f"--output={out}"
    )
    assert result.returncode == 0, result.stderr
    (got,) = [json.loads(line) for line in out.read_text().splitlines()]
    (filled,) = got["filled"]
    assert filled["position"] == 4 and filled["id"] == byte + 2
    assert got["text"] == f"x = {chr(byte)}1"
    assert got["ids"][:4] == [ord(c) + 2 for c in "x = "]
