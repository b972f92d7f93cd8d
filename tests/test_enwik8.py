"""enwik8: obtaining and verifying the file, splits, train windows, eval coverage.

Every test uses a small generated zip laid out like the real one (member
`enwik8`) with expected_size set to match; nothing touches the network.
"""

import io
import json
import os
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest

from reformer_jax.data import enwik8

N = 20_000  # bytes in the generated file: splits of 18,000 / 1,000 / 1,000


def write_zip(path, data: bytes, member: str = "enwik8") -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, data)


@pytest.fixture
def raw():
    """The generated file's bytes: uint8 [N]."""
    return np.random.default_rng(0).integers(0, 256, size=N, dtype=np.uint8)


@pytest.fixture
def data_dir(tmp_path, raw):
    """A data dir holding only enwik8.zip (not yet extracted)."""
    write_zip(tmp_path / "enwik8.zip", raw.tobytes())
    return str(tmp_path)


def dataset(data_dir, **kw):
    kw = {"batch_size": 4, "seq_len": 64, "seed": 0, **kw}
    return enwik8.enwik8_dataset(data_dir=data_dir, download=False, expected_size=N, **kw)


def test_split_bounds():
    assert enwik8.split_bounds(100_000_000) == {
        "train": (0, 90_000_000),
        "validation": (90_000_000, 95_000_000),
        "test": (95_000_000, 100_000_000),
    }
    assert enwik8.split_bounds() == enwik8.split_bounds(100_000_000)
    assert enwik8.split_bounds(N) == {
        "train": (0, 18_000),
        "validation": (18_000, 19_000),
        "test": (19_000, 20_000),
    }
    for total in (1, 7, 999, 12_345):  # contiguous and complete for any size
        b = enwik8.split_bounds(total)
        assert b["train"][0] == 0 and b["test"][1] == total
        assert b["train"][1] == b["validation"][0] and b["validation"][1] == b["test"][0]


def test_extracts_once_and_ids_are_bytes_plus_2(data_dir, raw):
    data = enwik8.load_enwik8(data_dir, download=False, expected_size=N)
    assert isinstance(data, np.memmap) and data.dtype == np.uint8
    np.testing.assert_array_equal(data, raw)
    raw_path = os.path.join(data_dir, "enwik8")
    assert os.path.getsize(raw_path) == N
    assert sorted(os.listdir(data_dir)) == ["enwik8", "enwik8.zip"]  # no temporaries left
    # The raw file is used from now on: the zip is no longer needed.
    os.remove(os.path.join(data_dir, "enwik8.zip"))
    batch = next(dataset(data_dir, split="validation", batch_size=2, seq_len=100))
    assert batch["tokens"].dtype == np.int32 and batch["weights"].dtype == np.float32
    np.testing.assert_array_equal(batch["tokens"][0], raw[18_000:18_100].astype(np.int32) + 2)
    np.testing.assert_array_equal(batch["tokens"][1], raw[18_100:18_200].astype(np.int32) + 2)
    assert enwik8.VOCAB_SIZE == 258
    train = next(dataset(data_dir, split="train"))["tokens"]
    assert train.min() >= 2 and train.max() < enwik8.VOCAB_SIZE


def test_train_windows_are_deterministic_file_windows(data_dir, raw):
    seq_len = 64
    a = dataset(data_dir, split="train", seed=3, seq_len=seq_len)
    b = dataset(data_dir, split="train", seed=3, seq_len=seq_len)
    other = dataset(data_dir, split="train", seed=4, seq_len=seq_len)
    batches = [next(a) for _ in range(3)]
    for want in batches:
        got = next(b)
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        np.testing.assert_array_equal(got["weights"], 1.0)
        assert got["tokens"].shape == (4, seq_len)
    assert not np.array_equal(batches[0]["tokens"], batches[1]["tokens"])
    assert not np.array_equal(next(other)["tokens"], batches[0]["tokens"])
    # Every row is the train split's bytes + 2 at some offset in [0, 18000 - L].
    windows = np.lib.stride_tricks.sliding_window_view(raw[:18_000], seq_len).astype(np.int32) + 2
    for batch in batches:
        for row in batch["tokens"]:
            assert np.any(np.all(windows == row, axis=1))


def test_train_offsets_reach_both_ends(data_dir):
    # seq_len = n - 1 leaves offsets {0, 1}: both must occur (endpoint included).
    it = dataset(data_dir, split="train", seq_len=17_999, batch_size=16)
    offsets = np.concatenate([it.source.offsets(i) for i in range(4)])
    assert set(offsets.tolist()) == {0, 1}


def test_resume_continues_on_the_next_batch(data_dir):
    for split in ("train", "test"):
        it = dataset(data_dir, split=split, batch_size=2, seq_len=50)
        for _ in range(3):
            next(it)
        state = json.loads(json.dumps(it.get_state()))
        expected = [next(it) for _ in range(2)]
        again = dataset(data_dir, split=split, batch_size=2, seq_len=50)
        again.set_state(state)
        for want in expected:
            got = next(again)
            np.testing.assert_array_equal(got["tokens"], want["tokens"])
            np.testing.assert_array_equal(got["weights"], want["weights"])
    assert state == {"position": 6}  # eval: the next window (3 batches of 2)


@pytest.mark.parametrize(
    "split,start", [("validation", 18_000), ("eval", 18_000), ("test", 19_000)]
)
def test_eval_covers_the_split_exactly_once(data_dir, raw, split, start):
    # 1,000 bytes in windows of 64: 15 full + one of 40 -> 16 windows, 6 batches of 3.
    batches = list(dataset(data_dir, split=split, batch_size=3, seq_len=64))
    assert len(batches) == 6
    for b in batches:
        assert b["tokens"].shape == b["weights"].shape == (3, 64)
    tokens = np.concatenate([b["tokens"] for b in batches])
    weights = np.concatenate([b["weights"] for b in batches])
    assert weights.sum() == 1_000
    np.testing.assert_array_equal(
        tokens[weights > 0], raw[start : start + 1_000].astype(np.int32) + 2
    )
    # The last window is partial, the last batch's other rows are padding.
    last = batches[-1]
    np.testing.assert_array_equal(last["weights"][0, :40], 1.0)
    np.testing.assert_array_equal(last["weights"][0, 40:], 0.0)
    np.testing.assert_array_equal(last["tokens"][0, 40:], 0)
    np.testing.assert_array_equal(last["tokens"][1:], 0)
    np.testing.assert_array_equal(last["weights"][1:], 0.0)


def test_eval_exact_fit_has_no_padding(data_dir):
    batches = list(dataset(data_dir, split="test", batch_size=5, seq_len=200))
    assert len(batches) == 1 and batches[0]["weights"].min() == 1.0


def test_corrupt_zip_is_an_error(data_dir, raw):
    zip_path = os.path.join(data_dir, "enwik8.zip")
    blob = bytearray(open(zip_path, "rb").read())
    for i in range(N // 2, N // 2 + 8):  # inside the member's data
        blob[i] ^= 0xFF
    with open(zip_path, "wb") as f:
        f.write(blob)
    with pytest.raises(enwik8.DatasetError, match="delete") as e:
        enwik8.load_enwik8(data_dir, download=False, expected_size=N)
    assert zip_path in str(e.value)
    assert not os.path.exists(os.path.join(data_dir, "enwik8"))  # never extracted


def test_zip_without_the_member_is_an_error(tmp_path, raw):
    write_zip(tmp_path / "enwik8.zip", raw.tobytes(), member="something_else")
    with pytest.raises(enwik8.DatasetError, match="no member 'enwik8'"):
        enwik8.load_enwik8(str(tmp_path), download=False, expected_size=N)


def test_not_a_zip_is_an_error(tmp_path):
    (tmp_path / "enwik8.zip").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(enwik8.DatasetError, match="not a readable zip"):
        enwik8.load_enwik8(str(tmp_path), download=False, expected_size=N)


def test_wrong_size_is_an_error(data_dir, tmp_path):
    zip_path = os.path.join(data_dir, "enwik8.zip")
    with pytest.raises(enwik8.DatasetError, match="expected 20,001") as e:
        enwik8.load_enwik8(data_dir, download=False, expected_size=N + 1)
    assert zip_path in str(e.value)
    # The default expected size is the real one: the small file is refused.
    with pytest.raises(enwik8.DatasetError, match="expected 100,000,000"):
        enwik8.load_enwik8(data_dir, download=False)
    # A truncated raw file is refused too.
    raw_dir = tmp_path / "truncated"
    raw_dir.mkdir()
    (raw_dir / "enwik8").write_bytes(b"x" * 100)
    with pytest.raises(enwik8.DatasetError, match="delete") as e:
        enwik8.load_enwik8(str(raw_dir), download=False, expected_size=N)
    assert str(raw_dir / "enwik8") in str(e.value) and "has 100 bytes" in str(e.value)


def test_sha256_is_checked_when_given(data_dir, raw):
    import hashlib

    good = hashlib.sha256(raw.tobytes()).hexdigest()
    enwik8.load_enwik8(data_dir, download=False, expected_size=N, sha256=good.upper())
    with pytest.raises(enwik8.DatasetError, match="sha256"):
        enwik8.load_enwik8(data_dir, download=False, expected_size=N, sha256="0" * 64)


def test_missing_file_says_what_to_fetch_and_where(tmp_path):
    with pytest.raises(enwik8.DatasetError) as e:
        dataset(str(tmp_path), split="train")
    message = str(e.value)
    assert "http://mattmahoney.net/dc/enwik8.zip" in message
    assert os.path.join(str(tmp_path), "enwik8.zip") in message
    assert "\n" not in message


def test_failed_download_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    def unreachable(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    target = tmp_path / "new" / "dir"
    with pytest.raises(enwik8.DatasetError) as e:
        enwik8.load_enwik8(str(target), expected_size=N)
    message = str(e.value)
    assert "could not download" in message and "\n" not in message
    assert "http://mattmahoney.net/dc/enwik8.zip" in message
    assert str(target / "enwik8.zip") in message
    assert os.listdir(target) == []  # no partial download left behind


def test_download_then_extract(tmp_path, monkeypatch, raw):
    buffer = io.BytesIO()
    write_zip(buffer, raw.tobytes())
    seen = []

    def fake_urlopen(url, timeout=None):
        seen.append(url)
        return io.BytesIO(buffer.getvalue())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setenv("REFORMER_JAX_DATA", str(tmp_path))
    data = enwik8.load_enwik8(expected_size=N)  # data_dir from $REFORMER_JAX_DATA
    np.testing.assert_array_equal(data, raw)
    assert seen == [enwik8.DATA_URL]
    assert sorted(os.listdir(tmp_path)) == ["enwik8", "enwik8.zip"]


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(split="valid"), "split must be one of"),
        (dict(split="train", seq_len=0), "seq_len must be positive"),
        (dict(split="test", seq_len=-5), "seq_len must be positive"),
        (dict(split="train", batch_size=0), "batch_size must be positive"),
    ],
)
def test_bad_arguments(tmp_path, kw, match):
    # Checked before the data is looked for: the empty dir does not matter.
    with pytest.raises(ValueError, match=match):
        dataset(str(tmp_path), **kw)


def test_train_window_longer_than_split(data_dir):
    with pytest.raises(ValueError, match="exceeds"):
        dataset(data_dir, split="train", seq_len=18_001)
