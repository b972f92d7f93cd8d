"""HF transformers checkpoints -> reformer_jax (reformer_jax/convert.py).

The fixtures in tests/data/hf/<case>/ come from scripts/make_hf_fixture.py:
tiny random HF ReformerModelWithLMHead checkpoints with HF's logits (computed
in float64) and HF's LSH buckets. No torch or transformers is needed here.
"""

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from reformer_jax import convert, decoding
from reformer_jax.model import ReformerLM

HF_DIR = os.path.join(os.path.dirname(__file__), "data", "hf")
CASES = ("mixed", "two_hashes", "factorised", "axial_enwik8_like", "short")


def _expected(case):
    data = np.load(os.path.join(HF_DIR, case, "expected.npz"))
    buckets = {int(k.split("_")[1]): data[k] for k in data.files if k.startswith("buckets_")}
    logits = data["logits"].astype(np.float64)
    peak = logits.max(-1, keepdims=True)
    log_probs = logits - peak - np.log(np.exp(logits - peak).sum(-1, keepdims=True))
    return data["input_ids"], log_probs, buckets


def _copy_case(tmp_path, case="mixed"):
    dst = tmp_path / case
    shutil.copytree(os.path.join(HF_DIR, case), dst)
    return dst


def _edit_config(path, **changes):
    with open(path / "config.json") as f:
        config = json.load(f)
    config.update(changes)
    with open(path / "config.json", "w") as f:
        json.dump(config, f)


@pytest.mark.parametrize("case", CASES)
def test_converted_model_gives_hf_log_probs(case):
    """Log-probs equal HF's (float64 run) with HF's buckets injected, <= 1e-4 in float32."""
    cfg, params = convert.load_hf_reformer(os.path.join(HF_DIR, case))
    assert cfg.window_rule == "hf"  # HF's windows (docs/algorithm.md, "Window rules")
    tokens, want, hf_buckets = _expected(case)
    if case == "short":
        # L <= lsh_attn_chunk_length: HF runs its LSH layers as full attention
        # and hashes nothing; our LSH over one chunk per round equals it.
        assert not hf_buckets and tokens.shape[1] <= cfg.chunk_len
        buckets = None
    else:
        assert sorted(hf_buckets) == cfg.lsh_layers()
        buckets = convert.buckets_from_hf(hf_buckets, cfg)
    got, used = ReformerLM(cfg).apply(
        {"params": params}, jnp.asarray(tokens), buckets=buckets, return_buckets=True
    )
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
    if buckets is not None:
        for layer, b in buckets.items():
            np.testing.assert_array_equal(np.asarray(used[layer]), b)


def test_fixture_covers_the_issue_cases():
    """The fixtures span what the converter must get right, per config.json."""
    configs = {c: convert.config_from_hf(_read_json(c)) for c in CASES}
    assert {"lsh", "local"} <= set(configs["mixed"].attention_kinds)
    assert configs["mixed"].n_groups == 2
    assert configs["two_hashes"].n_hashes == 2
    assert configs["two_hashes"].ff_activation == "gelu_exact"
    assert configs["factorised"].n_buckets == (2, 4)
    assert configs["axial_enwik8_like"].attention_kinds == ("local", "local", "lsh", "local")
    assert configs["axial_enwik8_like"].ff_activation == "gelu"
    assert configs["axial_enwik8_like"].local_chunk_len != configs["axial_enwik8_like"].chunk_len
    assert len(configs["mixed"].axial_shape) == 1  # learned absolute positions
    assert all(not c.shift_inputs and c.layer_norm_eps == 1e-12 for c in configs.values())


def _read_json(case):
    with open(os.path.join(HF_DIR, case, "config.json")) as f:
        return json.load(f)


def test_wrong_lm_head_bias_would_be_caught():
    """HF 5.x uses lm_head.decoder.bias; the fixture's unused lm_head.bias differs from it."""
    tensors = load_file(os.path.join(HF_DIR, "mixed", "model.safetensors"))
    assert np.abs(tensors["lm_head.bias"] - tensors["lm_head.decoder.bias"]).max() > 0.1


def test_deduplicated_lm_head_bias_is_read(tmp_path):
    """A checkpoint holding only lm_head.bias (4.x tied it to the decoder's) converts the same."""
    path = _copy_case(tmp_path)
    tensors = load_file(path / "model.safetensors")
    tensors["lm_head.bias"] = tensors.pop("lm_head.decoder.bias")
    save_file(tensors, path / "model.safetensors")
    cfg, params = convert.load_hf_reformer(str(path))
    tokens, want, hf_buckets = _expected("mixed")
    got = ReformerLM(cfg).apply(
        {"params": params}, jnp.asarray(tokens), buckets=convert.buckets_from_hf(hf_buckets, cfg)
    )
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def test_loss_without_shift_scores_the_next_token():
    """shift_inputs=False: the loss is -log p(token t+1) read at position t, over l-1 tokens."""
    cfg, params = convert.load_hf_reformer(os.path.join(HF_DIR, "two_hashes"))
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, cfg.vocab_size)
    weights = jax.random.uniform(jax.random.key(2), (2, 32))
    model = ReformerLM(cfg)
    log_probs = model.apply({"params": params}, tokens)
    sums = model.apply({"params": params}, tokens, weights=weights, output="loss")
    nll = -jnp.take_along_axis(log_probs[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(sums["nll"], jnp.sum(nll * weights[:, 1:]), rtol=1e-5)
    np.testing.assert_allclose(sums["weight"], jnp.sum(weights[:, 1:]), rtol=1e-6)


# ----------------------------------------------------------------------------- bad checkpoints


def _one_line_error(path, match):
    with pytest.raises(convert.ConversionError, match=match) as e:
        convert.load_hf_reformer(str(path))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_directory_config_and_weights(tmp_path):
    _one_line_error(tmp_path / "nope", "is not a directory")
    path = _copy_case(tmp_path)
    os.remove(path / "model.safetensors")
    message = _one_line_error(path, "has no model.safetensors")
    assert "pytorch_model.bin" in message
    os.remove(path / "config.json")
    _one_line_error(path, "has no config.json")


def test_torch_checkpoint_without_torch_names_the_fix(tmp_path, monkeypatch):
    path = _copy_case(tmp_path)
    os.rename(path / "model.safetensors", path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    _one_line_error(path, "pytorch_model.bin, which needs torch")


def test_wrong_shape_names_the_tensor(tmp_path):
    path = _copy_case(tmp_path)
    tensors = load_file(path / "model.safetensors")
    name = "reformer.encoder.layers.1.attention.self_attention.value.weight"
    tensors[name] = tensors[name][:8]
    save_file(tensors, path / "model.safetensors")
    _one_line_error(path, r"value.weight has shape \(8, 16\), but config.json implies \(16, 16\)")


def test_missing_and_extra_tensors(tmp_path):
    path = _copy_case(tmp_path)
    tensors = load_file(path / "model.safetensors")
    tensors["classifier.dense.weight"] = np.zeros((2, 2), np.float32)
    save_file(tensors, path / "model.safetensors")
    _one_line_error(path, "classifier.dense.weight")
    del tensors["classifier.dense.weight"], tensors["lm_head.decoder.weight"]
    save_file(tensors, path / "model.safetensors")
    _one_line_error(path, "has no tensor lm_head.decoder.weight")


def test_unreadable_safetensors(tmp_path):
    path = _copy_case(tmp_path)
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    _one_line_error(path, "not a readable safetensors file")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("is_decoder", False, "is_decoder=False is not supported"),
        ("architectures", ["ReformerModel"], "architectures=.* give one of ReformerModelWith"),
        ("attn_layers", ["local", "full"], "attn_layers=.* must be 'lsh' or 'local'"),
        ("hidden_act", "tanh", "hidden_act='tanh' is not supported"),
        ("num_buckets", 5, "num_buckets=5 is not supported"),
        ("lsh_num_chunks_after", 1, "lsh_num_chunks_after=1 is not supported"),
        ("model_type", "bert", "model_type='bert' is not a Reformer"),
    ],
)
def test_unsupported_config_field_is_refused(tmp_path, field, value, match):
    path = _copy_case(tmp_path)
    _edit_config(path, **{field: value})
    _one_line_error(path, match)


def test_missing_config_fields_take_hf_defaults():
    """An older config.json without layer_norm_eps etc. means HF's defaults."""
    hf = _read_json("mixed")
    for field in ("layer_norm_eps", "lsh_num_chunks_before", "num_hashes", "hash_seed"):
        del hf[field]
    cfg = convert.config_from_hf(hf)
    assert (cfg.layer_norm_eps, cfg.n_chunks_before, cfg.n_hashes, cfg.hash_seed) == (
        1e-12,
        1,
        1,
        None,
    )


def test_attention_cycle_is_the_shortest_period():
    assert convert._cycle(["local", "local", "lsh", "local"] * 3) == (
        "local",
        "local",
        "lsh",
        "local",
    )
    assert convert._cycle(["lsh", "local", "local"]) == ("lsh", "local", "local")
    assert convert._cycle(["lsh"] * 4) == ("lsh",)


# ----------------------------------------------------------------------------- CLI round trip


@pytest.mark.slow
def test_cli_convert_then_load_and_sample(tmp_path, capsys):
    """convert CLI -> workdir -> load_run / sample CLI: the model HF gave us."""
    from reformer_jax import checkpoints, sample, sampling

    case = os.path.join(HF_DIR, "axial_enwik8_like")
    workdir = str(tmp_path / "run")
    convert.main([f"--hf_dir={case}", f"--workdir={workdir}"])
    assert os.path.isfile(os.path.join(workdir, "config.gin"))
    run = checkpoints.load_run(workdir)
    cfg, params = convert.load_hf_reformer(case)
    assert run.config == cfg and run.step == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, run.params, params)

    # The sampler's prefill reads the prompt as HF does (no shift) and, with
    # the fixture's hash_seed, hashes with the forward pass's rotations.
    tokens, _, _ = _expected("axial_enwik8_like")
    prompt = jnp.asarray(tokens[:, :40])
    forward = ReformerLM(cfg).apply({"params": run.params}, prompt)[:, -1]
    first, _ = decoding.prefill(run.params, cfg, prompt, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(first), np.asarray(forward), atol=1e-5, rtol=0)
    ids = sampling.generate(run.params, cfg, prompt, jax.random.key(0), num_tokens=8, greedy=True)
    assert ids.shape == (2, 8) and int(ids.min()) >= 0 and int(ids.max()) < cfg.vocab_size
    np.testing.assert_array_equal(np.asarray(ids[:, 0]), np.asarray(jnp.argmax(forward, -1)))

    # The sample CLI on the converted workdir writes the same greedy tokens.
    capsys.readouterr()
    row = [int(t) for t in tokens[0, :40]]
    sample.main(
        [f"--workdir={workdir}", f"--prompt_ids={','.join(map(str, row))}"]
        + ["--num_tokens=8", "--greedy", "--seed=0", "--json"]
    )
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = sampling.generate(
        run.params, cfg, prompt[:1], jax.random.key(0), num_tokens=8, greedy=True
    )
    assert [p["ids"] for p in printed] == [[int(t) for t in want[0]]]


def test_cli_errors_are_one_line(tmp_path, capsys):
    from reformer_jax import cli

    with pytest.raises(SystemExit) as e:
        cli.run_main(convert.main, [f"--hf_dir={tmp_path}/none", f"--workdir={tmp_path}/out"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "is not a directory" in err and "\n" not in err
    workdir = str(tmp_path / "run")
    case = os.path.join(HF_DIR, "short")
    convert.main([f"--hf_dir={case}", f"--workdir={workdir}"])
    with pytest.raises(SystemExit):
        cli.run_main(convert.main, [f"--hf_dir={case}", f"--workdir={workdir}"])
    assert "already holds checkpoints" in capsys.readouterr().err


def test_window_rule_is_checked():
    """window_rule names one of the rules; HF's has no App. A correction (dedup)."""
    from reformer_jax.config import ReformerConfig

    with pytest.raises(ValueError, match=r"window_rule='trax'; use one of \('reformer', 'hf'\)"):
        ReformerConfig(window_rule="trax")
    with pytest.raises(ValueError, match="dedup=True needs window_rule='reformer'"):
        ReformerConfig(window_rule="hf", dedup=True)


def test_sample_refuses_hf_windows_it_cannot_decode(tmp_path):
    """A converted LM whose local layers look back 2 chunks: HF's windows hold a chunk twice in
    short sequences, which a decoding cache cannot, so sample says so in one line; 1 chunk
    back (every published checkpoint) samples."""
    from reformer_jax import sample
    from tests import inprocess

    def sample_with(before):
        workdir = str(tmp_path / f"run{before}")
        binding = f"--gin_param=ReformerConfig.local_n_chunks_before={before}"
        hf_dir = os.path.join(HF_DIR, "mixed")
        result = inprocess.run(convert.main, f"--hf_dir={hf_dir}", f"--workdir={workdir}", binding)
        assert result.returncode == 0, result.stderr
        flags = ("--prompt_ids=3,4,5", "--num_tokens=2", "--greedy")
        return inprocess.run(sample.main, f"--workdir={workdir}", *flags)

    refused = sample_with(2)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "cached decoding cannot reproduce window_rule='hf' with 2 chunks" in refused.last_line
    assert sample_with(1).returncode == 0


@pytest.mark.slow
def test_evaluate_reads_a_converted_workdir(tmp_path, capsys):
    """evaluate on a converted workdir scores next tokens as HF does (shift_inputs=False)."""
    from reformer_jax import evaluate
    from reformer_jax.data import synthetic

    workdir = str(tmp_path / "run")
    convert.main(
        [f"--hf_dir={os.path.join(HF_DIR, 'axial_enwik8_like')}", f"--workdir={workdir}"]
        + ["--gin_file=copy.gin", "--gin_param=duplication_dataset.vocab_size = 24"]
        + ["--gin_param=train.batch_size = 2", "--gin_param=train.eval_batches = 1"]
    )
    capsys.readouterr()
    evaluate.main([f"--workdir={workdir}", "--json"])
    result = json.loads(capsys.readouterr().out)["results"]["as configured"]
    cfg, params = convert.load_hf_reformer(os.path.join(HF_DIR, "axial_enwik8_like"))
    data = synthetic.duplication_dataset(
        split="eval", batch_size=2, seq_len=cfg.max_len, seed=0, vocab_size=24
    )
    batch = next(iter(data))
    log_probs = ReformerLM(cfg).apply({"params": params}, jnp.asarray(batch["tokens"]))
    tokens, weights = np.asarray(batch["tokens"]), np.asarray(batch["weights"], np.float64)
    nll = -np.take_along_axis(np.asarray(log_probs)[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    want = (nll * weights[:, 1:]).sum() / weights[:, 1:].sum()
    np.testing.assert_allclose(result["loss"], want, rtol=1e-5)


def test_sharded_safetensors_read_like_one_file(tmp_path):
    path = _copy_case(tmp_path)
    tensors = load_file(path / "model.safetensors")
    os.remove(path / "model.safetensors")
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, path / file)
    index = {"weight_map": {n: f for f, part in shards.items() for n in part}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    got, source = convert.read_hf_tensors(str(path))
    assert source == "model.safetensors.index.json" and sorted(got) == names
    for n in names:
        np.testing.assert_array_equal(got[n], tensors[n])
    os.remove(path / "model-00002-of-00002.safetensors")
    _one_line_error(path, "names model-00002-of-00002.safetensors, which is not in")
