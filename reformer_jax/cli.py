"""The command-line layer: gin, flags, one-line errors, and the trainer's `main`.

    python -m reformer_jax.train --gin_file=configs/copy.gin [--gin_param=...] [--workdir=DIR]
        [--gin_search_paths=DIR,...] [--coordinator_address=HOST:PORT --num_processes=N
         --process_id=I | --distributed]

Gin lives only here, at the top: this module registers the library's
configurables, parses the user's files and bindings and calls plain Python
(`trainer.train`). The entry points (`reformer_jax/train/__main__.py`,
evaluate.py, memory.py) import this module; no library module imports gin,
and the trainer does not import this module, so the imports point one way.

Config files: `--gin_file=configs/x.gin` is read from that path when it
exists, otherwise from the configs shipped inside the package
(`reformer_jax.configs`), so an installed package runs from any directory.
`include 'base.gin'` resolves next to the including file, then in each
`--gin_search_paths` directory, then in the shipped configs.
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence

import gin
import jax

from reformer_jax import checkpoints, tasks, trainer, user_files
from reformer_jax.config import LEGACY_RUN_FIELDS, ReformerConfig, RunSettings
from reformer_jax.data import (
    DatasetError,
    enwik8,
    imagenet64,
    listops,
    seq2seq,
    spans,
    stdlib,
    synthetic,
    tokenizers,
    wmt14,
)

_REGISTERED = False
log = logging.getLogger("reformer_jax")


class UsageError(Exception):
    """A problem with the user's input; printed as one line, exit status 2."""


def config_dir() -> str:
    """The directory of the shipped gin configs (package data, or the source tree's configs/)."""
    try:
        return str(importlib.resources.files("reformer_jax.configs"))
    except ModuleNotFoundError:  # running from a source tree that is not installed
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def register_configurables() -> None:
    """Registers the configurables gin files may bind (idempotent).

    ReformerConfig (`ReformerConfig.<field> = ...`), the trainer
    (`train.<argument> = ...`), the tasks (`train.task = @LanguageModelTask()`,
    @MaskedLMTask(), @ClassificationTask(), @SpanTask(), @Seq2SeqTask()) and the
    dataset factories (`train.dataset_fn = @duplication_dataset`, @enwik8_dataset,
    @imagenet64_dataset, @stdlib_dataset, @span_dataset, @listops_dataset,
    @seq2seq_dataset, @wmt14_dataset).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    gin.external_configurable(ReformerConfig, name="ReformerConfig")
    gin.external_configurable(RunSettings, name="RunSettings")
    gin.external_configurable(trainer.train, name="train")
    gin.external_configurable(tasks.LanguageModelTask, name="LanguageModelTask")
    gin.external_configurable(tasks.MaskedLMTask, name="MaskedLMTask")
    gin.external_configurable(tasks.ClassificationTask, name="ClassificationTask")
    gin.external_configurable(tasks.SpanTask, name="SpanTask")
    gin.external_configurable(tasks.Seq2SeqTask, name="Seq2SeqTask")
    gin.external_configurable(synthetic.duplication_dataset, name="duplication_dataset")
    gin.external_configurable(enwik8.enwik8_dataset, name="enwik8_dataset")
    gin.external_configurable(imagenet64.imagenet64_dataset, name="imagenet64_dataset")
    gin.external_configurable(stdlib.stdlib_dataset, name="stdlib_dataset")
    gin.external_configurable(spans.span_dataset, name="span_dataset")
    gin.external_configurable(listops.listops_dataset, name="listops_dataset")
    gin.external_configurable(seq2seq.seq2seq_dataset, name="seq2seq_dataset")
    gin.external_configurable(wmt14.wmt14_dataset, name="wmt14_dataset")
    _REGISTERED = True


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        help="gin config file (a path, or configs/<name>.gin shipped with the package); "
        "repeat to layer several",
    )
    parser.add_argument(
        "--gin_param",
        action="append",
        default=[],
        help="one gin binding, e.g. 'ReformerConfig.n_layers = 6'",
    )
    parser.add_argument(
        "--gin_search_paths",
        default="",
        help="comma-separated directories searched for gin `include`s, before the shipped configs",
    )


def resolve_gin_file(path: str) -> str:
    """`path` if it exists, else the shipped config of the same name, else a UsageError."""
    if os.path.isfile(path):
        return path
    shipped = os.path.join(config_dir(), os.path.basename(path))
    if os.path.dirname(path) in ("", "configs") and os.path.isfile(shipped):
        return shipped
    raise UsageError(
        f"gin file not found: {path} (give a path to a .gin file, or configs/<name>.gin for one "
        f"of the shipped configs: {', '.join(_shipped_names())})"
    )


def _shipped_names() -> list[str]:
    try:
        return sorted(n for n in os.listdir(config_dir()) if n.endswith(".gin"))
    except OSError:
        return []


def parse_gin(
    files: Sequence[str], params: Sequence[str], search_paths: Sequence[str] = ()
) -> None:
    """Parses gin files and bindings, turning gin's errors into UsageError."""
    register_configurables()
    files = [resolve_gin_file(p) for p in files]
    gin.clear_config()
    for path in files:
        gin.add_config_file_search_path(os.path.dirname(os.path.abspath(path)))
    files = [_modernise_file(p) for p in files]
    params = [_modernise(p, "--gin_param") for p in params]
    for path in search_paths:
        if not os.path.isdir(path):
            raise UsageError(f"--gin_search_paths: {path} is not a directory")
        gin.add_config_file_search_path(os.path.abspath(path))
    gin.add_config_file_search_path(config_dir())
    # gin logs an error for every search path it tries before the one that works.
    logging.disable(logging.ERROR)
    try:
        gin.parse_config_files_and_bindings(list(files), list(params), finalize_config=False)
    except (OSError, ValueError, KeyError, SyntaxError) as e:
        raise UsageError(f"bad gin config: {_first_line(e)}") from None
    finally:
        logging.disable(logging.NOTSET)


_LEGACY_BINDING = re.compile(r"\bReformerConfig\.(" + "|".join(LEGACY_RUN_FIELDS) + r")\b")


def _modernise(text: str, where: str) -> str:
    """Bindings of the execution settings ReformerConfig once held, as RunSettings bindings."""
    names = sorted(set(_LEGACY_BINDING.findall(text)))
    if names:
        log.warning(
            "%s: ReformerConfig.%s is now RunSettings.%s (how a step runs, not part of the "
            "model); read as such",
            where,
            names[0],
            names[0],
        )
    return _LEGACY_BINDING.sub(r"RunSettings.\1", text)


def _modernise_file(path: str) -> str:
    """`path`, or a rewritten copy of it when it binds ReformerConfig's former run settings
    (a run's config.gin written before RunSettings existed)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return path  # gin reports it (parse_gin turns it into one line)
    new = _modernise(text, path)
    if new == text:
        return path
    copy = os.path.join(tempfile.mkdtemp(prefix="reformer_jax_gin_"), os.path.basename(path))
    with open(copy, "w") as f:
        f.write(new)
    return copy


def model_config() -> ReformerConfig:
    """The ReformerConfig the parsed gin config describes."""
    register_configurables()
    try:
        cfg = gin.get_configurable("ReformerConfig")()
    except ValueError as e:
        raise UsageError(f"bad model config: {_first_line(e)}") from None
    # Return a plain ReformerConfig, not gin's subclass, so configs compare and hash alike.
    return ReformerConfig(**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__})


def run_settings() -> RunSettings:
    """The RunSettings `train.run_settings` names (default: none set: plain steps)."""
    ref = query("train.run_settings")
    # Unbound (runs from before RunSettings): its own bindings still apply.
    return gin.get_configurable("RunSettings")() if ref is None else ref.scoped_configurable_fn()


def task() -> tasks.Task:
    """The task `train.task` names (with its gin bindings); next-token prediction if unbound.

    Runs written before tasks existed bind none: they are language models.
    """
    ref = query("train.task")
    if ref is None:
        return tasks.LanguageModelTask()
    try:
        return ref.scoped_configurable_fn()
    except TypeError as e:
        raise UsageError(f"bad configuration: {_missing_binding(e) or _first_line(e)}") from None


def query(binding: str, default=None):
    """The value bound to `binding` (e.g. 'train.batch_size'), or `default`."""
    try:
        return gin.query_parameter(binding)
    except ValueError:
        return default


def prepare_workdir(workdir: str) -> None:
    """Creates the workdir and (on process 0 only) writes the parsed config to config.gin."""
    try:
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "config.gin"), "w") as f:
                f.write(gin.config_str())
    except OSError as e:
        raise UsageError(
            f"cannot write to workdir {workdir!r}: {e.strerror}; choose a writable --workdir"
        ) from None


def call_train(**kwargs):
    """Calls the gin-configured `train`; configuration mistakes become UsageError."""
    register_configurables()
    try:
        return gin.get_configurable("train")(**kwargs)
    except (trainer.TrainingError, checkpoints.CheckpointError, DatasetError) as e:
        raise UsageError(_first_line(e)) from None
    except TypeError as e:
        raise UsageError(f"bad configuration: {_missing_binding(e) or _first_line(e)}") from None
    except ValueError as e:
        raise UsageError(f"bad configuration: {_first_line(e)}") from None


# Python's words for a call without a required argument, e.g.
# "ClassificationTask.__init__() missing 1 required positional argument: 'n_classes'".
_MISSING = re.compile(
    r"^(?P<fn>[\w.]+)\(\) missing \d+ required (?:positional|keyword-only) arguments?: "
    r"(?P<names>.+)$"
)


def _missing_binding(e: TypeError) -> str | None:
    """For a configurable called without a required argument, the bindings to add; else None.

    "ClassificationTask needs n_classes: bind ClassificationTask.n_classes = ... (in the gin
    file, or --gin_param='ClassificationTask.n_classes = ...')".
    """
    match = _MISSING.match(_first_line(e))
    if match is None:
        return None
    name = match["fn"].removesuffix(".__init__")
    try:
        gin.get_configurable(name)
    except ValueError:  # not something a user binds
        return None
    args = re.findall(r"'(\w+)'", match["names"])
    bindings = " and ".join(f"{name}.{a} = ..." for a in args)
    return (
        f"{name} needs {' and '.join(args)}: bind {bindings} (in the gin file, or "
        f"--gin_param='{name}.{args[0]} = ...')"
    )


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (so in-process callers can capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def log_to_stderr() -> None:
    """The trainer's own messages (resume, warnings) on stderr, whatever absl did."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-host (one process per host)")
    group.add_argument(
        "--coordinator_address", default=None, help="host:port of process 0 (e.g. 10.0.0.1:1234)"
    )
    group.add_argument("--num_processes", type=int, default=None, help="number of processes")
    group.add_argument("--process_id", type=int, default=None, help="this process's index")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() with the cluster's own settings (SLURM, TPU pods)",
    )


def init_distributed(args: argparse.Namespace) -> None:
    """jax.distributed.initialize from the flags; nothing for a single process."""
    given = [args.coordinator_address, args.num_processes, args.process_id]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise UsageError(
                "give all of --coordinator_address, --num_processes and --process_id, or none"
            )
        if not 0 <= args.process_id < args.num_processes:
            raise UsageError(
                f"--process_id={args.process_id} must be in [0, {args.num_processes}), "
                "the range --num_processes gives"
            )
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    elif args.distributed:
        jax.distributed.initialize()


def train_main(argv: Sequence[str]) -> None:
    """`python -m reformer_jax.train`: flags -> gin -> workdir -> train()."""
    parser = argparse.ArgumentParser(
        prog="python -m reformer_jax.train", description="Train a ReformerLM from gin configs."
    )
    add_gin_flags(parser)
    parser.add_argument(
        "--workdir",
        default=None,
        help="checkpoints, metrics and config.gin go here (default: runs/<first gin file's name>)",
    )
    add_distributed_flags(parser)
    args = parser.parse_args(argv)
    if not args.gin_file:
        raise UsageError("give at least one --gin_file (e.g. --gin_file=configs/copy.gin)")
    init_distributed(args)
    log_to_stderr()
    parse_gin(args.gin_file, args.gin_param, split_paths(args.gin_search_paths))
    workdir = args.workdir or os.path.join(
        "runs", os.path.splitext(os.path.basename(args.gin_file[0]))[0]
    )
    prepare_workdir(workdir)
    store_vocabulary(workdir)
    call_train(workdir=workdir)


def dataset_name() -> str | None:
    """The gin name of the bound `train.dataset_fn` (e.g. "enwik8_dataset"), or None."""
    ref = query("train.dataset_fn")
    return None if ref is None else ref.configurable.name


def dataset_factory():
    """The dataset factory bound to `train.dataset_fn` (the function itself), or None."""
    ref = query("train.dataset_fn")
    return None if ref is None else ref.configurable.wrapped


def run_tokenizer(workdir: str) -> tokenizers.Tokenizer | None:
    """The tokenizer of the run in `workdir` whose config is parsed (`parse_gin`): the one
    its dataset factory declares, or its workdir's spiece.model (`tokenizers.for_run`);
    None for data without text. A vocabulary file that cannot be read is a UsageError."""
    try:
        return tokenizers.for_run(workdir, dataset_factory())
    except tokenizers.TokenizerError as e:
        raise UsageError(str(e).rstrip(".")) from None


def store_vocabulary(workdir: str) -> None:
    """Copies the dataset's SentencePiece vocabulary into the workdir (process 0).

    Every later command on the run (sample, evaluate's BLEU, predict) reads
    <workdir>/spiece.model (reformer_jax/data/tokenizers.py, `for_run`). A
    workdir that already holds a different vocabulary is refused: the run's
    ids mean that one's pieces.
    """
    if dataset_name() != "wmt14_dataset" or jax.process_index() != 0:
        return
    source = query("wmt14_dataset.vocab_file") or wmt14.default_vocab_file()
    if not os.path.isfile(source):
        return  # the dataset names the fix when it opens
    target = os.path.join(workdir, tokenizers.SPIECE_FILE)
    data = open(source, "rb").read()
    if os.path.exists(target):
        if open(target, "rb").read() != data:
            raise UsageError(
                f"{target} differs from wmt14_dataset.vocab_file={source}: this run's ids "
                "belong to the workdir's vocabulary; use a new --workdir for a new vocabulary"
            )
        return
    tmp = target + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)


def split_paths(value: str) -> list[str]:
    return [p for p in value.split(",") if p]


def run_main(main, argv: Sequence[str] | None = None) -> None:
    """Runs main(argv); a UsageError, or a bad file the user named (reformer_jax/user_files.py),
    becomes one line on stderr and exit status 2."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except (UsageError, user_files.FileError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
