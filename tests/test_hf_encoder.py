"""HF transformers' bidirectional Reformers (is_decoder=False) against ours, with padding.

The fixtures in tests/data/hf/ come from scripts/make_hf_fixture.py
(ENCODER_CASES): tiny random HF ReformerForMaskedLM (mlm_*),
ReformerForSequenceClassification (classifier*) and
ReformerForQuestionAnswering (span*) checkpoints run in eval mode and float64
on a batch whose attention_mask pads some rows, with HF's outputs and the
buckets of each LSH layer; classifier_local's inputs HF ran one at a time,
unpadded. No torch or transformers is needed.

A converted config has window_rule="hf" (docs/algorithm.md, "Window rules"):
HF rounds each sequence up to a multiple of the chunk lengths' lcm, hashes
its padding into an extra bucket of every round, wraps every window around
all the sequence's chunks (the first local chunk sees the last) and, with
few chunks, lets a window hold a chunk twice; our layers do the same. A
padded batch then gives each sequence, at its real positions, what HF gives
it alone, and what HF gives on the padded batch wherever each row rounds up
to the batch's own length (the fixture script refuses other batches, whose
HF outputs depend on how much padding they hold). The cases cover local
windows over 2, 3 and 4 chunks looking both ways, LSH windows that repeat a
chunk, padding in front and at the end with one and two hash rounds, and
the masked-LM, classifier and span heads.

Tolerance 1e-4: HF's outputs are float64 and ours float32; float32 rounding
through these models moves them by about 2e-6, while a wrong mask, window,
sort or window rule moves them by more than 0.1
(`test_padding_and_window_matter`).
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import convert
from reformer_jax.config import ReformerConfig
from tests import inprocess

HF_DIR = os.path.join(os.path.dirname(__file__), "data", "hf")
MLM_CASES = ("mlm_lsh", "mlm_mixed", "mlm_two_hashes", "mlm_windows", "mlm_lsh_repeat")
CASES = (*MLM_CASES, "classifier", "classifier_local", "span", "span_windows")


def _load(case):
    """(HFCheckpoint, tokens [b, l], mask bool [b, l], HF data, our form of HF's buckets)."""
    checkpoint = convert.load_hf(os.path.join(HF_DIR, case))
    data = np.load(os.path.join(HF_DIR, case, "expected.npz"))
    tokens, mask = data["input_ids"], data["attention_mask"].astype(bool)
    hf_buckets = {int(k.split("_")[1]): data[k] for k in data.files if k.startswith("buckets_")}
    buckets = convert.buckets_from_hf(hf_buckets, checkpoint.cfg, length=tokens.shape[1])
    return checkpoint, tokens, mask, data, buckets


def _log_softmax(logits):
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _outputs(checkpoint, tokens, mask, buckets, cfg=None, causal=False):
    """The converted model's outputs, HF's buckets injected, as float64 arrays.

    The encoder models hash for themselves; with HF's buckets we run their
    stack (which takes `buckets`) and then their head. cfg and causal
    override the checkpoint's (for the tests that show what a wrong setting
    changes).
    """
    arch = checkpoint.architecture
    model = convert.hf_model(arch, cfg or checkpoint.cfg, checkpoint.n_labels)
    tokens, mask = jnp.asarray(tokens), None if mask is None else jnp.asarray(mask)

    def run(m):
        hidden = m.stack(tokens, mask=mask, causal=causal, buckets=buckets)
        if arch == convert.MLM_ARCHITECTURE:
            return m.head(hidden)
        return m.head(hidden, mask)

    out = model.apply({"params": checkpoint.params}, method=run)
    return jax.tree_util.tree_map(lambda o: np.asarray(o, np.float64), out)


def _error(checkpoint, mask, data, got):
    """Largest |ours - HF| at the real positions (every example for the classifier)."""
    arch = checkpoint.architecture
    if arch == convert.MLM_ARCHITECTURE:
        return np.abs(got - _log_softmax(data["logits"])).max(-1)[mask].max()
    if arch == convert.CLASSIFIER_ARCHITECTURE:
        return np.abs(got - data["logits"]).max()
    return max(
        np.abs(g - data[k])[mask].max()
        for g, k in zip(got, ("start_logits", "end_logits"), strict=True)
    )


@pytest.mark.parametrize("case", CASES)
def test_converted_encoder_gives_hf_outputs(case):
    """Masked-LM log-probs, class logits, span logits: HF's (float64 run) to 1e-4."""
    checkpoint, tokens, mask, data, buckets = _load(case)
    assert not checkpoint.cfg.causal and sorted(buckets) == checkpoint.cfg.lsh_layers()
    got = _outputs(checkpoint, tokens, mask, buckets)
    assert _error(checkpoint, mask, data, got) <= 1e-4


def test_fixtures_cover_the_encoder_cases():
    """Padding at either end and HF's own round-up; looking ahead; two rounds; local layers."""
    loaded = {c: _load(c) for c in CASES}
    checkpoint, tokens, mask, _, _ = loaded["mlm_lsh"]
    cfg = checkpoint.cfg
    assert cfg.lsh_window() == (1, 1) and tokens.shape[1] % cfg.chunk_len  # HF rounds up
    assert not mask[1].all() and mask[0].all()
    hf = np.load(os.path.join(HF_DIR, "mlm_lsh", "expected.npz"))["buckets_0"]
    assert hf.shape[-1] == 32 and (hf[..., tokens.shape[1] :] == 4).all()  # HF's pad bucket
    checkpoint, _, mask, _, _ = loaded["mlm_mixed"]
    assert set(checkpoint.cfg.attention_kinds) == {"local", "lsh"}
    assert checkpoint.cfg.local_window() == (0, 0)
    assert not mask[0, 0] and not mask[1, -1]  # padded in front and at the end
    checkpoint, _, mask, _, _ = loaded["mlm_two_hashes"]
    assert checkpoint.cfg.n_hashes == 2 and checkpoint.cfg.lsh_window() == (1, 0) and mask.all()
    checkpoint, tokens, mask, data, _ = loaded["classifier"]
    assert checkpoint.n_labels == 3 and data["logits"].shape == (2, 3) and not mask.all()
    assert checkpoint.cfg.local_chunk_len >= tokens.shape[1]  # HF: full attention
    checkpoint, _, mask, data, _ = loaded["span"]
    assert data["start_logits"].shape == mask.shape and not mask.all()
    assert {c: loaded[c][0].architecture for c in CASES} == {
        **dict.fromkeys(MLM_CASES, "ReformerForMaskedLM"),
        "classifier": "ReformerForSequenceClassification",
        "classifier_local": "ReformerForSequenceClassification",
        "span": "ReformerForQuestionAnswering",
        "span_windows": "ReformerForQuestionAnswering",
    }
    assert all(loaded[c][0].cfg.window_rule == "hf" for c in CASES)


def test_fixtures_cover_hf_windows():
    """Local windows over 2, 3 and 4 chunks both ways; LSH windows repeating a chunk (and a
    roll as long as the chunks); padded batches with two hash rounds; each head."""
    checkpoint, tokens, mask, data, _ = _load("classifier_local")
    cfg = checkpoint.cfg
    assert set(cfg.attention_kinds) == {"local"} and cfg.local_window() == (1, 1)
    lengths = mask.sum(1)
    assert (mask == (np.arange(tokens.shape[1]) < lengths[:, None])).all()  # unpadded inputs
    assert 32 <= lengths.min() and lengths.max() == 64 == cfg.max_len
    assert {-(-n // cfg.local_chunk_len) for n in lengths} == {2, 3, 4}  # HF rounds up to these
    assert data["logits"].shape == (5, 3)
    checkpoint, tokens, mask, _, buckets = _load("mlm_windows")
    cfg = checkpoint.cfg
    assert cfg.local_window() == (1, 1) and tokens.shape[1] // cfg.local_chunk_len == 2
    assert cfg.n_hashes == 2 and not mask.all() and buckets
    checkpoint, tokens, mask, _, _ = _load("mlm_lsh_repeat")
    cfg = checkpoint.cfg
    assert cfg.lsh_window() == (3, 0) and cfg.n_hashes * tokens.shape[1] // cfg.chunk_len == 2
    assert not mask[0, 0] and not mask[1, -1]
    checkpoint, tokens, mask, _, _ = _load("span_windows")
    cfg = checkpoint.cfg
    assert cfg.local_window() == (1, 1) and tokens.shape[1] // cfg.local_chunk_len == 4
    assert cfg.n_hashes == 2 and not mask[0, 0] and not mask[1, -1]


@pytest.mark.parametrize(
    "case", ["mlm_lsh", "span", "mlm_windows", "mlm_lsh_repeat", "classifier_local", "span_windows"]
)
def test_padding_and_window_matter(case):
    """The fixtures catch a padding key that is not masked, a causal mask, a narrower window
    and, where HF's windows wrap or repeat a chunk, our own window rule."""
    checkpoint, tokens, mask, data, buckets = _load(case)
    cfg = checkpoint.cfg

    def error(m=mask, **changes):
        got = _outputs(checkpoint, tokens, m, buckets, **changes)
        return _error(checkpoint, mask, data, got)

    assert error() <= 1e-4
    assert error(m=None) > 0.1
    assert error(causal=True) > 0.1
    before, after = cfg.lsh_window()
    narrower = dict(n_chunks_after=0) if after else dict(n_chunks_before=before - 1)
    if cfg.local_window()[1]:  # the local layers' window, fixed apart from the LSH layers'
        narrower.update(local_n_chunks_before=cfg.local_window()[0], local_n_chunks_after=0)
    assert error(cfg=cfg.replace(**narrower)) > 0.1
    if case not in ("mlm_lsh", "span"):
        assert error(cfg=cfg.replace(window_rule="reformer")) > 0.1


def test_buckets_from_hf_removes_the_pad_bucket():
    """With padding HF offsets round r by r * (n_buckets + 1); the pads' bucket becomes 0."""
    cfg = _load("mlm_two_hashes")[0].cfg  # n_buckets 8
    real = np.array([[3, 7, 0, 5], [1, 2, 6, 4]])  # [r, l] for one example and head
    unpadded = real + np.array([[0], [8]])
    padded = np.where([True, True, True, False], real, 8) + np.array([[0], [9]])
    got = convert.buckets_from_hf({0: unpadded[None, None], 1: padded[None, None]}, cfg)
    np.testing.assert_array_equal(got[0][0, 0], real)
    np.testing.assert_array_equal(got[1][0, 0], np.where([1, 1, 1, 0], real, 0))
    cut = convert.buckets_from_hf({0: padded[None, None]}, cfg, length=3)
    np.testing.assert_array_equal(cut[0][0, 0], real[:, :3])


def _edited(tmp_path, case, **changes):
    path = tmp_path / case
    shutil.copytree(os.path.join(HF_DIR, case), path)
    with open(path / "config.json") as f:
        config = json.load(f)
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize(
    "case, changes, match",
    [
        ("mlm_lsh", {"is_decoder": True}, "is_decoder=True is not supported: ReformerForMaskedLM"),
        ("mlm_lsh", {"architectures": ["ReformerModel"]}, "give one of .*ForSequenceClass"),
        ("span", {"num_labels": 3}, "num_labels=3 is not supported: a ReformerForQuestionAns"),
        ("classifier", {"problem_type": "regression"}, "problem_type='regression' is not sup"),
        ("classifier", {"id2label": {"0": "yes"}}, "num_labels=1, problem_type=None is not"),
        (
            "classifier",
            {"id2label": {str(i): str(i) for i in range(4)}},
            r"classifier.out_proj.weight has shape \(3, 16\), but config.json implies \(4, 16\)",
        ),
    ],
)
def test_refused_encoder_configs(tmp_path, case, changes, match):
    with pytest.raises(convert.ConversionError, match=match) as e:
        convert.load_hf(_edited(tmp_path, case, **changes))
    assert "\n" not in str(e.value)


def test_classifier_dropout_is_flagged(tmp_path, caplog):
    convert.load_hf(os.path.join(HF_DIR, "classifier"))
    assert "classifier_dropout" not in caplog.text
    convert.load_hf(_edited(tmp_path, "classifier", classifier_dropout=0.3))
    assert "classifier_dropout=0.3 differs from hidden_dropout_prob=0.05" in caplog.text


def test_converted_configs_take_hf_windows(caplog):
    """convert writes HF's window rule, whatever the windows; our own configs keep ours."""
    with open(os.path.join(HF_DIR, "mlm_mixed", "config.json")) as f:
        hf = json.load(f)
    for changes in ({}, {"local_num_chunks_before": 1, "local_num_chunks_after": 1}):
        assert convert.config_from_hf(dict(hf, **changes)).window_rule == "hf"
    assert "wraps around" not in caplog.text
    assert ReformerConfig().window_rule == "reformer"


@pytest.mark.slow
def test_predict_on_a_converted_classifier_gives_hf_probabilities(tmp_path):
    """The user's path: convert's CLI, then predict's, on inputs of 32 to 64 tokens; the class
    probabilities are HF's for each input alone (local windows over 2, 3 and 4 chunks)."""
    from reformer_jax import predict

    data = np.load(os.path.join(HF_DIR, "classifier_local", "expected.npz"))
    tokens, mask = data["input_ids"], data["attention_mask"].astype(bool)
    workdir, inputs = str(tmp_path / "run"), tmp_path / "inputs.jsonl"
    result = inprocess.run(
        convert.main, f"--hf_dir={os.path.join(HF_DIR, 'classifier_local')}", f"--workdir={workdir}"
    )
    assert result.returncode == 0, result.stderr
    lines = [json.dumps({"ids": row[m].tolist()}) for row, m in zip(tokens, mask, strict=True)]
    inputs.write_text("\n".join(lines) + "\n")
    result = inprocess.run(predict.main, f"--workdir={workdir}", f"--input={inputs}")
    assert result.returncode == 0, result.stderr
    got = np.array([json.loads(line)["probs"] for line in result.stdout.splitlines()])
    want = np.exp(_log_softmax(data["logits"]))
    assert got.shape == want.shape == (5, 3)
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize(
    "case, task",
    [("mlm_lsh", "MaskedLMTask"), ("classifier", "ClassificationTask"), ("span", "SpanTask")],
)
@pytest.mark.slow
def test_cli_workdir_holds_the_encoder_and_its_task(tmp_path, capsys, case, task):
    """convert CLI -> workdir whose config.gin names the task; its model gives HF's outputs."""
    from reformer_jax import checkpoints, cli

    workdir = str(tmp_path / "run")
    convert.main([f"--hf_dir={os.path.join(HF_DIR, case)}", f"--workdir={workdir}"])
    out = capsys.readouterr().out
    assert f"train.task = {task}" in out
    run = checkpoints.load_run(workdir)
    checkpoint, tokens, mask, data, buckets = _load(case)
    assert run.config == checkpoint.cfg and run.step == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, run.params, checkpoint.params)

    cli.parse_gin([os.path.join(workdir, "config.gin")], [])
    model = cli.task().model(cli.model_config())
    assert model == checkpoint.model()
    got = _outputs(dataclasses.replace(checkpoint, params=run.params), tokens, mask, buckets)
    assert _error(checkpoint, mask, data, got) <= 1e-4


def test_cli_refuses_an_unsupported_architecture_in_one_line(tmp_path, capsys):
    from reformer_jax import cli

    path = _edited(tmp_path, "span", architectures=["ReformerModel"])
    with pytest.raises(SystemExit) as e:
        cli.run_main(convert.main, [f"--hf_dir={path}", f"--workdir={tmp_path}/run"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "architectures=['ReformerModel'] is not supported" in err
    for name in convert.ARCHITECTURES:
        assert name in err


@pytest.mark.parametrize("kind", ["lsh", "local"])
def test_fused_kernel_takes_hf_windows(kind):
    """The fused kernel (interpret mode) runs HF's windows as the jnp path does, values and
    gradients, in a batch of two lengths whose windows wrap around 4 and 2 chunks (the latter
    holding a chunk more than once, and a roll by 2 of 2 chunks)."""
    from reformer_jax import attention

    q, k, v, weights = (jax.random.normal(jax.random.key(i), (2, 2, 32, 16)) for i in range(4))
    mask = jnp.arange(32) < jnp.array([[32], [13]])  # HF runs the second at 16: 2 chunks of 8
    window = dict(chunk_len=8, causal=False, n_chunks_before=2, n_chunks_after=1, mask=mask)
    window.update(window_rule="hf")

    def loss(q, k, v, impl):
        if kind == "lsh":
            hashing = dict(key=jax.random.key(9), n_hashes=1, n_buckets=4)
            out, _ = attention.lsh_attention(q, v, impl=impl, **hashing, **window)
        else:
            out = attention.local_attention(q, k, v, impl=impl, **window)
        return jnp.sum(jnp.where(mask[:, None, :, None], out * weights, 0.0)), out

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    (want_grads, want), (got_grads, got) = grad(q, k, v, "xla"), grad(q, k, v, "interpret")
    scale = lambda x: float(jnp.abs(x).max())
    assert jnp.abs(jnp.where(mask[:, None, :, None], got - want, 0)).max() <= 1e-5 * scale(want)
    for name, g, w in zip("qkv", got_grads, want_grads, strict=True):
        if kind == "lsh" and name == "k":
            continue  # shared-QK: no k
        assert jnp.abs(g - w).max() <= 1e-5 * scale(w), name
