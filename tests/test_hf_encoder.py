"""HF transformers' bidirectional Reformers (is_decoder=False) against ours, with padding.

The fixtures in tests/data/hf/ come from scripts/make_hf_fixture.py
(ENCODER_CASES): tiny random HF ReformerForMaskedLM (mlm_*),
ReformerForSequenceClassification (classifier) and
ReformerForQuestionAnswering (span) checkpoints run in eval mode and float64
on a batch whose attention_mask pads some rows, with HF's outputs and the
buckets of each LSH layer. No torch or transformers is needed.

Which inputs we agree with HF on, at the real positions: HF hashes padding
(the mask's and its own round-up of the length to a multiple of the chunk
lengths' lcm) into an extra bucket of every round, so each round of its
sorted order ends with the pads and the windows wrap around all its chunks;
we sort the pads after every round and wrap around the chunks of real tokens
only. The orders are the same with one hash round and fewer pads per row
than the LSH chunk length, and with any number of rounds when nothing is
padded; with two rounds and padding, round 1's chunks start at other tokens
in HF than here, and the outputs differ. HF's bidirectional local attention
also wraps around (its first chunk sees the last), ours does not, so the
local layers here attend within their chunk or span the input. The fixture
script refuses cases outside these rules.

Tolerance 1e-4: HF's outputs are float64 and ours float32; float32 rounding
through these models moves them by about 2e-6, while a wrong mask, window or
sort moves them by more than 0.1 (`test_padding_and_window_matter`).
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

HF_DIR = os.path.join(os.path.dirname(__file__), "data", "hf")
MLM_CASES = ("mlm_lsh", "mlm_mixed", "mlm_two_hashes")
CASES = (*MLM_CASES, "classifier", "span")


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
        "span": "ReformerForQuestionAnswering",
    }


@pytest.mark.parametrize("case", ["mlm_lsh", "span"])
def test_padding_and_window_matter(case):
    """The fixtures catch a padding key that is not masked, a causal mask and a narrower window."""
    checkpoint, tokens, mask, data, buckets = _load(case)
    cfg = checkpoint.cfg

    def error(m=mask, **changes):
        got = _outputs(checkpoint, tokens, m, buckets, **changes)
        return _error(checkpoint, mask, data, got)

    assert error() <= 1e-4
    assert error(m=None) > 0.1
    assert error(causal=True) > 0.1
    assert error(cfg=cfg.replace(n_chunks_after=0)) > 0.1


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


def test_wrapping_local_windows_are_flagged(caplog):
    """HF's bidirectional local windows wrap around and ours do not: the converter says so."""
    with open(os.path.join(HF_DIR, "mlm_mixed", "config.json")) as f:
        hf = json.load(f)
    convert.config_from_hf(hf)
    assert "wraps around" not in caplog.text
    convert.config_from_hf(dict(hf, local_num_chunks_before=1))
    assert "local attention wraps around" in caplog.text


@pytest.mark.parametrize(
    "case, task",
    [("mlm_lsh", "MaskedLMTask"), ("classifier", "ClassificationTask"), ("span", "SpanTask")],
)
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
