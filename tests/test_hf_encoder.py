"""HF transformers' bidirectional Reformers (is_decoder=False) against ours, with padding.

The fixtures in tests/data/hf/mlm_*/ come from scripts/make_hf_fixture.py
(ENCODER_CASES): tiny random HF ReformerForMaskedLM checkpoints run in eval
mode and float64 on a batch whose attention_mask pads some rows, with HF's
logits and the buckets of each LSH layer. No torch or transformers is needed.

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
local layers here attend within their chunk. The fixture script refuses
cases outside these rules.

Tolerance 1e-4: HF's logits are float64 and ours float32; float32 rounding
through these models moves log-probs by about 2e-6, while a wrong mask,
window or sort moves them by more than 1 (`test_padding_and_window_matter`).
"""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import convert
from reformer_jax.model import ReformerLM

HF_DIR = os.path.join(os.path.dirname(__file__), "data", "hf")
MLM_CASES = ("mlm_lsh", "mlm_mixed", "mlm_two_hashes")


def _load(case):
    """(cfg, params, tokens [b, l], mask bool [b, l], HF data, our form of HF's buckets)."""
    cfg, params = convert.load_hf_reformer(os.path.join(HF_DIR, case))
    data = np.load(os.path.join(HF_DIR, case, "expected.npz"))
    tokens, mask = data["input_ids"], data["attention_mask"].astype(bool)
    hf_buckets = {int(k.split("_")[1]): data[k] for k in data.files if k.startswith("buckets_")}
    buckets = convert.buckets_from_hf(hf_buckets, cfg, length=tokens.shape[1])
    return cfg, params, tokens, mask, data, buckets


def _log_softmax(logits):
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _mlm_log_probs(cfg, params, tokens, mask, buckets):
    # ReformerForMaskedLM's head is ReformerLM's (LayerNorm, Dense, no input
    # shift: cfg.shift_inputs is False) over the bidirectional stack (cfg.causal
    # is False), with the same parameter tree.
    out = ReformerLM(cfg).apply(
        {"params": params},
        jnp.asarray(tokens),
        mask=None if mask is None else jnp.asarray(mask),
        buckets=buckets,
    )
    return np.asarray(out, np.float64)


@pytest.mark.parametrize("case", MLM_CASES)
def test_masked_lm_gives_hf_log_probs(case):
    """Log-probs equal HF's (float64 run) at every real position, HF's buckets injected."""
    cfg, params, tokens, mask, data, buckets = _load(case)
    assert not cfg.causal and sorted(buckets) == cfg.lsh_layers()
    got = _mlm_log_probs(cfg, params, tokens, mask, buckets)
    want = _log_softmax(data["logits"])
    assert np.abs(got - want).max(-1)[mask].max() <= 1e-4


def test_fixtures_cover_the_encoder_cases():
    """Padding at either end and HF's own round-up; looking ahead; two rounds; local layers."""
    loaded = {c: _load(c) for c in MLM_CASES}
    cfg, _, tokens, mask, _, buckets = loaded["mlm_lsh"]
    assert cfg.lsh_window() == (1, 1) and tokens.shape[1] % cfg.chunk_len  # HF rounds up
    assert not mask[1].all() and mask[0].all()
    hf = np.load(os.path.join(HF_DIR, "mlm_lsh", "expected.npz"))["buckets_0"]
    assert hf.shape[-1] == 32 and (hf[..., tokens.shape[1] :] == 4).all()  # HF's pad bucket
    cfg, _, _, mask, _, _ = loaded["mlm_mixed"]
    assert set(cfg.attention_kinds) == {"local", "lsh"} and cfg.local_window() == (0, 0)
    assert not mask[0, 0] and not mask[1, -1]  # padded in front and at the end
    cfg, _, _, mask, _, _ = loaded["mlm_two_hashes"]
    assert cfg.n_hashes == 2 and cfg.lsh_window() == (1, 0) and mask.all()


def test_padding_and_window_matter():
    """The fixtures catch a padding key that is not masked, a causal mask and a narrower window."""
    cfg, params, tokens, mask, data, buckets = _load("mlm_lsh")
    want = _log_softmax(data["logits"])

    def error(c, m):
        return np.abs(_mlm_log_probs(c, params, tokens, m, buckets) - want).max(-1)[mask].max()

    assert error(cfg, mask) <= 1e-4
    assert error(cfg, None) > 0.1
    assert error(cfg.replace(causal=True), mask) > 0.1
    assert error(cfg.replace(n_chunks_after=0), mask) > 0.1


def test_buckets_from_hf_removes_the_pad_bucket():
    """With padding HF offsets round r by r * (n_buckets + 1); the pads' bucket becomes 0."""
    cfg, *_ = _load("mlm_two_hashes")  # n_buckets 8
    real = np.array([[3, 7, 0, 5], [1, 2, 6, 4]])  # [r, l] for one example and head
    unpadded = real + np.array([[0], [8]])
    padded = np.where([True, True, True, False], real, 8) + np.array([[0], [9]])
    got = convert.buckets_from_hf({0: unpadded[None, None], 1: padded[None, None]}, cfg)
    np.testing.assert_array_equal(got[0][0, 0], real)
    np.testing.assert_array_equal(got[1][0, 0], np.where([1, 1, 1, 0], real, 0))
    cut = convert.buckets_from_hf({0: padded[None, None]}, cfg, length=3)
    np.testing.assert_array_equal(cut[0][0, 0], real[:, :3])


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"is_decoder": True}, "is_decoder=True is not supported: ReformerForMaskedLM converts"),
        ({"architectures": ["ReformerModel"]}, "architectures=.* give one of .*ForMaskedLM"),
    ],
)
def test_refused_encoder_configs(tmp_path, changes, match):
    path = tmp_path / "mlm"
    shutil.copytree(os.path.join(HF_DIR, "mlm_lsh"), path)
    with open(path / "config.json") as f:
        config = json.load(f)
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(convert.ConversionError, match=match):
        convert.load_hf_reformer(str(path))


def test_wrapping_local_windows_are_flagged(caplog):
    """HF's bidirectional local windows wrap around and ours do not: the converter says so."""
    with open(os.path.join(HF_DIR, "mlm_mixed", "config.json")) as f:
        hf = json.load(f)
    convert.config_from_hf(hf)
    assert "wraps around" not in caplog.text
    convert.config_from_hf(dict(hf, local_num_chunks_before=1))
    assert "local attention wraps around" in caplog.text


def test_cli_names_what_a_workdir_can_hold(tmp_path, capsys):
    from reformer_jax import cli

    case = os.path.join(HF_DIR, "mlm_lsh")
    with pytest.raises(SystemExit) as e:
        cli.run_main(convert.main, [f"--hf_dir={case}", f"--workdir={tmp_path}/run"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "holds a ReformerForMaskedLM" in err and "\n" not in err
