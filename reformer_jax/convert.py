"""Import HF transformers Reformer checkpoints (e.g. google/reformer-enwik8).

    python -m reformer_jax.convert --hf_dir=DIR --workdir=OUT

Public functions:

    load_hf(path) -> HFCheckpoint(architecture, cfg, params, n_labels)
        path: a local HF checkpoint directory: config.json plus
        model.safetensors (read with the safetensors numpy API), a sharded
        model.safetensors.index.json, or pytorch_model.bin (needs torch).
        config.json's `architectures` names the HF class, one of
        `ARCHITECTURES`; `checkpoint.model()` is ours (`hf_model`):
            ReformerModelWithLMHead            ReformerLM: log-probs [b, l, v],
                                               position t predicting token t + 1
                                               (cfg.shift_inputs is False, as in HF)
            ReformerForMaskedLM                ReformerMLM: log-probs [b, l, v]
            ReformerForSequenceClassification  ReformerClassifier(n_labels, "first"):
                                               logits [b, n_labels]
            ReformerForQuestionAnswering       ReformerSpanModel: (start, end) [b, l]
        The encoders' configs are bidirectional (cfg.causal False) and take
        HF's attention_mask as `mask`. Parameters: the stack's, and the
        head's under `head` (HF's final LayerNorm is the head's `norm`).
    load_hf_reformer(path) -> (ReformerConfig, params): load_hf's.
    architecture_from_hf(hf_config: dict) -> the HF class name
    config_from_hf(hf_config: dict) -> ReformerConfig (window_rule "hf": HF's windows)
    params_from_hf(tensors: {name: np.ndarray}, cfg, source, architecture, n_labels) -> params
    buckets_from_hf(buckets: {layer: [b, h, r, L]}, cfg, length) -> the same
        with HF's per-round offsets removed and cut to `length`: the form
        `ReformerLM.apply(..., buckets=...)` takes.
    read_hf_vocabulary(path, cfg) -> Tokenizer | None: the checkpoint's
        SentencePiece vocabulary (spiece.model, e.g.
        google/reformer-crime-and-punishment's), None for byte-level
        checkpoints without one; the CLI copies it into the workdir, where
        sample --prompt and predict read it (data/tokenizers.py, for_run).

Anything we cannot convert exactly (another architecture, an attention kind
we lack, a regression or multi-label classifier, a missing tensor, a wrong
shape) is a `ConversionError` whose one line names the file and field,
rather than a silently different model.

What differs from HF by design (docs/conversion.md, "Differences from HF worth knowing"):
- hash_seed: HF reseeds torch's generator; we draw fixed rotations from
  jax.random.key(hash_seed). Both are fixed per layer, but not equal: to
  compare with HF numerically, pass HF's buckets (`buckets_from_hf`).
- num_buckets=None: HF picks a power of two from the first sequence it sees;
  we use the paper's 2L/c per call.
- windows and padding: HF's chunked layers pad a sequence to a multiple of
  the chunk lengths' lcm, hash padding into an extra bucket of every round,
  wrap every window around all the sequence's chunks (the first local chunk
  sees the last) and, with few chunks, count a chunk twice. Ours do none of
  that, so the converted config sets window_rule="hf", under which our LSH
  and local layers do all of it (docs/algorithm.md, "Window rules"). One
  difference stays: a padded batch gives each sequence what HF gives it
  alone, where HF's own result for a sequence in a batch padded past its
  next multiple of the lcm depends on how much padding the batch holds.
- dropout: one attention-dropout rate for both kinds of layer; when HF's LSH
  and local rates differ we take the local rate (see `config_from_hf`).
  Evaluation and sampling are unaffected.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax import kinds, lsh, user_files
from reformer_jax.config import ReformerConfig, RunSettings
from reformer_jax.data import tokenizers, write_then_rename
from reformer_jax.encoders import ReformerClassifier, ReformerMLM, ReformerSpanModel
from reformer_jax.model import ReformerLM, block_names

log = logging.getLogger("reformer_jax")

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
SPIECE = tokenizers.SPIECE_FILE  # HF's name for a SentencePiece vocabulary, and ours

# HF ReformerConfig's defaults for fields an older config.json may omit.
HF_DEFAULTS = {
    "attention_head_size": 64,
    "attn_layers": ["local", "lsh", "local", "lsh", "local", "lsh"],
    "axial_pos_embds": True,
    "axial_pos_shape": [64, 64],
    "axial_pos_embds_dim": [64, 192],
    "feed_forward_size": 512,
    "hash_seed": None,
    "hidden_act": "relu",
    "hidden_dropout_prob": 0.05,
    "hidden_size": 256,
    "is_decoder": False,
    "layer_norm_eps": 1e-12,
    "local_num_chunks_before": 1,
    "local_num_chunks_after": 0,
    "local_attention_probs_dropout_prob": 0.05,
    "local_attn_chunk_length": 64,
    "lsh_attn_chunk_length": 64,
    "lsh_attention_probs_dropout_prob": 0.0,
    "lsh_num_chunks_before": 1,
    "lsh_num_chunks_after": 0,
    "max_position_embeddings": 4096,
    "num_attention_heads": 12,
    "num_buckets": None,
    "num_hashes": 1,
    "vocab_size": 320,
}
# HF activation names -> ours. HF's "gelu" is the exact (erf) form.
ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "silu": "silu",
    "swish": "silu",
}
LM_ARCHITECTURE = "ReformerModelWithLMHead"
MLM_ARCHITECTURE = "ReformerForMaskedLM"
CLASSIFIER_ARCHITECTURE = "ReformerForSequenceClassification"
SPAN_ARCHITECTURE = "ReformerForQuestionAnswering"
# The HF classes that convert, and what each becomes. The encoders' HF heads
# need is_decoder=false (bidirectional attention); the language model needs true.
ARCHITECTURES = {
    LM_ARCHITECTURE: "ReformerLM, causal",
    MLM_ARCHITECTURE: "ReformerMLM",
    CLASSIFIER_ARCHITECTURE: "ReformerClassifier pooling the first position",
    SPAN_ARCHITECTURE: "ReformerSpanModel",
}
# Each architecture's head layers: (our name under `head`, or "" for the head
# itself; the HF Linear's name). Every head also holds HF's final LayerNorm.
HEAD_LINEARS = {
    LM_ARCHITECTURE: (("", "lm_head.decoder"),),
    MLM_ARCHITECTURE: (("", "lm_head.decoder"),),
    CLASSIFIER_ARCHITECTURE: (("dense", "classifier.dense"), ("out_proj", "classifier.out_proj")),
    SPAN_ARCHITECTURE: (("qa_outputs", "qa_outputs"),),
}


class ConversionError(Exception):
    """A checkpoint we cannot convert exactly; one line naming the file and field."""


# ----------------------------------------------------------------------------- config


def _cycle(kinds: Sequence[str]) -> tuple[str, ...]:
    """The shortest prefix whose repetition gives `kinds` (layers stack per cycle position)."""
    n = len(kinds)
    for p in range(1, n + 1):
        if n % p == 0 and all(kinds[i] == kinds[i % p] for i in range(n)):
            return tuple(kinds[:p])
    return tuple(kinds)


def supported_architectures() -> str:
    """One line naming each HF class that converts and what it becomes."""
    return "; ".join(f"{name} ({what})" for name, what in ARCHITECTURES.items())


def architecture_from_hf(hf: dict[str, Any], source: str = CONFIG) -> str:
    """The HF class config.json's `architectures` names (a checkpoint without it: the LM)."""
    archs = hf.get("architectures") or [LM_ARCHITECTURE]
    found = [a for a in archs if a in ARCHITECTURES]
    if len(found) != 1:
        raise ConversionError(
            f"{source}: architectures={archs!r} is not supported: give one of "
            f"{supported_architectures()}."
        )
    return found[0]


def labels_from_hf(hf: dict[str, Any]) -> int:
    """The labels of a classifier (HF: len(id2label), else num_labels, default 2)."""
    id2label = hf.get("id2label")
    return len(id2label) if id2label else int(hf.get("num_labels", 2))


def config_from_hf(hf: dict[str, Any], source: str = CONFIG) -> ReformerConfig:
    """An HF ReformerConfig (config.json as a dict) -> our ReformerConfig.

    Raises ConversionError naming the field for anything that would convert
    wrong: another model type or architecture, a language model that is not
    causal or an encoder head that is, attention kinds other than
    "lsh"/"local", an activation we lack, chunk lengths of None.
    """
    get = lambda name: hf.get(name, HF_DEFAULTS.get(name))

    def refuse(field: str, why: str):
        return ConversionError(f"{source}: {field}={get(field)!r} {why}")

    if hf.get("model_type", "reformer") != "reformer":
        raise refuse("model_type", "is not a Reformer; only HF Reformer checkpoints convert.")
    arch = architecture_from_hf(hf, source)
    causal = arch == LM_ARCHITECTURE
    if bool(get("is_decoder")) != causal:
        why = (
            f"is not supported: {arch} converts as a causal language model (is_decoder=true)."
            if causal
            else f"is not supported: {arch} converts as an encoder (is_decoder=false, "
            "bidirectional attention)."
        )
        raise refuse("is_decoder", why)
    _check_head_config(hf, arch, source)
    hf_kinds = get("attn_layers")
    if not hf_kinds or any(k not in ("lsh", "local") for k in hf_kinds):
        raise refuse("attn_layers", "is not supported: each layer must be 'lsh' or 'local'.")
    act = get("hidden_act")
    if act not in ACTIVATIONS:
        raise refuse("hidden_act", f"is not supported; use one of {sorted(ACTIVATIONS)}.")
    for field in ("lsh_attn_chunk_length", "local_attn_chunk_length"):
        if not isinstance(get(field), int) or get(field) <= 0:
            raise refuse(field, "is not supported: give a positive chunk length.")
    for field in ("lsh_num_chunks_after", "local_num_chunks_after"):
        if causal and get(field) != 0:
            raise refuse(field, "is not supported: a causal model looks at no later chunk (0).")
    num_buckets = get("num_buckets")
    if isinstance(num_buckets, list):
        num_buckets = num_buckets[0] if len(num_buckets) == 1 else tuple(num_buckets)
    if num_buckets is not None:
        try:
            lsh.bucket_factors(num_buckets)
        except ValueError as e:
            raise refuse("num_buckets", f"is not supported: {e}") from None

    d_model = get("hidden_size")
    if get("axial_pos_embds"):
        shape, dims = tuple(get("axial_pos_shape")), tuple(get("axial_pos_embds_dim"))
        max_len = math.prod(shape)
        if sum(dims) != d_model:
            raise refuse("axial_pos_embds_dim", f"must sum to hidden_size={d_model}.")
    else:
        # Learned absolute positions = axial positions with a single axis.
        max_len = get("max_position_embeddings")
        shape, dims = (max_len,), (d_model,)

    lsh_drop = get("lsh_attention_probs_dropout_prob")
    local_drop = get("local_attention_probs_dropout_prob")
    attention_dropout = local_drop if "local" in hf_kinds else lsh_drop
    if "lsh" in hf_kinds and "local" in hf_kinds and lsh_drop != local_drop:
        log.warning(
            "%s: lsh_attention_probs_dropout_prob=%s differs from "
            "local_attention_probs_dropout_prob=%s; ReformerConfig has one attention dropout "
            "and takes %s (evaluation and sampling do not use dropout)",
            source,
            lsh_drop,
            local_drop,
            attention_dropout,
        )
    lsh_window = (get("lsh_num_chunks_before"), get("lsh_num_chunks_after"))
    local_window = (get("local_num_chunks_before"), get("local_num_chunks_after"))
    try:
        return ReformerConfig(
            vocab_size=get("vocab_size"),
            max_len=max_len,
            d_model=d_model,
            d_ff=get("feed_forward_size"),
            n_heads=get("num_attention_heads"),
            d_head=get("attention_head_size"),
            n_layers=len(hf_kinds),
            attention_kinds=_cycle(hf_kinds),
            chunk_len=get("lsh_attn_chunk_length"),
            local_chunk_len=get("local_attn_chunk_length"),
            n_hashes=get("num_hashes"),
            n_buckets=num_buckets,
            n_chunks_before=lsh_window[0],
            n_chunks_after=lsh_window[1],
            local_n_chunks_before=None if local_window == lsh_window else local_window[0],
            local_n_chunks_after=None if local_window == lsh_window else local_window[1],
            axial_shape=shape,
            axial_dims=dims,
            dropout=float(get("hidden_dropout_prob")),
            attention_dropout=float(attention_dropout),
            ff_activation=ACTIVATIONS[act],
            layer_norm_eps=float(get("layer_norm_eps")),
            hash_seed=get("hash_seed"),
            shift_inputs=False,
            causal=causal,
            window_rule="hf",  # the windows and padding HF's layers were trained with
        )
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from None


def _check_head_config(hf: dict[str, Any], arch: str, source: str) -> None:
    """Refuses head settings our models lack; warns about the classifier's dropout."""
    labels = labels_from_hf(hf)
    if arch == SPAN_ARCHITECTURE and labels != 2:
        raise ConversionError(
            f"{source}: num_labels={labels} is not supported: a {arch} has two outputs (span "
            "start and end)."
        )
    if arch != CLASSIFIER_ARCHITECTURE:
        return
    problem = hf.get("problem_type")
    if labels < 2 or problem not in (None, "single_label_classification"):
        raise ConversionError(
            f"{source}: num_labels={labels}, problem_type={problem!r} is not supported: "
            f"{arch} converts as a single-label classifier of 2 or more labels."
        )
    dropout = hf.get("classifier_dropout")
    hidden = hf.get("hidden_dropout_prob", HF_DEFAULTS["hidden_dropout_prob"])
    if dropout is not None and dropout != hidden:
        log.warning(
            "%s: classifier_dropout=%s differs from hidden_dropout_prob=%s; ClassifierHead "
            "drops out at the model's rate, hidden_dropout_prob (evaluation does not use "
            "dropout)",
            source,
            dropout,
            hidden,
        )


# ----------------------------------------------------------------------------- tensors


def _hf_shapes(
    cfg: ReformerConfig, architecture: str = LM_ARCHITECTURE, n_labels: int = 2
) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of `architecture` holds, with its shape."""
    m, f, v, hd = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_heads * cfg.d_head
    shapes = {"reformer.embeddings.word_embeddings.weight": (v, m)}
    if len(cfg.axial_shape) == 1:
        shapes["reformer.embeddings.position_embeddings.embedding.weight"] = (cfg.max_len, m)
    else:
        for i, (s, e) in enumerate(zip(cfg.axial_shape, cfg.axial_dims, strict=True)):
            view = [1] * len(cfg.axial_shape)
            view[i] = s
            shapes[f"reformer.embeddings.position_embeddings.weights.{i}"] = (*view, e)
    cycle = cfg.attention_kinds
    for i in range(cfg.n_layers):
        p = f"reformer.encoder.layers.{i}."
        shared_qk = kinds.get(cycle[i % len(cycle)]).shared_qk
        projections = ("query_key", "value") if shared_qk else ("query", "key", "value")
        for name in projections:
            shapes[f"{p}attention.self_attention.{name}.weight"] = (hd, m)
        shapes[f"{p}attention.output.dense.weight"] = (m, hd)
        for half in ("attention", "feed_forward"):
            shapes[f"{p}{half}.layer_norm.weight"] = (m,)
            shapes[f"{p}{half}.layer_norm.bias"] = (m,)
        shapes[f"{p}feed_forward.dense.dense.weight"] = (f, m)
        shapes[f"{p}feed_forward.dense.dense.bias"] = (f,)
        shapes[f"{p}feed_forward.output.dense.weight"] = (m, f)
        shapes[f"{p}feed_forward.output.dense.bias"] = (m,)
    shapes["reformer.encoder.layer_norm.weight"] = (2 * m,)
    shapes["reformer.encoder.layer_norm.bias"] = (2 * m,)
    linears = {  # HF Linear -> its weight's [out, in]
        "lm_head.decoder": (v, 2 * m),
        "classifier.dense": (m, 2 * m),
        "classifier.out_proj": (n_labels, m),
        "qa_outputs": (2, 2 * m),
    }
    for _, name in HEAD_LINEARS[architecture]:
        shapes[f"{name}.weight"] = linears[name]
        shapes[f"{name}.bias"] = linears[name][:1]
    return shapes


def params_from_hf(
    tensors: dict[str, np.ndarray],
    cfg: ReformerConfig,
    source: str = SAFETENSORS,
    architecture: str = LM_ARCHITECTURE,
    n_labels: int = 2,
) -> dict:
    """HF tensor names -> our parameter tree (float32), checking every name and shape.

    The tree is the stack's (`embed`, `axial_pos`, `blocks`) and the head's
    (`head`: HF's final LayerNorm `reformer.encoder.layer_norm`, which our
    heads own, and the head's Linear layers as `HEAD_LINEARS` names them).
    n_labels: a classifier's labels (`labels_from_hf`).

    The LM head's bias: HF transformers 5.x holds both `lm_head.decoder.bias`
    (used) and `lm_head.bias` (unused); 4.x tied the two, and a deduplicated
    4.x checkpoint may hold only `lm_head.bias`. We read the decoder's bias
    and fall back to `lm_head.bias` only when it is absent.
    """
    tensors = dict(tensors)
    if architecture in (LM_ARCHITECTURE, MLM_ARCHITECTURE):
        if "lm_head.decoder.bias" not in tensors and "lm_head.bias" in tensors:
            tensors["lm_head.decoder.bias"] = tensors["lm_head.bias"]
        tensors.pop("lm_head.bias", None)
    shapes = _hf_shapes(cfg, architecture, n_labels)
    for name, shape in shapes.items():
        if name not in tensors:
            raise ConversionError(
                f"{source} has no tensor {name}; is it a {architecture} checkpoint "
                f"matching its {CONFIG}?"
            )
        if tuple(tensors[name].shape) != shape:
            raise ConversionError(
                f"{source}: {name} has shape {tuple(tensors[name].shape)}, but {CONFIG} "
                f"implies {shape}."
            )
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise ConversionError(
            f"{source} has tensors a {architecture} does not ({extra[0]}, ...); "
            "is it another architecture?"
        )
    t = lambda name: np.asarray(tensors[name], np.float32)
    m, h, d = cfg.d_model, cfg.n_heads, cfg.d_head

    def proj_in(name):  # HF Linear weight [h * d, m] (out, in) -> [m, h, d]
        return t(name).T.reshape(m, h, d)

    def norm(prefix):
        return {"scale": t(prefix + ".weight"), "bias": t(prefix + ".bias")}

    cycle = len(cfg.attention_kinds)
    blocks = {}
    for j, block in enumerate(block_names(cfg)):
        per_group = []
        for g in range(cfg.n_groups):
            p = f"reformer.encoder.layers.{g * cycle + j}."
            a = p + "attention.self_attention."
            if kinds.get(cfg.attention_kinds[j]).shared_qk:
                attention = {
                    "wq": proj_in(a + "query_key.weight"),
                    "wv": proj_in(a + "value.weight"),
                }
            else:
                attention = {
                    "wq": proj_in(a + "query.weight"),
                    "wk": proj_in(a + "key.weight"),
                    "wv": proj_in(a + "value.weight"),
                }
            attention["wo"] = t(p + "attention.output.dense.weight").T.reshape(h, d, m)
            attention["norm"] = norm(p + "attention.layer_norm")
            feed_forward = {
                "norm": norm(p + "feed_forward.layer_norm"),
                "w1": t(p + "feed_forward.dense.dense.weight").T,
                "b1": t(p + "feed_forward.dense.dense.bias"),
                "w2": t(p + "feed_forward.output.dense.weight").T,
                "b2": t(p + "feed_forward.output.dense.bias"),
            }
            per_group.append({"attention": attention, "feed_forward": feed_forward})
        blocks[block] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *per_group)

    head = {"norm": norm("reformer.encoder.layer_norm")}
    for ours, name in HEAD_LINEARS[architecture]:
        linear = {"kernel": t(f"{name}.weight").T, "bias": t(f"{name}.bias")}
        if ours:
            head[ours] = linear
        else:
            head.update(linear)
    params = {
        "embed": {"embedding": t("reformer.embeddings.word_embeddings.weight")},
        "blocks": blocks,
        "head": head,
    }
    if len(cfg.axial_shape) == 1:
        table = t("reformer.embeddings.position_embeddings.embedding.weight")
        params["axial_pos"] = {"axis_0": table}
    else:
        params["axial_pos"] = {
            f"axis_{i}": t(f"reformer.embeddings.position_embeddings.weights.{i}").reshape(s, e)
            for i, (s, e) in enumerate(zip(cfg.axial_shape, cfg.axial_dims, strict=True))
        }
    _check_tree(params, hf_model(architecture, cfg, n_labels))
    return params


def hf_model(
    architecture: str, cfg: ReformerConfig, n_labels: int = 2, run: RunSettings | None = None
) -> nn.Module:
    """The module that applies the parameters of a converted `architecture` checkpoint."""
    run = run or RunSettings()
    if architecture == LM_ARCHITECTURE:
        return ReformerLM(cfg, run)
    if architecture == MLM_ARCHITECTURE:
        return ReformerMLM(cfg, run)
    if architecture == CLASSIFIER_ARCHITECTURE:
        return ReformerClassifier(cfg, n_labels, "first", run)
    if architecture == SPAN_ARCHITECTURE:
        return ReformerSpanModel(cfg, run)
    raise ValueError(f"architecture={architecture!r}; use one of {list(ARCHITECTURES)}.")


def _check_tree(params: dict, model: nn.Module) -> None:
    """The converted tree must be exactly the tree `model.init` makes."""
    wanted = _model_shapes(model)
    got_shapes = jax.tree_util.tree_map(lambda x: x.shape, params)
    want_shapes = jax.tree_util.tree_map(lambda x: x.shape, wanted)
    if got_shapes != want_shapes:  # a bug here, not in the checkpoint
        raise AssertionError(f"converted tree {got_shapes} != model tree {want_shapes}")


def read_hf_tensors(path: str) -> tuple[dict[str, np.ndarray], str]:
    """The tensors of an HF checkpoint directory as numpy arrays, and the file read."""
    st, index, binary = (os.path.join(path, n) for n in (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN))
    if os.path.exists(st):
        return _read_safetensors([st]), SAFETENSORS
    if os.path.exists(index):
        text = user_files.read_text(index, holding="the safetensors index's JSON")
        try:
            shards = sorted(set(json.loads(text)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConversionError(f"{index} is not a safetensors index: {e}") from None
        missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
        if missing:
            raise ConversionError(f"{index} names {missing[0]}, which is not in {path}.")
        return _read_safetensors([os.path.join(path, s) for s in shards]), SAFETENSORS_INDEX
    if os.path.exists(binary):
        user_files.check_file(binary, holding="the checkpoint's weights")
        try:
            import torch
        except ImportError:
            raise ConversionError(
                f"{path} has only {TORCH_BIN}, which needs torch: pip install torch, or "
                f"download the checkpoint's {SAFETENSORS} instead."
            ) from None
        state = torch.load(binary, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}, TORCH_BIN
    raise ConversionError(
        f"{path} has no {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN}: download the "
        "checkpoint's weights next to its config.json."
    )


def _read_safetensors(files: list[str]) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    tensors = {}
    for file in files:
        user_files.check_file(file, holding="the checkpoint's weights")
        try:
            tensors.update(load_file(file))
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise ConversionError(
                f"{file} is not a readable safetensors file ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from None
    return tensors


def read_hf_config(path: str) -> dict[str, Any]:
    """config.json of an HF checkpoint directory, as a dict.

    A config.json that cannot be read (a directory, empty, not UTF-8) raises
    user_files.FileError, as every checkpoint file here does; one that is
    not JSON, ConversionError.
    """
    if not os.path.isdir(path):
        raise ConversionError(f"{path} is not a directory: give an HF checkpoint directory.")
    config_path = os.path.join(path, CONFIG)
    if not os.path.exists(config_path):
        raise ConversionError(f"{path} has no {CONFIG}: download it with the weights.")
    text = user_files.read_text(config_path, holding="the checkpoint's JSON config")
    try:
        hf_config = json.loads(text)
    except ValueError as e:
        raise ConversionError(f"{config_path} is not readable JSON: {e}") from None
    return hf_config


@dataclasses.dataclass(frozen=True)
class HFCheckpoint:
    """A converted HF checkpoint: the HF class it held, our config and its parameters.

    `model()` is the module that applies them (`hf_model`):
    `checkpoint.model().apply({"params": checkpoint.params}, tokens, mask=...)`
    computes what HF does (equal numbers need HF's LSH buckets, `buckets_from_hf`).
    """

    architecture: str
    cfg: ReformerConfig
    params: dict
    n_labels: int = 2  # a classifier's labels

    def model(self, run: RunSettings | None = None) -> nn.Module:
        return hf_model(self.architecture, self.cfg, self.n_labels, run)


def load_hf(path: str) -> HFCheckpoint:
    """A local HF checkpoint directory (one of `ARCHITECTURES`) -> HFCheckpoint."""
    hf_config = read_hf_config(path)
    cfg = config_from_hf(hf_config)
    arch, labels = architecture_from_hf(hf_config), labels_from_hf(hf_config)
    tensors, source = read_hf_tensors(path)
    return HFCheckpoint(arch, cfg, params_from_hf(tensors, cfg, source, arch, labels), labels)


def read_hf_vocabulary(path: str, cfg: ReformerConfig) -> tokenizers.Tokenizer | None:
    """The SentencePiece vocabulary beside an HF checkpoint (path/spiece.model), or None.

    ConversionError when the file is not a SentencePiece model or has more
    pieces than the model has ids (then it is not this model's vocabulary).
    """
    file = os.path.join(path, SPIECE)
    if not os.path.exists(file):
        return None
    try:
        tokenizer = tokenizers.load_sentencepiece(file)
    except tokenizers.TokenizerError as e:
        raise ConversionError(str(e)) from None
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ConversionError(
            f"{file} has {tokenizer.vocab_size} pieces, but {CONFIG} has vocab_size="
            f"{cfg.vocab_size}: it is not this checkpoint's vocabulary; download the matching one."
        )
    return tokenizer


def load_hf_reformer(path: str) -> tuple[ReformerConfig, dict]:
    """A local HF checkpoint directory (one of `ARCHITECTURES`) -> (config, params)."""
    checkpoint = load_hf(path)
    return checkpoint.cfg, checkpoint.params


def buckets_from_hf(
    buckets: dict[int, Any], cfg: ReformerConfig, length: int | None = None
) -> dict[int, np.ndarray]:
    """HF's per-layer buckets [b, h, r, L] -> ours [b, h, r, length], each in [0, n_buckets).

    HF offsets round r by r * n_buckets, or by r * (n_buckets + 1) when its
    batch holds padding (an attention mask's zeros, or its own round-up of
    the length): the padding then sits in an extra bucket, n_buckets, of
    every round, which tells the two cases apart. The padding's buckets
    become 0 (our LSH never reads them: the mask tells it the padding).
    length: the input's length, when HF rounded it up (the hooks of an LSH
    layer see L >= length; its cache holds `length` already).
    """
    if not buckets:  # a model without LSH layers, or inputs that fit one chunk
        return {}
    if cfg.n_buckets is None:
        raise ValueError("buckets_from_hf needs cfg.n_buckets (HF's num_buckets) to be set.")
    n_total = lsh.total_buckets(cfg.n_buckets)
    out = {}
    for layer, b in buckets.items():
        b = np.asarray(b)
        padded = bool((b[:, :, 0] == n_total).any())
        offsets = np.arange(b.shape[2]).reshape(1, 1, -1, 1) * (n_total + padded)
        b = b - offsets
        out[layer] = np.where(b < n_total, b, 0)[..., :length].astype(np.int32)
    return out


# ----------------------------------------------------------------------------- CLI


def task_bindings(checkpoint: HFCheckpoint) -> list[str]:
    """The gin lines that make a workdir's task (reformer_jax/tasks.py) the checkpoint's model."""
    arch = checkpoint.architecture
    if arch == LM_ARCHITECTURE:
        return ["train.task = @LanguageModelTask()"]
    if arch == MLM_ARCHITECTURE:
        return ["train.task = @MaskedLMTask()"]
    if arch == CLASSIFIER_ARCHITECTURE:
        return [
            "train.task = @ClassificationTask()",
            f"ClassificationTask.n_classes = {checkpoint.n_labels}",
            "ClassificationTask.pooling = 'first'",
        ]
    return ["train.task = @SpanTask()"]


def main(argv: Sequence[str]) -> None:
    """python -m reformer_jax.convert --hf_dir=DIR --workdir=OUT [--gin_file=...] [--gin_param=...]

    Writes <workdir>/checkpoints/0 (parameters and model config, as
    `checkpoints.save_params`) and <workdir>/config.gin: the given gin files
    (e.g. enwik8.gin for its dataset) with the converted ReformerConfig and
    the checkpoint's task (`task_bindings`) bound on top, then the
    --gin_param overrides. A SentencePiece vocabulary beside the checkpoint
    (spiece.model) is copied to <workdir>/spiece.model. `evaluate`, `train`
    (fine-tuning) and, for a language model, `sample` read that workdir.
    """
    from reformer_jax import checkpoints, cli, tasks

    parser = argparse.ArgumentParser(
        prog="python -m reformer_jax.convert",
        description="Convert an HF transformers Reformer checkpoint into a reformer_jax workdir. "
        f"config.json's architectures names the model; these convert: {supported_architectures()}.",
    )
    parser.add_argument("--hf_dir", required=True, help="local HF checkpoint directory")
    parser.add_argument("--workdir", required=True, help="new workdir to write")
    cli.add_gin_flags(parser)
    args = parser.parse_args(argv)
    cli.log_to_stderr()
    try:
        checkpoint = load_hf(args.hf_dir)
        vocabulary = read_hf_vocabulary(args.hf_dir, checkpoint.cfg)
    except ConversionError as e:
        raise cli.UsageError(str(e)) from None
    directory = checkpoints.find_directory(args.workdir)
    if os.path.isdir(directory) and os.listdir(directory):
        raise cli.UsageError(
            f"{directory} already holds checkpoints; convert into a new --workdir."
        )
    bindings = [f"ReformerConfig.{k} = {v!r}" for k, v in vars(checkpoint.cfg).items()]
    cli.parse_gin(args.gin_file, bindings + task_bindings(checkpoint) + args.gin_param)
    final = cli.model_config()
    try:
        task = cli.task()
        task.check(final)
        wanted = _model_shapes(task.model(final))
    except tasks.TaskError as e:
        raise cli.UsageError(str(e)) from None
    params = checkpoint.params
    try:
        checkpoints.check_params_fit(params, wanted, "the converted checkpoint")
    except checkpoints.CheckpointError as e:
        raise cli.UsageError(f"{e} (a --gin_param changed a parameter shape)") from None
    cli.prepare_workdir(args.workdir)
    checkpoints.save_params(args.workdir, final, params, step=0)
    if vocabulary is not None:
        with open(os.path.join(args.hf_dir, SPIECE), "rb") as src:
            with write_then_rename(os.path.join(args.workdir, SPIECE)) as dst:
                dst.write(src.read())
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    with_vocabulary = (
        f", {SPIECE} with {vocabulary.vocab_size} pieces" if vocabulary is not None else ""
    )
    print(
        f"converted {args.hf_dir} ({checkpoint.architecture}, {n:,} parameters, "
        f"{final.n_layers} layers {final.attention_kinds}{with_vocabulary}) into "
        f"{args.workdir} (train.task = {type(task).__name__})"
    )


def _model_shapes(model: nn.Module):
    cfg = model.cfg
    tokens = jnp.zeros((1, min(cfg.max_len, 2 * max(cfg.chunk_len, cfg.local_chunk_len))), int)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), tokens)["params"])


if __name__ == "__main__":
    from reformer_jax import cli

    cli.run_main(main)
