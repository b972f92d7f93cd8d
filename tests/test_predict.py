"""python -m reformer_jax.predict: an encoder run's predictions for JSON lines.

Each run here is a workdir as `convert` writes one: a parameters-only
checkpoint (`checkpoints.save_params`) of a tiny encoder and a config.gin
naming its task and dataset (training it would cost CI time and prove
nothing here: whether a model is any good is the tasks' tests' business).
Predictions are checked against the model applied directly to each input
alone, unpadded: the command pads every input to max_len, and padding must
change nothing.
"""

import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import checkpoints, cli, predict, tasks
from reformer_jax.data import listops, tokenizers
from tests.conftest import tiny_config


def _run(workdir, task, cfg, bindings):
    """A workdir holding random (moved off their initial values) parameters of task's model."""
    params = jax.jit(lambda k: task.init_params(task.model(cfg), k, cfg))(jax.random.key(1))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )
    os.makedirs(workdir)
    checkpoints.save_params(workdir, cfg, params)
    with open(os.path.join(workdir, "config.gin"), "w") as f:
        f.write("\n".join(bindings) + "\n")
    return workdir


# The "step" model of tests/conftest.py with a local and an LSH layer, as an encoder,
# with a fixed n_buckets: the automatic count follows the padded length.
def _encoder(vocab_size):
    return tiny_config(
        "step",
        vocab_size=vocab_size,
        causal=False,
        n_layers=2,
        attention_kinds=("local", "lsh"),
        n_buckets=4,
    )


@pytest.fixture(scope="module")
def listops_run(tmp_path_factory):
    return _run(
        str(tmp_path_factory.mktemp("listops") / "run"),
        tasks.ClassificationTask(10),
        _encoder(16),
        [
            "train.task = @ClassificationTask()",
            "ClassificationTask.n_classes = 10",
            "train.dataset_fn = @listops_dataset",
        ],
    )


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    return _run(
        str(tmp_path_factory.mktemp("mlm") / "run"),
        tasks.MaskedLMTask(),
        _encoder(259),
        ["train.task = @MaskedLMTask()", "train.dataset_fn = @stdlib_dataset"],
    )


def _predict(tmp_path, workdir, lines, *flags):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(line + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    argv = [f"--workdir={workdir}", f"--input={source}", f"--output={out}", "--batch_size=2"]
    error = None
    try:
        predict.main(argv + list(flags))
    except cli.UsageError as e:
        error = str(e)
    finally:
        gin.clear_config()
    lines = out.read_text().splitlines() if out.exists() else []
    return [json.loads(line) for line in lines], error


def _direct(workdir, ids):
    """The model applied to one unpadded input, outside the command."""
    run = checkpoints.load_run(workdir)
    cli.parse_gin([os.path.join(workdir, "config.gin")], [])
    try:
        task = cli.task()
    finally:
        gin.clear_config()
    tokens = jnp.asarray(ids, jnp.int32)[None]
    row = task.predict(
        task.model(run.config), run.params, tokens, jnp.ones(tokens.shape, bool), jax.random.key(0)
    )
    return task, {k: np.asarray(v)[0] for k, v in row.items()}


def test_classifier_predictions_equal_each_input_alone(tmp_path, listops_run):
    texts = ["[MAX 2 9 [MIN 4 7 ] 0 ]", "[SM 3 4 ]", "[MED 1 [MAX 8 2 ] 5 6 ]"]
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)]
    lines.append(json.dumps({"ids": [int(i) for i in listops.encode("[MIN 5 6 ]")]}))
    got, error = _predict(tmp_path, listops_run, lines)
    assert error is None and len(got) == 4
    assert [g.get("id") for g in got] == [0, 1, 2, None]  # extra keys are copied, order kept
    for g, text in zip(got, [*texts, "[MIN 5 6 ]"], strict=True):
        _, row = _direct(listops_run, listops.encode(text))
        np.testing.assert_allclose(g["probs"], row["probs"], atol=2e-6)
        assert g["label"] == int(np.argmax(row["probs"]))
        assert abs(sum(g["probs"]) - 1) < 1e-5


@pytest.mark.parametrize(
    "bad,match",
    [
        ("", "empty line"),
        ("{not json", "not JSON"),
        ('{"ids": [1, 99]}', "id 99 is outside the vocabulary 0..15"),
        ('{"ids": [1, true]}', '"ids" must be a list of ints'),
        ('{"ids": []}', "the input is empty"),
        ('{"text": "[MAX 1 2 ]", "ids": [1]}', 'exactly one of "text" or "ids"'),
        ('{"text": "[MAX 1 banana ]"}', "unknown token 'banana'"),
        (json.dumps({"ids": [1] * 40}), "40 tokens, longer than the model's max_len 32"),
    ],
)
def test_bad_lines_are_named(bad, match):
    with pytest.raises(predict.InputError) as e:
        predict.parse_line(
            bad,
            "in.jsonl:7",
            vocab_size=16,
            max_len=32,
            tokenizer=listops.TOKENIZER,
            mask_text="[MASK]",
            mask_id=None,
        )
    assert str(e.value).startswith("in.jsonl:7: ") and match in str(e.value)
    assert "\n" not in str(e.value)


def test_a_bad_line_stops_the_command_after_the_lines_before_it(tmp_path, listops_run):
    good = json.dumps({"text": "[SM 3 4 ]"})
    # Three good lines (one full batch of 2 and one pending), the bad one, one more.
    got, error = _predict(tmp_path, listops_run, [good, good, good, '{"ids": [1, 99]}', good])
    assert error == f"{tmp_path / 'in.jsonl'}:4: id 99 is outside the vocabulary 0..15"
    assert len(got) == 3 and all("label" in g for g in got)


def test_masked_lm_fills_the_masked_positions(tmp_path, mlm_run):
    text = "def f(x):\n    return [MASK] + 1[MASK]"
    got, error = _predict(tmp_path, mlm_run, [json.dumps({"text": text})])
    assert error is None
    (g,) = got
    task, row = _direct(mlm_run, predict._encode(text, tokenizers.BYTES, "[MASK]", 258))
    assert predict._encode("a[MASK]", tokenizers.BYTES, "[MASK]", 258).tolist() == [99, 258]
    positions = [f["position"] for f in g["filled"]]
    assert positions == [len("def f(x):\n    return "), len(text) - 2 * len("[MASK]") + 1]
    for f in g["filled"]:
        assert f["id"] == int(row["ids"][f["position"]]) and f["id"] != 258
        np.testing.assert_allclose(f["prob"], row["prob"][f["position"]], atol=2e-6)
    # Everything else is the input as given, in stdlib_dataset's ids: byte + 2.
    unmasked = [i for p, i in enumerate(g["ids"]) if p not in positions]
    assert bytes(i - 2 for i in unmasked).decode() == text.replace("[MASK]", "")
    # The text is the ids decoded: the input's characters where they were given.
    assert g["text"] == tokenizers.BYTES.decode(g["ids"])
    assert g["text"].startswith("def f(x):\n    return ")
    assert isinstance(task, tasks.MaskedLMTask)


def test_a_language_model_run_is_sent_to_sample(tmp_path, trained_tiny_run):
    got, error = _predict(tmp_path, trained_tiny_run, [json.dumps({"ids": [1, 2]})])
    assert got == [] and "use python -m reformer_jax.sample" in error
