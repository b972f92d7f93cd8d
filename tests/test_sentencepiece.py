"""SentencePiece vocabularies (reformer_jax/data/tokenizers.py, reformer_jax/tokenizer.py)
and HF checkpoints that come with one (convert, sample --prompt).

The training text is Python's standard library sources (reformer_jax/data/
stdlib.py): real text on every machine, nothing shipped. The HF fixture
tests/data/hf/spm_lm holds HF ReformerTokenizer's ids and HF's log-probs,
so no torch or transformers is needed here.
"""

import json
import os
import pickle
import shutil
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece

from reformer_jax import checkpoints, convert, sample, sampling
from reformer_jax import tokenizer as tokenizer_cli
from reformer_jax.data import enwik8, listops, stdlib, synthetic, tokenizers, wmt14
from reformer_jax.model import ReformerLM
from tests import inprocess


def _lines(split, n):
    lines = [" ".join(line.split()) for line in stdlib.stdlib_text(split).splitlines()]
    return [line for line in lines if line][:n]


@pytest.fixture(scope="module")
def corpus():
    return _lines("train", 3000)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("spm") / tokenizers.SPIECE_FILE)
    return path, tokenizers.train_sentencepiece(corpus, path, vocab_size=300)


def test_trained_vocabulary_ids_and_determinism(corpus, trained, tmp_path):
    """pad 0, eos 1, unk 2, no bos; the same text gives a byte-identical file, and only it."""
    path, tok = trained
    assert (tok.name, tok.vocab_size, tok.pad_id, tok.eos_id) == ("sentencepiece", 300, 0, 1)
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    again = str(tmp_path / "again.model")
    tokenizers.train_sentencepiece(iter(corpus), again, vocab_size=300)
    with open(path, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()
    assert sorted(os.listdir(tmp_path)) == ["again.model"]  # no temporary files left


def test_encode_decode_round_trip_on_fresh_text(corpus, trained):
    """Text the vocabulary never saw (the corpus's validation split) encodes to pieces that
    spell it, never eos, and decodes back; pad, eos and ids past the vocabulary are dropped."""
    _, tok = trained
    seen = set("".join(corpus))
    fresh = [
        s
        for s in _lines("validation", 400)
        if set(s) <= seen and unicodedata.normalize("NFKC", s) == s
    ][:50]
    assert len(fresh) == 50
    loaded = tokenizers.load_sentencepiece(trained[0])
    sp = sentencepiece.SentencePieceProcessor(model_file=trained[0])
    for s in fresh:
        ids = tok.encode(s)
        assert ids.dtype == np.int32 and ids.ndim == 1 and 1 not in ids and 2 not in ids
        # The pieces themselves spell the sentence (U+2581 marks a word start).
        spelled = "".join(sp.id_to_piece(int(i)) for i in ids).replace("\u2581", " ")
        assert spelled == " " + s
        assert tok.decode(ids) == s
        np.testing.assert_array_equal(loaded.encode(s), ids)
        assert tok.decode([0, *ids.tolist(), 1, 0, 300, -1]) == s


def test_tokenizer_pickles_as_its_model(trained):
    _, tok = trained
    encode, decode = pickle.loads(pickle.dumps((tok.encode, tok.decode)))
    text = "def main(argv): return None"
    np.testing.assert_array_equal(encode(text), tok.encode(text))
    assert decode(encode(text)) == text


def test_sample_is_uniform_ordered_and_seeded():
    """`_sample` keeps k of n in their order; each item kept with probability k / n."""
    items = [str(i) for i in range(10)]
    assert tokenizers._sample(iter(items), 20, seed=0) == items
    picks = [tokenizers._sample(iter(items), 3, seed=s) for s in range(3000)]
    assert all(len(p) == 3 and p == sorted(p, key=int) for p in picks)
    assert picks[7] == tokenizers._sample(iter(items), 3, seed=7)
    counts = np.zeros(10)
    for p in picks:
        counts[[int(i) for i in p]] += 1
    # Binomial(3000, 0.3): sd 25, so 0.3 +- 0.04 is more than 4.5 sd.
    np.testing.assert_allclose(counts / 3000, 0.3, atol=0.04)


def test_max_sentences_trains_on_a_sample(corpus, tmp_path):
    a = tokenizers.train_sentencepiece(corpus, str(tmp_path / "a"), vocab_size=200, seed=0)
    b = tokenizers.train_sentencepiece(
        corpus, str(tmp_path / "b"), vocab_size=200, max_sentences=500, seed=0
    )
    c = tokenizers.train_sentencepiece(
        tokenizers._sample(corpus, 500, seed=0), str(tmp_path / "c"), vocab_size=200
    )
    files = {n: (tmp_path / n).read_bytes() for n in "abc"}
    assert files["b"] == files["c"] != files["a"]
    assert a.vocab_size == b.vocab_size == c.vocab_size == 200


def test_bad_settings_and_files_are_one_line(corpus, tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be an int >= 4"):
        tokenizers.train_sentencepiece(corpus, str(tmp_path / "x"), vocab_size=3)
    with pytest.raises(ValueError, match="model_type must be one of"):
        tokenizers.train_sentencepiece(corpus, str(tmp_path / "x"), vocab_size=99, model_type="x")
    with pytest.raises(ValueError, match="every line is blank"):
        tokenizers.train_sentencepiece(["", " \n"], str(tmp_path / "x"), vocab_size=99)
    with pytest.raises(ValueError, match=r"Vocabulary size too high \(50000\)") as e:
        tokenizers.train_sentencepiece(corpus[:50], str(tmp_path / "x"), vocab_size=50000)
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []
    with pytest.raises(tokenizers.TokenizerError, match="no such file; copy the checkpoint's"):
        tokenizers.load_sentencepiece(str(tmp_path / "none.model"))
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(tokenizers.TokenizerError, match="is not a SentencePiece model") as e:
        tokenizers.load_sentencepiece(str(tmp_path / "bad.model"))
    assert "\n" not in str(e.value)


def test_for_run_prefers_the_workdirs_vocabulary(trained, tmp_path):
    assert tokenizers.for_run(str(tmp_path)) is None
    assert tokenizers.for_run(str(tmp_path), listops.listops_dataset) is listops.TOKENIZER
    assert tokenizers.for_run(str(tmp_path), enwik8.enwik8_dataset) is tokenizers.BYTES
    assert tokenizers.for_run(str(tmp_path), stdlib.stdlib_dataset) is tokenizers.BYTES
    assert tokenizers.for_run(str(tmp_path), synthetic.duplication_dataset) is None
    # wmt14 declares the run's own vocabulary, which this workdir lacks.
    with pytest.raises(tokenizers.TokenizerError, match="spiece.model: no such file"):
        tokenizers.for_run(str(tmp_path), wmt14.wmt14_dataset)
    (tmp_path / tokenizers.SPIECE_FILE).write_bytes(open(trained[0], "rb").read())
    for factory in (enwik8.enwik8_dataset, wmt14.wmt14_dataset, None):
        tok = tokenizers.for_run(str(tmp_path), factory)
        assert tok.name == "sentencepiece"
        np.testing.assert_array_equal(tok.encode("import os"), trained[1].encode("import os"))
    assert (tokenizers.BYTES.pad_id, tokenizers.BYTES.eos_id) == (0, 1)
    assert (listops.TOKENIZER.pad_id, listops.TOKENIZER.eos_id) == (0, None)


# ----------------------------------------------------------------------------- the command


def test_command_trains_what_the_library_trains(corpus, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("\n".join(corpus[:1500]) + "\n")
    second = tmp_path / "b.txt"
    second.write_text("\n".join(corpus[1500:]) + "\n")
    workdir = tmp_path / "run"
    result = inprocess.run(
        tokenizer_cli.main,
        f"--workdir={workdir}",
        "--vocab_size=300",
        f"--text_file={text}",
        f"--text_file={second}",
    )
    assert result.returncode == 0, result.stderr
    assert "a unigram vocabulary of 300 pieces (pad 0, eos 1, unk 2)" in result.stdout
    want = tmp_path / "want.model"
    tokenizers.train_sentencepiece(corpus, str(want), vocab_size=300)
    assert (workdir / tokenizers.SPIECE_FILE).read_bytes() == want.read_bytes()

    again = inprocess.run(
        tokenizer_cli.main, f"--workdir={workdir}", "--vocab_size=300", f"--text_file={text}"
    )
    assert again.returncode == 2 and "spiece.model already exists" in again.last_line
    assert (workdir / tokenizers.SPIECE_FILE).read_bytes() == want.read_bytes()


def test_command_on_the_stdlib_corpus(tmp_path):
    workdir = tmp_path / "run"
    result = inprocess.run(
        tokenizer_cli.main,
        f"--workdir={workdir}",
        "--vocab_size=200",
        "--stdlib",
        "--max_sentences=2000",
        "--model_type=bpe",
    )
    assert result.returncode == 0, result.stderr
    tok = tokenizers.for_run(str(workdir))
    assert tok.vocab_size == 200 and tok.decode(tok.encode("import os")) == "import os"


def test_command_errors(tmp_path):
    binary = tmp_path / "binary"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    run = lambda *a: inprocess.run(tokenizer_cli.main, f"--workdir={tmp_path}/w", *a)
    result = run("--vocab_size=100", f"--text_file={binary}")
    assert result.returncode == 2
    assert result.last_line == (
        f"error: --text_file={binary}:1: not UTF-8 (byte 0x80 at byte 1 of the line); "
        "save the file as UTF-8"
    )
    result = run("--vocab_size=100", "--stdlib", "--character_coverage=0")
    assert result.returncode == 2 and "--character_coverage must be in (0, 1]" in result.last_line
    assert not os.path.exists(tmp_path / "w" / tokenizers.SPIECE_FILE)


# ----------------------------------------------------------------------------- HF checkpoints

# A tiny HF ReformerModelWithLMHead with a SentencePiece vocabulary, laid out like
# google/reformer-crime-and-punishment (scripts/make_hf_fixture.py, case spm_lm).
HF_SPM = os.path.join(os.path.dirname(__file__), "data", "hf", "spm_lm")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("hf") / "run")
    convert.main([f"--hf_dir={HF_SPM}", f"--workdir={workdir}"])
    return workdir


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_converted_model_gives_hf_log_probs(converted):
    """The converted workdir's model gives HF's log-probs (float64 run), HF's buckets injected."""
    run = checkpoints.load_run(converted)
    data = np.load(os.path.join(HF_SPM, "expected.npz"))
    hf_buckets = {int(k.split("_")[1]): data[k] for k in data.files if k.startswith("buckets_")}
    assert sorted(hf_buckets) == run.config.lsh_layers() == [1, 3]
    assert run.config.attention_kinds == ("local", "lsh") and run.config.n_buckets == (2, 2)
    got = ReformerLM(run.config).apply(
        {"params": run.params},
        jnp.asarray(data["input_ids"]),
        buckets=convert.buckets_from_hf(hf_buckets, run.config),
    )
    want = _log_softmax(data["logits"].astype(np.float64))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def test_converted_vocabulary_encodes_as_hf_tokenizer(converted):
    """convert copies spiece.model; for_run's ids are those HF's ReformerTokenizer gave."""
    with open(os.path.join(HF_SPM, tokenizers.SPIECE_FILE), "rb") as f:
        with open(os.path.join(converted, tokenizers.SPIECE_FILE), "rb") as g:
            assert f.read() == g.read()
    data = np.load(os.path.join(HF_SPM, "expected.npz"))
    with open(os.path.join(HF_SPM, "sentences.json")) as f:
        sentences = json.load(f)["sentences"]
    hf_ids = np.split(data["sentence_ids"], np.cumsum(data["sentence_lengths"])[:-1])
    tok = tokenizers.for_run(converted)
    assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (128, 0, 1)
    with_unk = 0
    for sentence, want in zip(sentences, hf_ids, strict=True):
        ids = tok.encode(sentence)
        np.testing.assert_array_equal(ids, want)
        if tokenizers.UNK_ID in ids:
            with_unk += 1
        else:
            assert tok.decode(ids) == sentence
    assert with_unk == 1  # one sentence holds characters outside the vocabulary


@pytest.mark.slow
def test_sample_prompt_text_on_converted_workdir(converted, capsys):
    """sample --prompt encodes with the run's spiece.model and prints text; greedy ids are
    sampling.generate's on the encoded prompt."""
    run = checkpoints.load_run(converted)
    tok = tokenizers.for_run(converted)
    prompt = "return self"  # 6 ids: room for 5 more in max_len 16
    capsys.readouterr()
    args = [f"--workdir={converted}", f"--prompt={prompt}", "--num_tokens=5", "--greedy"]
    sample.main([*args, "--json"])
    printed = json.loads(capsys.readouterr().out)
    ids = tok.encode(prompt)
    want = sampling.generate(
        run.params, run.config, ids[None], jax.random.key(0), num_tokens=5, greedy=True
    )
    want = [int(t) for t in want[0]]
    assert printed == {"ids": want, "text": tok.decode(want)}
    sample.main(args)
    out = capsys.readouterr().out.splitlines()
    assert out[1] == tok.decode([*ids.tolist(), *want]) and out[1].startswith(prompt)


def test_bad_or_foreign_vocabularies_are_one_line(converted, trained, tmp_path):
    hf_dir = tmp_path / "hf"
    shutil.copytree(HF_SPM, hf_dir)
    (hf_dir / tokenizers.SPIECE_FILE).write_bytes(b"garbage")
    result = inprocess.run(convert.main, f"--hf_dir={hf_dir}", f"--workdir={tmp_path}/out")
    assert result.returncode == 2, result.stderr
    assert "spiece.model is not a SentencePiece model" in result.last_line
    assert not os.path.exists(tmp_path / "out")
    cfg = convert.config_from_hf(json.loads((hf_dir / "config.json").read_text()))
    shutil.copy(trained[0], hf_dir / tokenizers.SPIECE_FILE)
    with pytest.raises(convert.ConversionError, match="has 300 pieces, but config.json has"):
        convert.read_hf_vocabulary(str(hf_dir), cfg)

    workdir = tmp_path / "run"
    shutil.copytree(converted, workdir)
    shutil.copy(trained[0], workdir / tokenizers.SPIECE_FILE)  # 300 pieces, model 128
    argv = (f"--workdir={workdir}", "--prompt=x", "--num_tokens=1")
    result = inprocess.run(sample.main, *argv)
    assert result.returncode == 2
    assert "spiece.model has 300 ids, more than the model's vocabulary of 128" in result.last_line
    (workdir / tokenizers.SPIECE_FILE).write_bytes(b"garbage")
    result = inprocess.run(sample.main, *argv)
    assert result.returncode == 2 and "is not a SentencePiece model" in result.last_line
