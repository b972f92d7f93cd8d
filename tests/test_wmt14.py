"""WMT 2014 English-German through tensorflow-datasets, without downloads or TensorFlow.

`tfds.testing.mock_data` replaces the builder's `as_data_source` with fake
splits of generated "sentences" (random words over a small alphabet), and a
tiny SentencePiece model is trained on such words in the test, so every text
round-trips through encode -> decode exactly.
"""

import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from reformer_jax.data import DatasetError, wmt14

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"train": 23, "validation": 9, "test": 7}
SPLIT_IDS = {"train": 1, "validation": 2, "test": 3}
SEQ_LEN = 32
# wmt14_ende.gin shrunk to a model that trains in seconds on the tiny vocabulary
# (VOCAB 120) train_sentencepiece writes.
TINY_MODEL = [
    "VOCAB = 120",
    "SEQ_LEN = 32",
    "ReformerConfig.d_model = 32",
    "ReformerConfig.d_ff = 64",
    "ReformerConfig.n_heads = 2",
    "ReformerConfig.d_head = 16",
    "ReformerConfig.n_layers = 2",
    "ReformerConfig.n_encoder_layers = 2",
]
ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyzäöüß"))


def sentence(rng: np.random.Generator, n_words: int) -> str:
    words = ["".join(rng.choice(ALPHABET, rng.integers(1, 7))) for _ in range(n_words)]
    return " ".join(words)


def fake_example(split: str, index: int) -> dict[str, str]:
    """Example `index` of a split; every fifth one (index % 5 == 3) is long."""
    rng = np.random.default_rng([SPLIT_IDS[split], index])
    n_words = 30 if index % 5 == 3 else int(rng.integers(1, 6))
    return {"en": sentence(rng, n_words), "de": sentence(rng, n_words + 1)}


class FakeSplit:
    """A random-access split of fake examples, like tfds's ArrayRecordDataSource."""

    def __init__(self, split: str):
        self.split = split

    def __len__(self):
        return SIZES[self.split]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(index)
        example = fake_example(self.split, index)
        # tfds without TensorFlow returns Text features as bytes; both are accepted.
        return {k: v.encode() for k, v in example.items()} if index % 2 else example


def fake_as_data_source(builder, split, decoders=None, deserialize_method=None, **kwargs):
    assert (builder.name, builder.builder_config.name) == ("wmt14_translate", "de-en")
    return FakeSplit(split)


@pytest.fixture
def fake_tfds():
    with tfds.testing.mock_data(as_data_source_fn=fake_as_data_source):
        yield


def train_sentencepiece(path: str, **ids) -> None:
    import sentencepiece as spm

    rng = np.random.default_rng(1234)
    texts = [sentence(rng, 8) for _ in range(400)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=path[: -len(".model")],
        vocab_size=120,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
        **(ids or dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)),
    )


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("vocab") / "spiece.model")
    train_sentencepiece(path)
    return path


@pytest.fixture(scope="module")
def sp(vocab_file):
    """The vocabulary as SentencePiece itself reads it, independent of wmt14.load_vocabulary."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=vocab_file)


def dataset(split, vocab_file, batch_size=4, seed=0, seq_len=SEQ_LEN, **kw):
    return wmt14.wmt14_dataset(
        split=split, batch_size=batch_size, seq_len=seq_len, seed=seed, vocab_file=vocab_file, **kw
    )


def fits(sp, example, seq_len=SEQ_LEN):
    return max(len(sp.encode(example["en"])), len(sp.encode(example["de"]))) + 1 <= seq_len


def rows(batch, sp):
    """(source text, target text, weight) of every row, checking the row's layout."""
    out = []
    for src, mask, tgt, w in zip(
        batch["source"], batch["source_mask"], batch["target"], batch["target_weights"], strict=True
    ):
        n_src, n_tgt = int(mask.sum()), int(w.sum())
        # Masks are prefixes; real tokens are nonzero; padding is 0.
        np.testing.assert_array_equal(mask, np.arange(len(mask)) < n_src)
        np.testing.assert_array_equal(w, np.arange(len(w)) < n_tgt)
        np.testing.assert_array_equal(src[n_src:], 0)
        np.testing.assert_array_equal(tgt[n_tgt:], 0)
        if n_src == n_tgt == 0:  # a filler row
            out.append(None)
            continue
        # Exactly one EOS per side, at its end.
        assert src[n_src - 1] == tgt[n_tgt - 1] == wmt14.EOS_ID
        assert wmt14.EOS_ID not in src[: n_src - 1] and wmt14.EOS_ID not in tgt[: n_tgt - 1]
        assert 0 not in src[:n_src] and 0 not in tgt[:n_tgt]
        out.append((sp.decode(src[: n_src - 1].tolist()), sp.decode(tgt[: n_tgt - 1].tolist())))
    return out


def check_format(batch, batch_size=4):
    assert set(batch) == {"source", "source_mask", "target", "target_weights"}
    for name, dtype in [
        ("source", np.int32),
        ("source_mask", np.bool_),
        ("target", np.int32),
        ("target_weights", np.float32),
    ]:
        assert batch[name].dtype == dtype and batch[name].shape == (batch_size, SEQ_LEN), name


def test_some_examples_are_long(sp):
    # The premise of the long-pair tests: examples 3, 8, ... do not fit SEQ_LEN, the others do.
    for split, n in SIZES.items():
        for i in range(n):
            assert fits(sp, fake_example(split, i)) == (i % 5 != 3), (split, i)


def test_train_stream_order_texts_and_drops(fake_tfds, vocab_file, sp):
    it = dataset("train", vocab_file, seed=7)
    got = []
    for _ in range(10):  # 40 rows: over two epochs of the 19 pairs (of 23) that fit
        batch = next(it)
        check_format(batch)
        got += rows(batch, sp)
    assert None not in got  # training batches have no filler rows
    want = []
    for epoch in range(3):
        for i in np.random.default_rng([7, epoch]).permutation(SIZES["train"]):
            example = fake_example("train", int(i))
            if fits(sp, example):  # long pairs are dropped from training
                want.append((example["en"], example["de"]))
    assert got == want[:40]
    # The state counts stream positions, dropped pairs included.
    position = it.get_state()["position"]
    assert SIZES["train"] < position < 3 * SIZES["train"]


def test_train_is_deterministic_and_resumes(fake_tfds, vocab_file):
    def sources(it, n):
        return [next(it)["source"] for _ in range(n)]

    a, b = (
        sources(dataset("train", vocab_file, seed=1), 3),
        sources(dataset("train", vocab_file, seed=1), 3),
    )
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], next(dataset("train", vocab_file, seed=2))["source"])

    it = dataset("train", vocab_file, seed=1)
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(5)]  # crosses an epoch boundary
    resumed = dataset("train", vocab_file, seed=1)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize(
    "split,tfds_split", [("eval", "validation"), ("validation", "validation"), ("test", "test")]
)
def test_eval_splits_cover_every_example_once(fake_tfds, vocab_file, sp, split, tfds_split):
    batches = list(dataset(split, vocab_file, batch_size=4))
    n = SIZES[tfds_split]
    assert len(batches) == -(-n // 4)
    got = [row for batch in batches for row in rows(batch, sp)]
    for batch in batches:
        check_format(batch)
    # Filler rows only at the end, and they weigh nothing.
    assert got[n:] == [None] * (len(got) - n)
    assert sum(float(b["target_weights"].sum()) for b in batches) == sum(
        min(len(sp.encode(fake_example(tfds_split, i)["de"])) + 1, SEQ_LEN) for i in range(n)
    )
    for i, row in enumerate(got[:n]):
        example = fake_example(tfds_split, i)
        if fits(sp, example):
            assert row == (example["en"], example["de"])
        else:  # truncated: the first SEQ_LEN - 1 pieces, then EOS
            for text, side in zip(row, ("en", "de"), strict=True):
                pieces = sp.encode(example[side])
                if len(pieces) + 1 > SEQ_LEN:
                    assert text == sp.decode(pieces[: SEQ_LEN - 1])
                else:
                    assert text == example[side]
    # Resume after the first batch: the rest, then StopIteration.
    it = dataset(split, vocab_file, batch_size=4)
    next(it)
    resumed = dataset(split, vocab_file, batch_size=4)
    resumed.set_state(json.loads(json.dumps(it.get_state())))
    rest = list(resumed)
    assert len(rest) == len(batches) - 1
    np.testing.assert_array_equal(rest[0]["target"], batches[1]["target"])


def test_languages_can_be_swapped(fake_tfds, vocab_file, sp):
    batch = next(dataset("test", vocab_file, source_language="de", target_language="en"))
    example = fake_example("test", 0)
    assert rows(batch, sp)[0] == (example["de"], example["en"])
    with pytest.raises(ValueError, match="not 'fr'"):
        dataset("test", vocab_file, target_language="fr")


def test_references_and_vocabulary_texts(fake_tfds):
    sources, references = wmt14.wmt14_references("test", data_dir="/nonexistent")
    examples = [fake_example("test", i) for i in range(SIZES["test"])]
    assert sources == [ex["en"] for ex in examples]
    assert references == [ex["de"] for ex in examples]  # untruncated, in eval-batch order

    everything = list(wmt14.texts_for_vocabulary(max_pairs=None))
    train = [fake_example("train", i) for i in range(SIZES["train"])]
    assert everything == [text for ex in train for text in (ex["en"], ex["de"])]
    sample = list(wmt14.texts_for_vocabulary(max_pairs=5, seed=3))
    assert len(sample) == 10 and set(sample) < set(everything)
    assert sample == list(wmt14.texts_for_vocabulary(max_pairs=5, seed=3))


def test_vocab_script_trains_a_usable_vocabulary(fake_tfds, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "wmt14_vocab", os.path.join(ROOT, "scripts", "wmt14_vocab.py")
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    output = str(tmp_path / "sub" / "spiece.model")
    assert script.main([f"--output={output}", "--vocab_size=60", "--max_pairs=0"]) == 0
    tokenizer = wmt14.load_vocabulary(output)
    assert tokenizer.vocab_size == 60
    text = fake_example("train", 0)["en"]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert os.listdir(tmp_path / "sub") == ["spiece.model"]  # no leftovers


def test_missing_vocabulary_names_the_fix(tmp_path):
    missing = str(tmp_path / "spiece.model")
    with pytest.raises(DatasetError) as info:
        dataset("train", missing)
    message = str(info.value)
    assert f"no SentencePiece vocabulary at {missing}" in message
    assert f"python scripts/wmt14_vocab.py --output={missing}" in message


def test_vocabulary_with_other_ids_is_refused(tmp_path):
    path = str(tmp_path / "bos.model")
    train_sentencepiece(path, pad_id=3, eos_id=2, unk_id=0, bos_id=1)
    with pytest.raises(DatasetError, match="pad id 3 and EOS id 2"):
        wmt14.load_vocabulary(path)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    with pytest.raises(DatasetError, match="not a readable SentencePiece model"):
        wmt14.load_vocabulary(str(garbage))


def test_missing_dataset_names_the_tfds_command(tmp_path, vocab_file):
    with pytest.raises(DatasetError) as info:
        dataset("eval", vocab_file, data_dir=str(tmp_path))
    message = str(info.value)
    for part in (
        "wmt14_translate/de-en",
        str(tmp_path),
        "tensorflow",
        f"tfds build wmt14_translate/de-en --data_dir={tmp_path} --file_format=array_record",
    ):
        assert part in message, part
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_bad_arguments(fake_tfds, vocab_file):
    with pytest.raises(ValueError, match="split"):
        dataset("dev", vocab_file)
    with pytest.raises(ValueError, match="seq_len >= 2"):
        dataset("train", vocab_file, seq_len=1)
    with pytest.raises(DatasetError, match="no train pair fits seq_len 2"):
        next(dataset("train", vocab_file, seq_len=2))


def test_registered_for_gin():
    import gin

    from reformer_jax import cli
    from reformer_jax.data import tokenizers

    cli.register_configurables()
    with gin.unlock_config():
        gin.parse_config("wmt14_dataset.seq_len = 8")
    gin.clear_config()
    assert tokenizers.for_dataset("wmt14_dataset") is None  # the run's spiece.model instead


# Depends on the encoder-decoder (ReformerConfig.n_encoder_layers, Seq2SeqTask): skipped
# until those are registered with gin.
def test_wmt14_ende_gin_parses():
    import gin

    from reformer_jax import cli

    cli.register_configurables()
    cli.parse_gin([os.path.join(ROOT, "configs", "wmt14_ende.gin")], [])
    try:
        cfg = cli.model_config()
        assert (cfg.n_layers, cfg.n_encoder_layers, cfg.d_model, cfg.d_ff) == (6, 6, 512, 2048)
        assert (cfg.n_heads, cfg.dropout, cfg.max_len) == (8, 0.1, 256)
        assert cfg.cross_attention and cfg.causal and cfg.attention_kinds == ("full",)
        assert cli.query("Seq2SeqTask.label_smoothing") == 0.1
        assert cli.query("train.dataset_fn") is not None
        cli.task().check(cfg)
    finally:
        gin.clear_config()


class ReformerJaxTinyTranslate(tfds.core.GeneratorBasedBuilder):
    """Real array_record files of translation pairs (tfds's Translation feature), no TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")
    url_infos = None  # nothing to download: skip the checksum-file lookup
    _checksums_path = None

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.Translation(languages=("de", "en"))
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SIZES}

    def _generate_examples(self, split):
        for i in range(SIZES[split]):
            yield i, fake_example(split, i)


def test_real_array_record_files(tmp_path, vocab_file, sp):
    data_dir = str(tmp_path)
    ReformerJaxTinyTranslate(data_dir=data_dir, file_format="array_record").download_and_prepare()
    kw = dict(data_dir=data_dir, name="reformer_jax_tiny_translate")
    # tfds stores examples in its own (hashed) order: the dataset reads that order.
    stored = tfds.data_source(kw["name"], split="test", data_dir=data_dir)
    stored = [{k: wmt14._text(v) for k, v in stored[i].items()} for i in range(len(stored))]
    assert sorted(ex["en"] for ex in stored) == sorted(
        fake_example("test", i)["en"] for i in range(SIZES["test"])
    )
    sources, references = wmt14.wmt14_references("test", **kw)
    assert (sources, references) == ([ex["en"] for ex in stored], [ex["de"] for ex in stored])
    got = [row for batch in dataset("test", vocab_file, **kw) for row in rows(batch, sp)]
    assert got[len(stored) :] == [None] * (len(got) - len(stored))
    for row, ex in zip(got, stored, strict=False):
        if fits(sp, ex):
            assert row == (ex["en"], ex["de"])
        else:
            assert row is not None and len(row[0]) < len(ex["en"])  # truncated
    batch = next(dataset("train", vocab_file, **kw))
    check_format(batch)


def test_long_pairs_are_counted_in_the_log(fake_tfds, vocab_file, caplog):
    caplog.set_level("INFO", logger="reformer_jax")
    list(dataset("eval", vocab_file))
    assert "wmt14 validation: 9 pairs, 2 with a side longer than seq_len 32" in caplog.text
    caplog.clear()
    it = dataset("train", vocab_file, batch_size=6)
    for _ in range(4):  # 24 rows: past the 19 pairs of epoch 0 that fit
        next(it)
    assert "end of epoch 0: dropped 4 of the 23 pairs read in it" in caplog.text


@pytest.mark.slow
def test_wmt14_config_trains_and_evaluate_reports_bleu(fake_tfds, vocab_file, tmp_path):
    """The WMT pipeline end to end on mock data: configs/wmt14_ende.gin (sizes shrunk) trains
    a few steps, the vocabulary lands in the workdir, and evaluate --decode decodes the test
    split (greedy, then beam 2) and reports BLEU against the raw newstest references."""
    from reformer_jax import evaluate
    from tests import inprocess

    workdir = str(tmp_path / "run")
    shrink = [
        f'wmt14_dataset.vocab_file = "{vocab_file}"',
        *TINY_MODEL,
        "train.steps = 3",
        "train.batch_size = 4",
        "train.eval_every = 0",
        "train.eval_batches = 0",
        "train.checkpoint_every = 3",
        "train.progress = False",
    ]
    args = ["--gin_file", os.path.join(ROOT, "configs", "wmt14_ende.gin"), "--workdir", workdir]
    result = inprocess.train(*args, *(a for p in shrink for a in ("--gin_param", p)))
    assert result.returncode == 0, result.stderr
    assert open(os.path.join(workdir, "spiece.model"), "rb").read() == open(vocab_file, "rb").read()
    for extra in ([], ["--beam_size=2"]):
        out = inprocess.run(
            evaluate.main,
            f"--workdir={workdir}",
            "--split=test",
            "--decode",
            "--num_tokens=6",
            "--json",
            *extra,
        )
        assert out.returncode == 0, out.stderr
        decoded = json.loads(out.stdout.strip().splitlines()[-1])["decoded"]
        assert decoded["examples"] == SIZES["test"]
        assert 0.0 <= decoded["bleu"] <= 100.0 and decoded["bleu_signature"].startswith("nrefs:1")
