"""The shipped configs parse, build and lower their training step at full size (fast:
tracing, no compilation), and train a step with their sizes shrunk (end to end)."""

import io
import os
import zipfile

import gin
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from reformer_jax import cli, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(n for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".gin"))
SHIPPED.remove("base.gin")  # included by the others, not a run of its own
SMALL = [  # only sizes change: layers, length, width
    "ReformerConfig.d_model = 64",
    "ReformerConfig.d_ff = 128",
    "ReformerConfig.n_heads = 2",
    "ReformerConfig.d_head = 16",
    "RunSettings.ff_chunk_size = 128",
    "RunSettings.loss_chunk_size = 128",
    "train.steps = 1",
    "train.batch_size = 2",
    "train.grad_accum_steps = 1",
    "train.eval_every = 0",
    "train.progress = False",
]


def _train(tmp_path, gin_file, params):
    cli.parse_gin([os.path.join(ROOT, "configs", gin_file)], SMALL + params)
    workdir = str(tmp_path / "run")
    cli.prepare_workdir(workdir)
    try:
        cli.call_train(workdir=workdir)
    finally:
        gin.clear_config()
    lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    assert len(lines) == 1 and np.isfinite(float(lines[0].split('"loss": ')[1].split(",")[0]))
    return open(os.path.join(workdir, "config.gin")).read()


@pytest.mark.parametrize("gin_file", SHIPPED)
def test_every_shipped_config_lowers_its_full_size_training_step(gin_file):
    """The step train() would run for the config as shipped (its task, model, run settings,
    optimizer and micro-batches, one device), lowered to XLA for its batch: every shape,
    task and setting is checked by tracing, with nothing compiled or allocated."""
    cli.parse_gin([os.path.join(ROOT, "configs", gin_file)], [])
    try:
        cfg, task, run = cli.model_config(), cli.task(), cli.run_settings()
        task.check(cfg)
        run.check(cfg)
        unbound = object()
        bound = {name: cli.query(f"train.{name}", unbound) for name in trainer.OPTIMIZER_ARGS}
        bound = {name: value for name, value in bound.items() if value is not unbound}
        opt, lr = trainer.make_optimizer(steps=cli.query("train.steps"), **bound)
        accum = cli.query("train.grad_accum_steps", 1)
        step = trainer.make_step(
            task, cfg, run, opt, lr, grad_accum_steps=1 if accum == "auto" else accum
        )
        batch = step.batch(cli.query("train.batch_size"))
        lowered = step.fn.lower(step.state, batch)
    finally:
        gin.clear_config()
    # The step returns a state of its input's shapes and dtypes (what donation needs).
    shapes = lambda tree: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), tree)
    assert shapes(lowered.out_info[0]) == shapes(step.state)


@pytest.mark.slow  # compiles and runs a training step
def test_enwik8_config_trains_a_step(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("enwik8", np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    (data / "enwik8.zip").write_bytes(buf.getvalue())
    config = _train(
        tmp_path,
        "enwik8.gin",
        [
            "SEQ_LEN = 256",
            "ReformerConfig.n_layers = 4",
            "ReformerConfig.local_chunk_len = 32",
            "ReformerConfig.chunk_len = 32",
            "ReformerConfig.n_buckets = 8",
            "ReformerConfig.axial_shape = (16, 16)",
            "ReformerConfig.axial_dims = (32, 32)",
            f"enwik8_dataset.data_dir = '{data}'",
            "enwik8_dataset.expected_size = 20000",
            "enwik8_dataset.download = False",
        ],
    )
    # What the paper's config says survives the size overrides.
    assert 'attention_kinds = ("local", "local", "lsh", "local")' in config.replace("'", '"')
    assert (
        "ReformerConfig.dropout = 0.2" in config and "ReformerConfig.vocab_size = %VOCAB" in config
    )


@pytest.mark.slow  # compiles and runs a training step
def test_imagenet64_config_trains_a_step(tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        config = _train(
            tmp_path,
            "imagenet64.gin",
            [
                "ReformerConfig.n_layers = 1",
                "ReformerConfig.axial_dims = (24, 24, 16)",
                "RunSettings.attention_head_chunk = None",
            ],
        )
    assert "ReformerConfig.axial_shape = (64, 64, 3)" in config
    assert "ReformerConfig.ff_activation = 'gelu'" in config.replace('"', "'")


@pytest.mark.slow  # compiles and runs a training step
@pytest.mark.parametrize(
    "gin_file,params",
    [
        ("reverse_cpu.gin", []),
        ("sort_cpu.gin", []),
        ("addition_cpu.gin", []),
        # Shorter than the config's 256, so the shortest source shrinks with it.
        ("copy_long_cpu.gin", ["SEQ_LEN = 64", "seq2seq_dataset.min_len = 32"]),
    ],
)
def test_seq2seq_config_trains_a_step(tmp_path, gin_file, params):
    # One step: the cosine schedule needs total_steps > warmup_steps.
    shrunk = ["train.warmup_steps = 0", "seq2seq_dataset.eval_examples = 4"]
    config = _train(tmp_path, gin_file, shrunk + params)
    # The task and the encoder-decoder survive the size overrides.
    assert "train.task = @Seq2SeqTask()" in config
    assert "ReformerConfig.cross_attention = True" in config


@pytest.mark.parametrize(
    "gin_file,max_len,vocab",
    [
        ("enwik8.gin", 65536, 258),
        ("enwik8_small.gin", 16384, 258),
        ("enwik8_cpu.gin", 1024, 258),
        ("imagenet64.gin", 12288, 256),
        ("imagenet64_small.gin", 12288, 256),
        ("imagenet64_cpu.gin", 12288, 256),
        ("copy.gin", 256, 128),
        ("copy_paper.gin", 1024, 128),
        ("enwik8_mlm.gin", 65536, 259),
        ("mlm_cpu.gin", 256, 259),
        ("spans_cpu.gin", 128, 16),
        ("reverse_cpu.gin", 32, 16),
        ("sort_cpu.gin", 32, 16),
        ("addition_cpu.gin", 32, 13),
        ("copy_long_cpu.gin", 256, 32),
    ],
)
def test_every_config_parses_to_a_valid_model(gin_file, max_len, vocab):
    cli.parse_gin([os.path.join(ROOT, "configs", gin_file)], [])
    try:
        cfg = cli.model_config()  # validates: axial shapes, cycle, buckets, ...
        assert (cfg.max_len, cfg.vocab_size) == (max_len, vocab)
        assert cli.query("train.steps") > 0 and cli.query("train.dataset_fn") is not None
        cli.task().check(cfg)  # an encoder task's config says causal=False
    finally:
        gin.clear_config()
