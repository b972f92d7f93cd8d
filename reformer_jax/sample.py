"""Sample from a trained run: text continuation, image completion, raw ids.

    python -m reformer_jax.sample --workdir=DIR [--step=N] [--gin_param=...]
        (--prompt=TEXT | --prompt_ids=0,5,9 | --image_prompt=PNG --prompt_rows=N
         | --source=TEXT | --source_file=FILE | --source_ids=5,9,1)
        [--num_tokens=N] [--greedy] [--temperature=T] [--top_k=K] [--top_p=P]
        [--n_samples=S] [--n_hashes=R] [--seed=S] [--output=FILE] [--json]
        [--beam_size=K [--length_penalty=A] [--eos_id=N]]

Loads the newest readable checkpoint of the run and its saved model config
(reformer_jax.checkpoints.load_run); --gin_param overrides bindings of that
config (e.g. 'ReformerConfig.attention_kinds = ("full_shared",)' to decode an
LSH model with full attention). Sampling is reformer_jax.sampling.generate:
cached decoding, one compiled program per sample batch.

- --prompt=TEXT: prints each sample's prompt and continuation as text,
  encoded and decoded with the run's tokenizer
  (reformer_jax.data.tokenizers.for_run): the one its dataset declares in
  its config.gin (enwik8 and the stdlib corpus: ids = byte + 2), or its
  workdir's SentencePiece vocabulary (spiece.model, from `python -m
  reformer_jax.tokenizer` or copied by `convert`, e.g.
  google/reformer-crime-and-punishment's). A run without either has no text:
  use --prompt_ids.
- --prompt_ids=0,5,9: any model; prints the generated ids (and text for text
  models).
- --image_prompt=PNG --prompt_rows=N (Imagenet64 models: 64x64 RGB, 12,288
  ids): keeps the top N pixel rows, completes the image (by default all of it;
  --num_tokens for fewer ids), and writes one PNG grid to --output (default
  samples.png): a row per sample, columns = prompt, completion, original.
- --json: one JSON object per sample and line, {"ids": [generated ids,
  prompt excluded]} plus "text" (those ids as text) for text models.
- --beam_size=K (with --prompt or --prompt_ids): beam search instead of
  sampling (reformer_jax.sampling.beam_search, GNMT length penalty
  --length_penalty, default 0.6; --eos_id ends a hypothesis): prints each
  sample's best hypothesis, ids up to and including EOS; with --json also
  "score" and "beams", all K as {"ids", "score", "length"}, best first.

Encoder-decoder runs (Seq2SeqTask; reformer_jax.sampling.translate and
translate_beam) take a source instead of a prompt:

- --source=TEXT, or --source_file=FILE (one source a line, UTF-8; blank
  lines skipped), encoded with the run's SentencePiece vocabulary;
  --source_ids=5,9 for runs without text (the generated tasks). An EOS (id 1)
  is appended as in training.
- prints one target a line (text, or ids), greedy with --greedy, sampled
  otherwise, or the best of --beam_size=K beams (--length_penalty, default
  0.6); targets end at EOS and have at most --num_tokens ids (default
  max_len). --json: {"source", "ids", "text"?, "score"? , "beams"?} a line.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import jax
import numpy as np

from reformer_jax import cli, sampling, user_files
from reformer_jax.data import imagenet64, tokenizers
from reformer_jax.encdec import EOS_ID


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reformer_jax.sample", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a training run's workdir")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.add_argument(
        "--gin_param", action="append", default=[], help="override a binding of the run's config"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text prompt (a run whose data is text)")
    source.add_argument("--prompt_ids", help="comma-separated token ids, e.g. 0,5,9")
    source.add_argument("--image_prompt", help="a 64x64 RGB PNG (Imagenet64 models)")
    source.add_argument("--source", help="encoder-decoders: the text to translate")
    source.add_argument("--source_file", help="encoder-decoders: one source text a line")
    source.add_argument("--source_ids", help="encoder-decoders: comma-separated source ids")
    parser.add_argument(
        "--prompt_rows", type=int, default=None, help="pixel rows of --image_prompt kept"
    )
    parser.add_argument(
        "--num_tokens", type=int, default=None, help="ids to generate (images: default the rest)"
    )
    parser.add_argument("--greedy", action="store_true", help="always take the most likely id")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--n_samples", type=int, default=1, help="samples decoded at once")
    parser.add_argument(
        "--n_hashes", type=int, default=None, help="LSH hash rounds at decode (default: config)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="PNG grid path (image prompts)")
    parser.add_argument("--json", action="store_true", help="one JSON object per sample")
    parser.add_argument("--beam_size", type=int, default=None, help="beam search with K beams")
    parser.add_argument(
        "--length_penalty", type=float, default=None, help="beam search's GNMT alpha (0.6)"
    )
    parser.add_argument("--eos_id", type=int, default=None, help="id that ends a beam hypothesis")
    return parser.parse_args(argv)


def _check_beam_args(args) -> None:
    if args.beam_size is None:
        if args.length_penalty is not None or args.eos_id is not None:
            raise cli.UsageError("--length_penalty and --eos_id need --beam_size (beam search)")
        return
    if args.beam_size < 1:
        raise cli.UsageError(f"--beam_size must be >= 1, got {args.beam_size}")
    if args.image_prompt is not None:
        raise cli.UsageError("--beam_size works with --prompt or --prompt_ids, not --image_prompt")
    if args.greedy or args.temperature != 1.0 or args.top_k is not None or args.top_p is not None:
        raise cli.UsageError(
            "--beam_size ranks continuations by their probability: drop --greedy, "
            "--temperature, --top_k and --top_p"
        )


def _print_beams(args, run, cfg, prompt, batch, num_tokens, text_of) -> None:
    """Beam search on each sample row of batch; prints the best hypotheses (see module doc)."""
    try:
        result = sampling.beam_search(
            run.params,
            cfg,
            batch,
            jax.random.key(args.seed),
            beam_size=args.beam_size,
            num_tokens=num_tokens,
            eos_id=args.eos_id,
            length_penalty=0.6 if args.length_penalty is None else args.length_penalty,
            n_hashes=args.n_hashes,
        )
    except ValueError as e:
        raise cli.UsageError(f"{e}".rstrip(".")) from None
    result = jax.device_get(result)
    for i in range(len(batch)):
        beams = [
            {"ids": ids[:n].tolist(), "score": float(score), "length": int(n)}
            for ids, score, n in zip(
                result.ids[i], result.scores[i], result.lengths[i], strict=True
            )
            if n > 0  # empty slots: fewer than K hypotheses with non-zero probability
        ]
        best = beams[0]
        if args.json:
            record = {"ids": best["ids"], "score": best["score"], "beams": beams}
            if text_of is not None:
                record["text"] = text_of(best["ids"])
            print(json.dumps(record))
        else:
            print(
                f"--- sample {i}: best of {args.beam_size} beams, score {best['score']:.4f} "
                f"(checkpoint step {run.step}) ---"
            )
            ids = best["ids"]
            print(text_of([*prompt, *ids]) if text_of else ",".join(map(str, ids)))


def _choice(args) -> dict:
    """How each token is chosen (greedy, temperature, top-k/p) and the decode-time rounds."""
    return dict(
        greedy=args.greedy,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        n_hashes=args.n_hashes,
    )


def _sources(args, tokenizer) -> list[tuple[str, np.ndarray]]:
    """(label, ids ending with EOS) of each source the flags give."""
    if args.source_ids is not None:
        try:
            ids = [int(t) for t in args.source_ids.split(",") if t.strip()]
        except ValueError:
            raise cli.UsageError(
                f"--source_ids={args.source_ids!r}: give comma-separated integers, e.g. 5,9"
            ) from None
        texts = [(args.source_ids, np.asarray(ids, np.int32))]
    else:
        if tokenizer is None:
            raise cli.UsageError(
                f"--source text needs the run's SentencePiece vocabulary "
                f"(WORKDIR/{tokenizers.SPIECE_FILE}), which this workdir lacks: use --source_ids"
            )
        lines = [args.source] if args.source is not None else args.source_lines
        texts = [(line, tokenizer.encode(line)) for line in lines]
    if not texts or any(len(ids) == 0 for _, ids in texts):
        raise cli.UsageError("every source needs at least one token")
    out = []
    for label, ids in texts:
        if ids[-1] != EOS_ID:
            ids = np.append(ids, EOS_ID).astype(np.int32)
        out.append((label, ids))
    return out


def _translate(args, run, cfg, tokenizer) -> None:
    """Decodes each source (see the module docstring) and prints its target."""
    sources = _sources(args, tokenizer)
    # Padded to max_len as the training batches are: one compiled program for every source.
    longest = cfg.max_len
    for label, ids in sources:
        if len(ids) > longest:
            raise cli.UsageError(
                f"source {label[:40]!r} is {len(ids)} tokens with its EOS, more than the model's "
                f"max_len {longest}: shorten it"
            )
    batch = np.zeros((len(sources), longest), np.int32)
    for i, (_, ids) in enumerate(sources):
        batch[i, : len(ids)] = ids
    mask = np.arange(longest)[None] < np.array([len(ids) for _, ids in sources])[:, None]
    num_tokens = cfg.max_len if args.num_tokens is None else args.num_tokens
    key = jax.random.key(args.seed)
    scores, all_beams = None, None
    try:
        if args.beam_size is not None:
            alpha = 0.6 if args.length_penalty is None else args.length_penalty
            result = jax.device_get(
                sampling.translate_beam(
                    run.params,
                    cfg,
                    batch,
                    key,
                    source_mask=mask,
                    beam_size=args.beam_size,
                    num_tokens=num_tokens,
                    length_penalty=alpha,
                    n_hashes=args.n_hashes,
                )
            )
            ids, scores = result.ids[:, 0], result.scores[:, 0]
            k = args.beam_size
            all_beams = [
                [
                    {
                        "ids": result.ids[i, j, : result.lengths[i, j]].tolist(),
                        "score": float(result.scores[i, j]),
                        "length": int(result.lengths[i, j]),
                    }
                    for j in range(k)
                    if result.lengths[i, j] > 0
                ]
                for i in range(len(sources))
            ]
        else:
            ids = sampling.translate(
                run.params,
                cfg,
                batch,
                key,
                source_mask=mask,
                num_tokens=num_tokens,
                **_choice(args),
            )
    except ValueError as e:
        raise cli.UsageError(f"{e}".rstrip(".")) from None
    ids = np.asarray(jax.device_get(ids))
    for i, (label, _) in enumerate(sources):
        row = ids[i]
        ends = np.flatnonzero(row == EOS_ID)
        row = row[: ends[0]] if len(ends) else row
        text = None if tokenizer is None else tokenizer.decode(row)
        if args.json:
            record = {"source": label, "ids": row.tolist()}
            if text is not None:
                record["text"] = text
            if scores is not None:
                record["score"] = float(scores[i])
                record["beams"] = all_beams[i]
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(text if text is not None else ",".join(map(str, row.tolist())))


def _read_image(path: str) -> np.ndarray:
    """A 64x64 RGB PNG as uint8 [64, 64, 3]; one clear error otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode, size = img.mode, img.size
            pixels = np.asarray(img.convert("RGB")) if mode == "RGB" else None
    except (OSError, UnidentifiedImageError) as e:
        raise cli.UsageError(f"--image_prompt: cannot read {path} as an image ({e})") from None
    h, w, _ = imagenet64.IMAGE_SHAPE
    if mode != "RGB" or size != (w, h):
        raise cli.UsageError(
            f"--image_prompt: expected a {w}x{h} RGB image, got a {size[0]}x{size[1]} {mode} one "
            f"({path}); resize and convert it to {w}x{h} RGB first"
        )
    return pixels


def _prompt(args, cfg, tokenizer) -> tuple[np.ndarray, np.ndarray | None]:
    """(prompt ids [p], the original image [64, 64, 3] or None) from the prompt flags."""
    if args.prompt is not None:
        if tokenizer is None:
            raise cli.UsageError(
                f"--prompt needs a run whose data is text: this run's dataset "
                f"({cli.dataset_name() or 'none in WORKDIR/config.gin'}) declares no tokenizer "
                f"and WORKDIR/{tokenizers.SPIECE_FILE} does not exist; use --prompt_ids, bind "
                "the run's dataset (e.g. --gin_param='train.dataset_fn = @enwik8_dataset'), "
                "or train a vocabulary with python -m reformer_jax.tokenizer"
            )
        return tokenizer.encode(args.prompt), None
    if args.prompt_ids is not None:
        try:
            ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise cli.UsageError(
                f"--prompt_ids={args.prompt_ids!r}: give comma-separated integers, e.g. 0,5,9"
            ) from None
        return np.asarray(ids, np.int32), None
    image = _read_image(args.image_prompt)
    h, w, c = imagenet64.IMAGE_SHAPE
    if cfg.vocab_size != imagenet64.VOCAB_SIZE or cfg.max_len < imagenet64.SEQ_LEN:
        raise cli.UsageError(
            f"--image_prompt needs an Imagenet64 model (vocab {imagenet64.VOCAB_SIZE}, max_len "
            f">= {imagenet64.SEQ_LEN}); this one has vocab {cfg.vocab_size}, max_len {cfg.max_len}"
        )
    if args.prompt_rows is None or not 1 <= args.prompt_rows < h:
        raise cli.UsageError(
            f"--image_prompt needs --prompt_rows in [1, {h - 1}] (the top rows kept), "
            f"got {args.prompt_rows}"
        )
    return imagenet64.flatten_image(image)[: args.prompt_rows * w * c], image


def _tokenizer(workdir: str, cfg) -> tokenizers.Tokenizer | None:
    """The run's tokenizer (`cli.run_tokenizer`; config parsed), or None for data without text."""
    tokenizer = cli.run_tokenizer(workdir)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        spiece = os.path.join(workdir, tokenizers.SPIECE_FILE)
        source = spiece if os.path.exists(spiece) else f"the dataset's {tokenizer.name} vocabulary"
        raise cli.UsageError(
            f"{source} has {tokenizer.vocab_size} ids, more than the model's vocabulary of "
            f"{cfg.vocab_size}: it is not this model's vocabulary; put the run's own "
            f"{tokenizers.SPIECE_FILE} in its workdir, or bind the dataset it was trained on"
        )
    return tokenizer


def _image_grid(prompt: np.ndarray, samples: np.ndarray, original: np.ndarray, path: str) -> None:
    """Writes a PNG: a row per sample, columns = prompt, completion, original (gray = unknown)."""
    from PIL import Image

    size = imagenet64.SEQ_LEN

    def picture(ids):
        full = np.full(size, 128, np.int32)
        full[: len(ids)] = ids
        return imagenet64.unflatten(full)

    rows = [
        np.concatenate([picture(prompt), picture(np.concatenate([prompt, s])), original], axis=1)
        for s in samples
    ]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def main(argv: Sequence[str]) -> None:
    args = _parse_args(argv)
    try:
        sampling.SamplingOptions(
            greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
        )
    except ValueError as e:
        raise cli.UsageError(f"{e}".rstrip(".")) from None
    if args.n_samples < 1:
        raise cli.UsageError(f"--n_samples must be >= 1, got {args.n_samples}")
    if args.num_tokens is not None and args.num_tokens < 1:
        raise cli.UsageError(f"--num_tokens must be >= 1 (ids to generate), got {args.num_tokens}")
    if not 0 <= args.seed < 2**62:  # jax.random.key takes a 64-bit int
        raise cli.UsageError(f"--seed must be in [0, 2**62), got {args.seed}")
    _check_beam_args(args)
    if args.image_prompt is not None:
        _read_image(args.image_prompt)  # a bad image fails before the model loads
    if args.source_file is not None:  # and so does a bad file of sources
        lines = user_files.text_lines(args.source_file, "--source_file", "one source a line")
        args.source_lines = [ln.rstrip("\n") for ln in lines if ln.strip()]
    from reformer_jax import checkpoints  # the orbax stack, only once the flags are sane

    try:
        run = checkpoints.load_run(args.workdir, args.step)
    except checkpoints.CheckpointError as e:
        raise cli.UsageError(str(e)) from None
    cfg = run.config
    # The run's config.gin names its dataset, and with it the tokenizer.
    config = os.path.join(args.workdir, "config.gin")
    bindings = [f"ReformerConfig.{k} = {v!r}" for k, v in vars(cfg).items()]
    cli.parse_gin([config] if os.path.isfile(config) else [], bindings + args.gin_param)
    if args.gin_param:
        cfg = cli.model_config()
    tokenizer = _tokenizer(args.workdir, cfg)
    is_source = args.source is not None or args.source_file is not None or args.source_ids
    if cfg.cross_attention != bool(is_source):
        raise cli.UsageError(
            "this run is an encoder-decoder: give --source, --source_file or --source_ids"
            if cfg.cross_attention
            else "--source, --source_file and --source_ids are for encoder-decoder runs; this "
            "one is a language model: give --prompt or --prompt_ids"
        )
    if is_source:
        return _translate(args, run, cfg, tokenizer)
    prompt, original = _prompt(args, cfg, tokenizer)
    num_tokens = args.num_tokens
    if num_tokens is None:
        if original is None:
            raise cli.UsageError("give --num_tokens (how many ids to generate)")
        num_tokens = imagenet64.SEQ_LEN - len(prompt)
    batch = np.tile(prompt.reshape(1, -1), (args.n_samples, 1))
    text_of = None if tokenizer is None else tokenizer.decode
    if args.beam_size is not None:
        return _print_beams(args, run, cfg, prompt, batch, num_tokens, text_of)
    try:
        ids = sampling.generate(
            run.params,
            cfg,
            batch,
            jax.random.key(args.seed),
            num_tokens=num_tokens,
            **_choice(args),
        )
    except ValueError as e:
        raise cli.UsageError(f"{e}".rstrip(".")) from None
    ids = np.asarray(jax.device_get(ids))
    if original is not None:
        path = args.output or "samples.png"
        _image_grid(prompt, ids, original, path)
        if not args.json:
            print(f"wrote {path}: {args.n_samples} samples x (prompt, completion, original)")
    if args.json:
        for row in ids:
            record = {"ids": row.tolist()}
            if text_of is not None:
                record["text"] = text_of(row)
            print(json.dumps(record))
    elif original is None:
        for i, row in enumerate(ids):
            print(f"--- sample {i} (checkpoint step {run.step}) ---")
            print(text_of([*prompt, *row]) if text_of else ",".join(map(str, row)))


if __name__ == "__main__":
    cli.run_main(main)
