"""Execute notebooks/*.ipynb headless, as `make test` and `make notebooks` do.

    python scripts/run_notebooks.py [NOTEBOOK ...] [--full] [--inplace] [--timeout S]

Each notebook runs top to bottom in a fresh kernel on this interpreter
(sys.executable, through a kernel spec written to a temporary directory, so
no installed Jupyter kernel is picked up by mistake), with cwd = the
notebook's directory and this checkout first on PYTHONPATH, so it imports this
checkout's package. execute(..., python=P) runs the kernel on interpreter P
instead, with no checkout on its path: the notebook imports the package
installed there, as on Colab (tests/test_install.py).
By default REFORMER_NOTEBOOK_SMOKE=1 (the small setting that finishes in
about two minutes on a 2-core CPU); --full runs the real setting (sized for a
Colab GPU). --inplace writes the executed notebook, outputs included, back
to its file: that is how the committed outputs are made. Any cell error
stops with the notebook's name and the failing cell.

Public functions (tests/test_notebooks.py uses them):
    notebook_paths() -> list[Path]              every notebooks/*.ipynb, sorted
    execute(path, *, smoke, timeout, python, env) -> nb
                                                the executed nbformat.NotebookNode
    count_images(nb) -> int                     image/png outputs in nb
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
KERNEL_NAME = "reformer-jax-notebooks"


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _write_kernel_spec(directory: Path, *, smoke: bool, python: str | None) -> None:
    """A kernel spec that starts ipykernel with the notebook env.

    python None: this interpreter, with this checkout first on PYTHONPATH;
    otherwise that interpreter, with nothing added to its path.
    """
    env = {
        "REFORMER_NOTEBOOK_SMOKE": "1" if smoke else "0",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    if python is None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        )
    spec = {
        "argv": [python or sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "reformer_jax (notebook kernel)",
        "language": "python",
        "env": env,
    }
    (directory / KERNEL_NAME).mkdir(parents=True, exist_ok=True)
    (directory / KERNEL_NAME / "kernel.json").write_text(json.dumps(spec, indent=1))


def execute(
    path: Path,
    *,
    smoke: bool = True,
    timeout: int | None = 600,
    python: str | None = None,
    env: dict[str, str] | None = None,
):
    """Runs every cell of `path` in a fresh kernel; returns the executed notebook.

    timeout: seconds allowed per cell (None: no limit). python: the kernel's
    interpreter, which must have ipykernel (None: this one, importing this
    checkout). env: the kernel's environment before the notebook settings
    (None: this process's). Raises nbclient.exceptions.CellExecutionError on
    the first failing cell.
    """
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        _write_kernel_spec(Path(tmp), smoke=smoke, python=python)
        km = KernelManager(
            kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[tmp])
        )
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            kernel_name=KERNEL_NAME,
            resources={"metadata": {"path": str(path.parent)}},
        )
        try:
            client.execute(**({} if env is None else {"env": env}))
        finally:
            # nbclient shuts down only kernels it created itself; this one is ours.
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    # The committed kernel spec is the ordinary one, whatever ran it here.
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    return nb


def count_images(nb) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--full", action="store_true", help="the real setting, not smoke mode")
    parser.add_argument("--inplace", action="store_true", help="write outputs back to the files")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or notebook_paths()
    if not paths:
        print(f"no notebooks in {NOTEBOOKS}", file=sys.stderr)
        return 1
    for path in paths:
        t0 = time.perf_counter()
        nb = execute(path, smoke=not args.full, timeout=args.timeout)
        seconds = time.perf_counter() - t0
        images = count_images(nb)
        if args.inplace:
            nbformat.write(nb, path)
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{shown}: ran in {seconds:.0f} s, {images} image(s)", flush=True)
        if not images:
            print(f"{path.name} drew no image: a plot cell silently drew nothing", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
