"""Imagenet64 (Reformer §5): downsampled 64x64 ImageNet as 12,288-token sequences.

Each image [64, 64, 3] is read row by row, pixel by pixel, channel fastest
(`image.reshape(-1)` of the HWC array), so pixel (y, x), channel c is token
(64 * y + x) * 3 + c, a value in 0..255 (vocabulary 256), and every token is
scored. Images come from tensorflow-datasets through `tfds.data_source`:
random access over array_record files, read with numpy alone.

Which dataset
-------------
* `imagenet_resized/64x64` (the default): Chrabaszcz et al.'s box-resized
  ImageNet (1,281,167 train / 50,000 validation images). Its three source
  files are still distributed by image-net.org, so it can be prepared today.
* `downsampled_imagenet/64x64`: van den Oord et al.'s Pixel RNN set, the one
  the paper-era Imagenet64 bits-per-dim results were measured on. Its official
  source (image-net.org/small/) is gone (tfds issue #4662): it can be prepared
  only by someone who already holds the original `train_64x64.tar` and
  `valid_64x64.tar`, placed as in step 2 below. Select it with
  `imagenet64_dataset.name = "downsampled_imagenet/64x64"`. Bits per dim on
  the two sets are not directly comparable.

Preparing `imagenet_resized/64x64` (once; about 14 GB of downloads)
------------------------------------------------------------------
1. Get `Imagenet64_train_part1_npz.zip`, `Imagenet64_train_part2_npz.zip` and
   `Imagenet64_val_npz.zip`: with an image-net.org account, from the
   downsampled-images (npz format) section of https://image-net.org/download-images.php.
   tfds knows their URLs (http://www.image-net.org/data/downsample/...) and
   tries them itself in step 4; when that download fails, download by hand.
2. Put the three files, names unchanged, in `<data_dir>/downloads/manual/`
   (`<data_dir>` defaults to `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).
   tfds uses a file there whose name matches its URL, after checking its size
   and sha256 against tfds's registered checksums.
3. In a separate environment, install TensorFlow next to tensorflow-datasets:
   `pip install tensorflow-cpu "tensorflow-datasets>=4.9.6"`. tfds needs
   TensorFlow to build this dataset (it reads the zips through `tf.io.gfile`
   and PNG-encodes each image with `tf.image.encode_png`); its `tfds` command
   does not start without it.
4. Build it as array_record (tfds's default, tfrecord, has no random access):
   `tfds build imagenet_resized/64x64 --data_dir=<data_dir> --file_format=array_record`
   or, in Python, `tfds.builder("imagenet_resized/64x64", data_dir=<data_dir>,
   file_format="array_record").download_and_prepare()`. Add
   `--manual_dir=<dir>` if the zips are elsewhere. A copy already built as
   tfrecord converts with `tfds convert_format --out_file_format=array_record
   --dataset_version_dir=<data_dir>/imagenet_resized/64x64/<version>`.
5. Train with `imagenet64_dataset.data_dir = "<data_dir>"` (or
   `TFDS_DATA_DIR`). Training needs no TensorFlow: the environment running
   this module needs tensorflow-datasets, array_record, and Pillow or OpenCV,
   which tfds uses to decode the stored PNGs when TensorFlow is absent.

`downsampled_imagenet/64x64` is prepared the same way with its two tars in
step 2 and its name in step 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from reformer_jax.data import (  # DatasetError: what this module raises, for its callers
    DatasetError,  # noqa: F401
    IndexedIterator,
    SinglePassIterator,
    open_tfds_split,
)

DEFAULT_NAME = "imagenet_resized/64x64"
IMAGE_SHAPE = (64, 64, 3)
SEQ_LEN = math.prod(IMAGE_SHAPE)  # 12288
VOCAB_SIZE = 256

# The source files tfds expects in its manual dir, per dataset (see the module docstring).
_SOURCE_FILES = {
    "imagenet_resized/64x64": (
        "Imagenet64_train_part1_npz.zip, Imagenet64_train_part2_npz.zip and "
        "Imagenet64_val_npz.zip (image-net.org, downsampled images, npz format)"
    ),
    "downsampled_imagenet/64x64": (
        "train_64x64.tar and valid_64x64.tar (the original image-net.org/small/ files, "
        "no longer served there)"
    ),
}


def flatten_image(image: np.ndarray) -> np.ndarray:
    """A uint8 [h, w, c] image as int32 [h * w * c] tokens in 0..255.

    Row-major, channel fastest: pixel (y, x), channel k is token (y * w + x) * c + k.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"flatten_image: expected a uint8 [h, w, c] image, got {image.dtype} {image.shape}."
        )
    return image.reshape(-1).astype(np.int32)


def unflatten(tokens: np.ndarray, shape: tuple[int, int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Inverse of `flatten_image`: int tokens [..., h * w * c] -> uint8 images [..., h, w, c]."""
    tokens = np.asarray(tokens)
    size = math.prod(shape)
    if tokens.ndim < 1 or tokens.shape[-1] != size or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"unflatten: expected integer tokens [..., {size}] for images {tuple(shape)}, "
            f"got {tokens.dtype} {tokens.shape}."
        )
    if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB_SIZE):
        raise ValueError(
            f"unflatten: tokens must lie in 0..{VOCAB_SIZE - 1}, "
            f"got {tokens.min()}..{tokens.max()}."
        )
    return tokens.reshape(*tokens.shape[:-1], *shape).astype(np.uint8)


def _preparation_steps(name: str, data_dir: str) -> str:
    """The shortest form of the module docstring's steps, for `name` in `data_dir`."""
    files = _SOURCE_FILES.get(name.split(":")[0])  # "name/config:version" also accepted by tfds
    fetch = (
        f"  1. Put {files} in {data_dir}/downloads/manual/.\n"
        if files
        else "  1. Make its source data available as its tfds catalog page describes.\n"
    )
    return (
        "Prepare it once, in an environment that also has TensorFlow (tfds needs it to "
        "build the dataset, not to read it):\n"
        f"{fetch}"
        '  2. pip install tensorflow-cpu "tensorflow-datasets>=4.9.6"\n'
        f"  3. tfds build {name} --data_dir={data_dir} --file_format=array_record\n"
        "     (already built as tfrecord? tfds convert_format "
        "--dataset_version_dir=<its version dir> --out_file_format=array_record)\n"
        "Details: the docstring of reformer_jax/data/imagenet64.py."
    )


def _open_split(name: str, split: str, data_dir: str | None) -> Sequence[Any]:
    """`tfds.data_source(name, split=split, data_dir=data_dir)`, or a DatasetError."""
    return open_tfds_split(
        name, split, data_dir, label="imagenet64", preparation_steps=_preparation_steps
    )


def _read_image(source: Sequence[Any], index: int, shape: tuple[int, ...] | None = None):
    """Example `index` of `source` as a uint8 [h, w, c] array, checked against `shape`."""
    image = np.asarray(source[int(index)]["image"])
    if image.ndim != 3 or image.dtype != np.uint8 or (shape is not None and image.shape != shape):
        want = f"uint8 {shape}" if shape is not None else "uint8 [h, w, c]"
        raise ValueError(f"imagenet64: example {index} is {image.dtype} {image.shape}, not {want}.")
    return image


class ShuffledImages:
    """Endless training batches, a pure function of (seed, batch index).

    Examples are read as one stream of epochs; epoch e visits the split in the
    order `np.random.default_rng([seed, e]).permutation(n)`, and batch b holds
    stream positions b * batch_size ... (b + 1) * batch_size - 1, so batches run
    across epoch boundaries and no example is dropped.
    """

    def __init__(self, source: Sequence[Any], batch_size: int, seed: int, shape: tuple):
        self.source, self.batch_size, self.seed, self.shape = source, batch_size, seed, shape
        self.num_examples = len(source)
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        """The example indices of epoch `epoch`, in visiting order."""
        if epoch not in self._orders:
            # Two epochs suffice: a batch spans at most the end of one and the start of the next
            # (or more only when batch_size > n, where recomputing is cheap).
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng([self.seed, epoch])
            self._orders[epoch] = rng.permutation(self.num_examples)
        return self._orders[epoch]

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Batch number `index`: {"tokens": int32 [b, h*w*c], "weights": float32 ones}."""
        stream = np.arange(index * self.batch_size, (index + 1) * self.batch_size)
        epochs, offsets = np.divmod(stream, self.num_examples)
        ids = [self.order(int(e))[o] for e, o in zip(epochs, offsets, strict=True)]
        tokens = np.stack([flatten_image(_read_image(self.source, i, self.shape)) for i in ids])
        return {"tokens": tokens, "weights": np.ones(tokens.shape, np.float32)}


class OrderedImages:
    """One pass over a split in order, in full batches of fixed shape.

    The last batch is padded with all-zero rows of weight 0, so each example is
    scored exactly once.
    """

    def __init__(self, source: Sequence[Any], batch_size: int, shape: tuple):
        self.source, self.batch_size, self.shape = source, batch_size, shape
        self.num_examples = len(source)
        self.num_batches = -(-self.num_examples // batch_size)

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Batch number `index` (0 <= index < num_batches)."""
        start = index * self.batch_size
        stop = min(start + self.batch_size, self.num_examples)
        tokens = np.zeros((self.batch_size, math.prod(self.shape)), np.int32)
        weights = np.zeros(tokens.shape, np.float32)
        for row, i in enumerate(range(start, stop)):
            tokens[row] = flatten_image(_read_image(self.source, i, self.shape))
        weights[: stop - start] = 1.0
        return {"tokens": tokens, "weights": weights}


def imagenet64_dataset(
    *,
    split: str,
    batch_size: int,
    seq_len: int,
    seed: int,
    data_dir: str | None = None,
    name: str = DEFAULT_NAME,
) -> IndexedIterator:
    """Imagenet64 as a dataset factory (train.dataset_fn).

    split "train": endless shuffled batches of tfds "train" (see ShuffledImages).
    split "eval" or "validation": tfds "validation" once, in order, with the
    last batch padded (see OrderedImages); `seed` is unused there. Both
    iterators save their next batch index as {"position": int}.
    seq_len must be h * w * c of the images (12288 for 64x64x3).
    Raises DatasetError when `name` is not prepared under `data_dir`.
    """
    if split == "train":
        tfds_split = "train"
    elif split in ("eval", "validation"):
        tfds_split = "validation"
    else:
        raise ValueError(
            f"imagenet64: split must be 'train', 'eval' or 'validation', got {split!r}."
        )
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    source = _open_split(name, tfds_split, data_dir)
    # The shape comes from the data rather than IMAGE_SHAPE: downsampled_imagenet
    # declares no fixed image shape in its features.
    shape = _read_image(source, 0).shape
    if seq_len != math.prod(shape):
        raise ValueError(
            f"imagenet64: seq_len must be {math.prod(shape)} (one token per channel of a "
            f"{shape[0]}x{shape[1]}x{shape[2]} image of {name}), got {seq_len}."
        )
    if tfds_split == "train":
        return IndexedIterator(ShuffledImages(source, batch_size, seed, shape))
    return SinglePassIterator(OrderedImages(source, batch_size, shape))
