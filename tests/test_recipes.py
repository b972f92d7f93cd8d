"""Runs every command of the README's recipe table, at smoke size.

Each row of the table under "## Recipes" names a config and the commands that
train, evaluate and predict or sample with it. The test runs each command as
the table spells it, in-process through the same `main` as its command line
(tests/inprocess.py), from a scratch directory that holds what the commands
name (runs/, inputs.jsonl, cat.png, reformer-cp). It appends only smoke-size
flags: two steps, small batches, narrow models and small data splits, plus
`--num_tokens` for sampling. Data a test cannot download is the small
real-format data the dataset tests use: a zip of random bytes in enwik8's
format, tfds mock data for Imagenet64 and WMT14 (with a tiny SentencePiece
vocabulary where scripts/wmt14_vocab.py would write one), and the HF fixture
tests/data/hf/spm_lm for the downloaded checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import zipfile

import gin
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests import inprocess
from tests.test_wmt14 import TINY_MODEL, fake_as_data_source, train_sentencepiece

pytestmark = pytest.mark.slow  # trains, evaluates and samples every recipe: minutes on 2 cores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = re.compile(r"`(python -m reformer_jax\.[^`]+)`")
ENWIK8_BYTES = 20_000

# Smoke size. Every run: two steps of two rows, no evaluation or Table 2 variants during
# training (the evaluate commands run those), one batch where a command evaluates by default.
STEPS = [
    "train.steps = 2",
    "train.batch_size = 2",
    "train.grad_accum_steps = 1",
    "train.warmup_steps = 0",
    "train.eval_every = 0",
    "train.eval_batches = 1",
    "train.checkpoint_every = 2",
    "train.final_eval = ()",
    "train.progress = False",
]
NARROW = [
    "ReformerConfig.d_model = 64",
    "ReformerConfig.d_ff = 128",
    "ReformerConfig.n_heads = 2",
    "ReformerConfig.d_head = 16",
]
ENWIK8 = [  # the fake zip of random bytes written by _data
    f"enwik8_dataset.expected_size = {ENWIK8_BYTES}",
    "enwik8_dataset.download = False",
    "SEQ_LEN = 256",
    "ReformerConfig.axial_shape = (16, 16)",
    "ReformerConfig.axial_dims = (32, 32)",
    "ReformerConfig.chunk_len = 32",
    "RunSettings.ff_chunk_size = 128",
    "RunSettings.loss_chunk_size = 128",
]
SHRINK = {  # per config: only sizes change (layers, length, width, split sizes)
    "copy.gin": NARROW + ["ReformerConfig.axial_dims = (64,)"],
    "copy_paper.gin": NARROW + ["ReformerConfig.axial_dims = (64,)"],
    "enwik8.gin": NARROW
    + ENWIK8
    + ["ReformerConfig.local_chunk_len = 32", "ReformerConfig.n_buckets = 8"],
    "long_1m.gin": NARROW + ENWIK8 + ["ReformerConfig.n_layers = 2"],
    "imagenet64.gin": NARROW
    + [
        "ReformerConfig.n_layers = 1",
        "ReformerConfig.axial_dims = (24, 24, 16)",
        "RunSettings.attention_head_chunk = None",
        "RunSettings.ff_chunk_size = 2048",
        "RunSettings.loss_chunk_size = 2048",
    ],
    "mlm_cpu.gin": NARROW
    + ["ReformerConfig.axial_dims = (32, 32)", "stdlib_dataset.max_bytes = 60000"],
    "listops_cpu.gin": NARROW
    + ["ReformerConfig.n_layers = 2", "listops_dataset.n_train = 64", "listops_dataset.n_eval = 8"],
    "spans_cpu.gin": NARROW + ["span_dataset.eval_examples = 8"],
    "reverse_cpu.gin": ["seq2seq_dataset.eval_examples = 8"],
    "wmt14_ende.gin": TINY_MODEL,  # on the tiny vocabulary _data trains
}
INPUTS = {  # inputs.jsonl of each predict command
    "mlm_cpu.gin": [{"text": "def add(a, b):\n    return a [MASK] b\n"}],
    "listops_cpu.gin": [{"text": "[MAX 2 9 [MIN 4 7 ] 0 ]"}, {"text": "[SM 1 2 ]"}],
    "spans_cpu.gin": [{"ids": [5, 6, 1, 7, 8, 9, 2, 10, 11]}],  # 1 opens the span, 2 closes it
}


def _rows() -> list[tuple[str, list[str]]]:
    """(config, commands) per row of the README's recipe table."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    table = text.split("\n## Recipes\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0] in ("task", "---"):
            continue
        config = re.match(r"`([\w.]+)`|written by convert", cells[1])
        assert config, line
        rows.append((config.group(1) or "convert", COMMAND.findall(cells[2])))
    assert len(rows) >= 10, rows
    return rows


ROWS = _rows()


def test_table_covers_every_command_and_make_train():
    """Every row has commands, every command a main; `make train` is the first row's."""
    for config, commands in ROWS:
        assert commands, config
        for command in commands:
            assert shlex.split(command)[2] in inprocess.MAINS, command
    with open(os.path.join(ROOT, "Makefile")) as f:
        make = f.read()
    gin_file = re.search(r"^GIN\s*\?=\s*(\S+)", make, re.M).group(1)
    workdir = re.search(r"^WORKDIR\s*\?=\s*(\S+)", make, re.M).group(1)
    make_train = f"python -m reformer_jax.train --gin_file={gin_file} --workdir={workdir}"
    assert ROWS[0][1][0] == make_train


def _data(config: str, scratch: str, stack: contextlib.ExitStack) -> None:
    """What the row's dataset would download or find prepared, at smoke size."""
    data = os.path.join(scratch, "data")
    os.makedirs(data, exist_ok=True)
    if config in ("enwik8.gin", "long_1m.gin"):
        buf = io.BytesIO()
        raw = np.random.default_rng(0).integers(32, 127, ENWIK8_BYTES, np.uint8).tobytes()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("enwik8", raw)
        with open(os.path.join(data, "enwik8.zip"), "wb") as f:
            f.write(buf.getvalue())
    if config == "imagenet64.gin":
        stack.enter_context(tfds.testing.mock_data(num_examples=4))
        from PIL import Image

        pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
        Image.fromarray(pixels).save(os.path.join(scratch, "cat.png"))
    if config == "wmt14_ende.gin":
        stack.enter_context(tfds.testing.mock_data(as_data_source_fn=fake_as_data_source))
        os.makedirs(os.path.join(data, "wmt14"))
        train_sentencepiece(os.path.join(data, "wmt14", "spiece.model"))
    if config == "convert":
        shutil.copytree(os.path.join(ROOT, "tests", "data", "hf", "spm_lm"), "reformer-cp")
    if config in INPUTS:
        with open("inputs.jsonl", "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in INPUTS[config])


def _smoke(config: str, module: str) -> list[str]:
    """The flags appended to a command of the row: smoke size only."""
    if module in ("reformer_jax.train", "reformer_jax.memory"):
        return [f"--gin_param={b}" for b in STEPS + SHRINK.get(config, [])]
    if module == "reformer_jax.sample" and config == "convert":
        return ["--num_tokens=1"]  # the fixture's max_len is 16, the prompt 15 of its pieces
    if module == "reformer_jax.sample" and config != "reverse_cpu.gin":
        return ["--num_tokens=8"]
    return []


def _check_output(config: str, command: str, argv: list[str], stdout: str) -> None:
    """What a user would look at: predictions, samples, an image grid, a plan."""
    module = argv[2]
    if module == "reformer_jax.predict":
        outputs = [json.loads(line) for line in stdout.splitlines()]
        assert len(outputs) == len(INPUTS[config]), stdout
        for out in outputs:
            if config == "listops_cpu.gin":
                assert out["label"] in range(10) and abs(sum(out["probs"]) - 1) < 1e-5, out
            elif config == "spans_cpu.gin":  # positions of the input; ids the span between them
                ids = INPUTS[config][0]["ids"]
                assert 0 <= out["start"] < len(ids) and 0 <= out["end"] < len(ids), out
                assert out["ids"] == ids[out["start"] : out["end"] + 1], out
            else:  # masked LM: the one [MASK] filled with a byte, the rest as typed
                assert len(out["filled"]) == 1, out
                assert out["text"].startswith("def add(a, b):\n    return a "), out
    elif module == "reformer_jax.sample":
        flags = dict(a.split("=", 1) for a in argv[3:] if "=" in a)
        if "--image_prompt" in flags:
            from PIL import Image

            assert Image.open(flags["--output"]).size == (3 * 64, 64)
        elif "--json" in argv:
            records = [json.loads(line) for line in stdout.splitlines()]
            assert [len(r["ids"]) for r in records] == [8], stdout
        elif "--prompt" in flags:  # text in, the prompt's text back out
            assert flags["--prompt"] in stdout, stdout
        else:
            assert stdout.strip(), command
    elif module == "reformer_jax.memory":
        assert "GiB" in stdout, stdout


@pytest.mark.parametrize("config, commands", ROWS, ids=[r[0] for r in ROWS])
def test_recipe_runs(config, commands, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REFORMER_JAX_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # memory.main sets it
    with contextlib.ExitStack() as stack:
        _data(config, str(tmp_path), stack)
        for command in commands:
            argv = shlex.split(command)
            assert argv[:2] == ["python", "-m"], command
            try:
                result = inprocess.run(
                    inprocess.MAINS[argv[2]], *argv[3:], *_smoke(config, argv[2])
                )
            finally:
                gin.clear_config()
            assert result.returncode == 0, (command, result.stderr[-3000:])
            _check_output(config, command, argv, result.stdout)
