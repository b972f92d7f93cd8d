"""Imagenet64 through tensorflow-datasets, without downloads or TensorFlow.

Most tests use `tfds.testing.mock_data`, which replaces only the builder's
`as_data_source`: `tfds.data_source` still resolves `imagenet_resized/64x64`
to its real builder, and `imagenet64_dataset` batches what comes back. One
test reads real array_record files that a tiny builder writes to a tmp dir.
"""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from reformer_jax.data import imagenet64

N_TRAIN, N_VAL = 10, 5
SPLIT_IDS = {"train": 1, "validation": 2}


def fake_image(split: str, index: int) -> np.ndarray:
    """Random pixels, except that channels 0 and 1 of pixel (0, 0) name the example."""
    image = np.random.default_rng([SPLIT_IDS[split], index]).integers(
        0, 256, imagenet64.IMAGE_SHAPE, dtype=np.uint8
    )
    image[0, 0, :2] = index, SPLIT_IDS[split]
    return image


class FakeSplit:
    """A random-access split of `n` fake examples, like tfds's ArrayRecordDataSource."""

    def __init__(self, split: str, n: int):
        self.split, self.n = split, n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        if not 0 <= index < self.n:
            raise IndexError(index)
        return {"image": fake_image(self.split, index), "label": 0}


def fake_as_data_source(builder, split, decoders=None, deserialize_method=None, **kwargs):
    # Only the 64x64 config can be asked for: this checks the name resolved as intended.
    assert (builder.name, builder.builder_config.name) == ("imagenet_resized", "64x64")
    return FakeSplit(split, {"train": N_TRAIN, "validation": N_VAL}[split])


class ReformerJaxTinyImages(tfds.core.GeneratorBasedBuilder):
    """Real array_record files of 64x64x3 images, built without TensorFlow.

    The images are plain uint8 tensors rather than PNGs (as in imagenet_resized)
    because decoding PNGs without TensorFlow needs Pillow or OpenCV.
    """

    VERSION = tfds.core.Version("1.0.0")
    # Nothing to download: skip the checksum-file lookup, which in tfds 4.9.10
    # imports importlib_resources, absent from this venv.
    url_infos = None
    _checksums_path = None

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Tensor(shape=imagenet64.IMAGE_SHAPE, dtype=np.uint8)}
            )
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples("train"),
            "validation": self._generate_examples("validation"),
        }

    def _generate_examples(self, split):
        for i in range({"train": N_TRAIN, "validation": N_VAL}[split]):
            yield i, {"image": fake_image(split, i)}


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = ReformerJaxTinyImages(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return data_dir


@pytest.fixture
def fake_tfds():
    with tfds.testing.mock_data(as_data_source_fn=fake_as_data_source):
        yield


def dataset(split, batch_size, seed=0, **kw):
    return imagenet64.imagenet64_dataset(
        split=split, batch_size=batch_size, seq_len=imagenet64.SEQ_LEN, seed=seed, **kw
    )


def example_ids(batch):
    """(split id, example index) of each row, read back from the tokens of pixel (0, 0)."""
    return [(int(s), int(i)) for i, s in batch["tokens"][:, :2]]


def test_flatten_order_and_round_trip():
    y, x, c = np.meshgrid(np.arange(64), np.arange(64), np.arange(3), indexing="ij")
    index = np.arange(imagenet64.SEQ_LEN)
    # One image per coordinate, since 12288 positions cannot each get a distinct uint8.
    for coord, want in [
        (y, index // (64 * 3)),
        (x, index // 3 % 64),
        (c, index % 3),
        ((3 * (64 * y + x) + c) % 256, index % 256),
    ]:
        tokens = imagenet64.flatten_image(coord.astype(np.uint8))
        assert tokens.dtype == np.int32 and tokens.shape == (12288,)
        np.testing.assert_array_equal(tokens, want)
        np.testing.assert_array_equal(imagenet64.unflatten(tokens), coord)
    image = fake_image("train", 3)
    back = imagenet64.unflatten(imagenet64.flatten_image(image))
    assert back.dtype == np.uint8 and back.shape == (64, 64, 3)
    np.testing.assert_array_equal(back, image)
    # Batched tokens unflatten too.
    batch = np.stack([imagenet64.flatten_image(image)] * 2)
    assert imagenet64.unflatten(batch).shape == (2, 64, 64, 3)


@pytest.mark.parametrize(
    "fn,arg",
    [
        (imagenet64.flatten_image, np.zeros((64, 64, 3), np.float32)),
        (imagenet64.flatten_image, np.zeros((64, 192), np.uint8)),
        (imagenet64.unflatten, np.zeros(1024, np.int32)),
        (imagenet64.unflatten, np.full(12288, 256, np.int32)),
        (imagenet64.unflatten, np.zeros(12288, np.float32)),
    ],
)
def test_flatten_rejects_bad_input(fn, arg):
    with pytest.raises(ValueError):
        fn(arg)


def test_batches_from_tfds_random_mock_data():
    # The default mock draws examples from the builder's real feature spec.
    with tfds.testing.mock_data(num_examples=3):
        for split in ("train", "eval"):
            batch = next(dataset(split, batch_size=2, data_dir="/nonexistent"))
            assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (2, 12288)
            assert batch["weights"].dtype == np.float32 and batch["weights"].shape == (2, 12288)
            assert 0 <= batch["tokens"].min() and batch["tokens"].max() <= 255
            np.testing.assert_array_equal(batch["weights"], 1.0)


def test_seq_len_must_match_images(fake_tfds):
    with pytest.raises(ValueError, match="seq_len must be 12288"):
        imagenet64.imagenet64_dataset(split="train", batch_size=2, seq_len=1024, seed=0)
    with pytest.raises(ValueError, match="split"):
        dataset("test", batch_size=2)


def test_train_order_is_a_permutation_per_epoch(fake_tfds):
    it = dataset("train", batch_size=4, seed=7)
    batches = [next(it) for _ in range(5)]  # 20 examples: two epochs of 10
    for batch in batches:
        assert batch["tokens"].shape == (4, 12288)
        assert 0 <= batch["tokens"].min() and batch["tokens"].max() <= 255
        assert batch["tokens"].max() > 200  # full pixel range, not just the id pixels
        np.testing.assert_array_equal(batch["weights"], 1.0)
        # Each row is exactly the example its id names.
        for row, (split_id, i) in zip(batch["tokens"], example_ids(batch), strict=True):
            assert split_id == SPLIT_IDS["train"]
            np.testing.assert_array_equal(row, imagenet64.flatten_image(fake_image("train", i)))
    seen = [i for batch in batches for _, i in example_ids(batch)]
    for epoch in (0, 1):
        want = np.random.default_rng([7, epoch]).permutation(N_TRAIN)
        np.testing.assert_array_equal(seen[10 * epoch : 10 * (epoch + 1)], want)
    assert seen[:10] != seen[10:]


def test_train_is_deterministic_and_resumes(fake_tfds):
    first = [next(dataset("train", 3, seed=1))["tokens"] for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    other = next(dataset("train", 3, seed=2))["tokens"]
    assert not np.array_equal(first[0], other)

    it = dataset("train", 3, seed=1)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    assert state == {"position": 3}
    expected = [next(it)["tokens"] for _ in range(4)]  # crosses the epoch boundary at 10
    resumed = dataset("train", 3, seed=1)
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["tokens"], want)


@pytest.mark.parametrize("split", ["eval", "validation"])
def test_eval_covers_validation_once_with_padding(fake_tfds, split):
    batches = list(dataset(split, batch_size=2))
    assert len(batches) == 3  # ceil(5 / 2)
    for batch in batches:
        assert batch["tokens"].shape == batch["weights"].shape == (2, 12288)
    real = [
        ids
        for batch in batches
        for ids, w in zip(example_ids(batch), batch["weights"], strict=True)
        if w.all()
    ]
    assert real == [(SPLIT_IDS["validation"], i) for i in range(N_VAL)]
    # The one padding row: zero tokens, zero weight.
    np.testing.assert_array_equal(batches[-1]["weights"][1], 0.0)
    np.testing.assert_array_equal(batches[-1]["tokens"][1], 0)
    assert sum(float(b["weights"].sum()) for b in batches) == N_VAL * 12288

    it = dataset(split, batch_size=2)
    next(it)
    resumed = dataset(split, batch_size=2)
    resumed.set_state(json.loads(json.dumps(it.get_state())))
    rest = list(resumed)
    assert len(rest) == 2
    np.testing.assert_array_equal(rest[0]["tokens"], batches[1]["tokens"])
    with pytest.raises(StopIteration):
        next(resumed)


@pytest.mark.parametrize(
    "name,source_file",
    [
        ("imagenet_resized/64x64", "Imagenet64_val_npz.zip"),
        ("downsampled_imagenet/64x64", "valid_64x64.tar"),
    ],
)
def test_missing_dataset_is_one_clear_error(tmp_path, name, source_file):
    with pytest.raises(imagenet64.DatasetError) as info:
        dataset("eval", batch_size=2, data_dir=str(tmp_path), name=name)
    message = str(info.value)
    for part in (
        name,
        str(tmp_path),
        f"{tmp_path}/downloads/manual",
        source_file,
        "tensorflow",
        f"tfds build {name}",
        "--file_format=array_record",
    ):
        assert part in message, part
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unknown_dataset_name_is_a_clear_error(tmp_path):
    with pytest.raises(imagenet64.DatasetError, match="not a dataset tfds knows"):
        dataset("train", batch_size=2, data_dir=str(tmp_path), name="no_such_imagenet/64x64")


def test_real_array_record_files(tiny_data_dir):
    kw = dict(data_dir=tiny_data_dir, name="reformer_jax_tiny_images")
    # tfds writes examples in its own (hashed) order: positions index that order.
    stored = {
        split: [
            imagenet64.flatten_image(ex["image"])
            for ex in tfds.data_source(kw["name"], split=split, data_dir=tiny_data_dir)
        ]
        for split in ("train", "validation")
    }
    assert sorted(int(t[0]) for t in stored["validation"]) == list(range(N_VAL))
    evals = list(dataset("eval", batch_size=4, **kw))
    assert len(evals) == 2
    np.testing.assert_array_equal(evals[0]["tokens"], np.stack(stored["validation"][:4]))
    np.testing.assert_array_equal(evals[1]["tokens"][0], stored["validation"][4])
    np.testing.assert_array_equal(evals[1]["weights"][1:], 0.0)

    train = dataset("train", batch_size=5, seed=3, **kw)
    order = np.random.default_rng([3, 0]).permutation(N_TRAIN)
    for half in range(2):
        want = np.stack([stored["train"][i] for i in order[5 * half : 5 * (half + 1)]])
        np.testing.assert_array_equal(next(train)["tokens"], want)
