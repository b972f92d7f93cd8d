"""Shared command-line plumbing: gin registration and parsing, one-line errors.

Gin lives only at the top: the command-line
entry points call `parse_gin`, which registers the library's configurables
here, so no library module imports gin.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import gin

from reformer_jax.data import enwik8, imagenet64, synthetic
from reformer_jax.model import ReformerConfig

_REGISTERED = False
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class UsageError(Exception):
    """A problem with the user's input; printed as one line, exit status 2."""


def register_configurables() -> None:
    """Registers the configurables gin files may bind (idempotent).

    ReformerConfig (`ReformerConfig.<field> = ...`), the trainer
    (`train.<argument> = ...`) and the dataset factories
    (`train.dataset_fn = @duplication_dataset`).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from reformer_jax import train

    gin.external_configurable(ReformerConfig, name="ReformerConfig")
    gin.external_configurable(train.train, name="train")
    gin.external_configurable(synthetic.duplication_dataset, name="duplication_dataset")
    gin.external_configurable(enwik8.enwik8_dataset, name="enwik8_dataset")
    gin.external_configurable(imagenet64.imagenet64_dataset, name="imagenet64_dataset")
    _REGISTERED = True


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gin_file", action="append", default=[], help="gin config file; repeat to layer several"
    )
    parser.add_argument(
        "--gin_param",
        action="append",
        default=[],
        help="one gin binding, e.g. 'ReformerConfig.n_layers = 6'",
    )


def parse_gin(files: Sequence[str], params: Sequence[str]) -> None:
    """Parses gin files and bindings, turning gin's errors into UsageError."""
    register_configurables()
    for path in files:
        if not os.path.isfile(path):
            raise UsageError(
                f"gin file not found: {path} (give a path to a .gin file, "
                "e.g. --gin_file=configs/copy.gin)"
            )
    gin.clear_config()
    # `include 'base.gin'` resolves next to the including file, then in the
    # repository's configs/ directory.
    for path in files:
        gin.add_config_file_search_path(os.path.dirname(os.path.abspath(path)))
    gin.add_config_file_search_path(CONFIG_DIR)
    # gin logs an error for every search path it tries before the one that works.
    logging.disable(logging.ERROR)
    try:
        gin.parse_config_files_and_bindings(list(files), list(params), finalize_config=False)
    except (OSError, ValueError, KeyError, SyntaxError) as e:
        raise UsageError(f"bad gin config: {_first_line(e)}") from None
    finally:
        logging.disable(logging.NOTSET)


def model_config() -> ReformerConfig:
    """The ReformerConfig the parsed gin config describes."""
    register_configurables()
    try:
        cfg = gin.get_configurable("ReformerConfig")()
    except ValueError as e:
        raise UsageError(f"bad model config: {_first_line(e)}") from None
    # Return a plain ReformerConfig, not gin's subclass, so configs compare and hash alike.
    return ReformerConfig(**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__})


def query(binding: str, default=None):
    """The value bound to `binding` (e.g. 'train.batch_size'), or `default`."""
    try:
        return gin.query_parameter(binding)
    except ValueError:
        return default


def prepare_workdir(workdir: str) -> None:
    """Creates the workdir and writes the parsed config to <workdir>/config.gin."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.gin"), "w") as f:
            f.write(gin.config_str())
    except OSError as e:
        raise UsageError(
            f"cannot write to workdir {workdir!r}: {e.strerror}; choose a writable --workdir"
        ) from None


def call_train(**kwargs):
    """Calls the gin-configured `train`; configuration mistakes become UsageError."""
    from reformer_jax.train import TrainingError

    register_configurables()
    try:
        return gin.get_configurable("train")(**kwargs)
    except (TrainingError, enwik8.DatasetError, imagenet64.DatasetError) as e:
        raise UsageError(_first_line(e)) from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"bad configuration: {_first_line(e)}") from None


def run_main(main, argv: Sequence[str] | None = None) -> None:
    """Runs main(argv); a UsageError becomes one line on stderr and exit status 2."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
