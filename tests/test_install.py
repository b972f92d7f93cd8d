"""The wheel holds the whole package; installed alone it imports, trains, runs a notebook.

A checkout's modules stay importable from the checkout (the development venv's
editable install, or PYTHONPATH) whatever the wheel holds, so these tests look
at the wheel itself and at a virtual environment that sees only the wheel:

- test_wheel_holds_every_module_and_config_of_the_source_tree: `pip wheel` of
  a copy of this checkout holds exactly the .py files under reformer_jax/ and
  the .gin files under configs/ (as reformer_jax/configs/), compared with the
  tree, not with a list.
- test_fresh_install_imports_trains_and_runs_a_notebook (slow): what a new
  user, or a notebook's first cell on Colab, does. A copy of the checkout
  stands for the clone; its wheel goes into a new virtual environment made by
  the base interpreter, dependencies from the package index as a user's
  `pip install` takes them. From a directory outside the checkout, with no
  PYTHONPATH, that environment imports every module of the installed package
  (the same list as the source tree's), trains configs/copy.gin for two steps,
  and runs notebooks/lsh_attention.ipynb in smoke mode in a kernel on its own
  interpreter, from the clone's notebooks/ as Colab does.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What a clone does not hold at its top (.gitignore, and the repository's history).
_NOT_IN_A_CLONE = {
    ".git",
    ".venv",
    ".pytest_cache",
    ".ruff_cache",
    "build",
    "dist",
    "workdir",
    "runs",
    "gpu_wheels",
}
# The notebook run against the installed package: it imports the attention
# functions and, through scripts/benchmark.py, the profiling helpers, and
# takes one to two minutes in smoke mode on 2 cores.
NOTEBOOK = "lsh_attention.ipynb"


def _clone(dest: Path) -> Path:
    """A copy of this checkout as a clone has it (sources, configs, notebooks, scripts)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == ROOT
        return {
            n
            for n in names
            if n == "__pycache__"
            or n.endswith((".pyc", ".egg-info"))
            or (top and n in _NOT_IN_A_CLONE)
        }

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _package_files(tree: Path) -> set[str]:
    """The files an installed package must hold, as paths inside the wheel.

    Every .py file under reformer_jax/, and configs/ (its .py and .gin files),
    which installs as the package reformer_jax.configs.
    """
    out = {p.relative_to(tree).as_posix() for p in (tree / "reformer_jax").rglob("*.py")}
    for pattern in ("*.py", "*.gin"):
        out |= {
            f"reformer_jax/configs/{p.relative_to(tree / 'configs').as_posix()}"
            for p in (tree / "configs").rglob(pattern)
        }
    return out


def _module_name(wheel_path: str) -> str:
    parts = wheel_path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _build_wheel(python: str, tree: Path, out: Path) -> Path:
    """`pip wheel --no-deps` of `tree` into `out` (from a copy: setuptools' build/
    directory in a checkout keeps files that were since deleted)."""
    result = subprocess.run(
        [python, "-m", "pip", "wheel", "--quiet", "--no-deps", f"--wheel-dir={out}", str(tree)],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("reformer_jax-*.whl")
    return wheel


def _wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if ".dist-info/" not in n}


def test_wheel_holds_every_module_and_config_of_the_source_tree(tmp_path):
    expected = _package_files(ROOT)
    assert "reformer_jax/kernels/window.py" in expected  # the walk found the subpackages
    assert "reformer_jax/configs/base.gin" in expected
    (tmp_path / "dist").mkdir()
    wheel = _build_wheel(sys.executable, _clone(tmp_path / "reformer_jax"), tmp_path / "dist")
    got = _wheel_files(wheel)
    assert got == expected, (
        f"the wheel lacks {sorted(expected - got)} and holds {sorted(got - expected)} "
        "beyond the source tree (setup.py finds the packages and names the package data "
        "that is not modules)"
    )


def _user_env(venv: Path) -> dict[str, str]:
    """This process's environment as a shell in `venv` has it: no PYTHONPATH, and
    no development venv on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    }
    path = os.environ.get("PATH", "").split(os.pathsep)
    if sys.prefix != sys.base_prefix:  # these tests run in a venv: take it off PATH
        path = [p for p in path if not Path(p).resolve().is_relative_to(Path(sys.prefix))]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv)
    return env


# Run by the fresh venv's python: every module that pkgutil finds in the
# installed package, imported, with its file; and the installed gin configs.
_IMPORT_ALL = """
import importlib, importlib.resources, json, pkgutil
import reformer_jax

def reraise(name):
    raise  # walk_packages calls this inside its `except ImportError`

names = ["reformer_jax"] + [
    m.name for m in pkgutil.walk_packages(reformer_jax.__path__, "reformer_jax.", onerror=reraise)
]
print(json.dumps({
    "modules": {name: importlib.import_module(name).__file__ for name in names},
    "configs": sorted(
        p.name for p in importlib.resources.files("reformer_jax.configs").iterdir()
        if p.name.endswith(".gin")
    ),
}))
"""

# Appended to the notebook: which reformer_jax modules its kernel imported, from where.
_LOADED_CELL = """
import json, sys
print("LOADED " + json.dumps({
    name: getattr(module, "__file__", "") for name, module in sys.modules.items()
    if name.split(".")[0] == "reformer_jax"
}))
"""


def _inside(path: str, directory: Path) -> bool:
    return Path(path).resolve().is_relative_to(directory.resolve())


@pytest.mark.slow  # a wheel into a new venv, dependencies included, and a notebook (minutes)
def test_fresh_install_imports_trains_and_runs_a_notebook(tmp_path):
    import nbformat

    assert not tmp_path.resolve().is_relative_to(ROOT)
    seconds = {}
    t0 = time.perf_counter()
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    # The interpreter the development venv was made from: a new venv from it
    # sees neither the development venv's packages nor its editable install.
    base = getattr(sys, "_base_executable", sys.executable)
    made = subprocess.run(
        [base, "-m", "venv", str(venv)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    env = _user_env(venv)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(args, timeout, cwd=elsewhere):
        return subprocess.run(
            [python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )

    before = run(["-c", "import reformer_jax"], 120)
    assert before.returncode != 0 and "No module named 'reformer_jax'" in before.stderr, (
        "the new venv sees a reformer_jax before the wheel is installed: " + before.stderr
    )
    tree = _clone(tmp_path / "clone" / "reformer_jax")
    (tmp_path / "dist").mkdir()
    wheel = _build_wheel(python, tree, tmp_path / "dist")
    seconds["venv + wheel"] = time.perf_counter() - t0

    # --no-compile: bytecode is only a cache (the interpreter compiles what it
    # imports); writing it for every file of jax, tensorflow-datasets and the
    # rest takes a quarter of the install's time.
    t0 = time.perf_counter()
    installed = run(["-m", "pip", "install", "--quiet", "--no-compile", str(wheel)], 1800)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    seconds["pip install (dependencies included)"] = time.perf_counter() - t0

    # (a) Every module of the installed package imports, and the package holds
    # the source tree's modules and configs, each file inside the new venv.
    t0 = time.perf_counter()
    imported = run(["-c", _IMPORT_ALL], 600)
    assert imported.returncode == 0, imported.stderr
    found = json.loads(imported.stdout.strip().splitlines()[-1])
    expected = {_module_name(p) for p in _package_files(ROOT) if p.endswith(".py")}
    assert set(found["modules"]) == expected, (
        f"installed package lacks {sorted(expected - set(found['modules']))}, "
        f"has beyond the tree {sorted(set(found['modules']) - expected)}"
    )
    outside = {m: f for m, f in found["modules"].items() if not _inside(f, venv)}
    assert not outside, f"modules imported from outside the new venv: {outside}"
    assert found["configs"] == sorted(p.name for p in (ROOT / "configs").glob("*.gin"))
    seconds["import every module"] = time.perf_counter() - t0

    # (b) The shipped copy task trains two steps from a directory with no configs/.
    t0 = time.perf_counter()
    trained = run(
        [
            "-m",
            "reformer_jax.train",
            "--gin_file=configs/copy.gin",
            "--workdir=run",
            "--gin_param=train.steps=2",
            "--gin_param=train.batch_size=4",
            "--gin_param=train.log_every=1",
            "--gin_param=train.eval_every=0",
            "--gin_param=train.final_eval=()",
            "--gin_param=train.progress=False",
        ],
        900,
    )
    assert trained.returncode == 0, trained.stderr
    with open(elsewhere / "run" / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2]
    assert "ReformerConfig.d_model = 128" in (elsewhere / "run" / "config.gin").read_text()
    seconds["train copy.gin 2 steps"] = time.perf_counter() - t0

    # (c) A notebook, as on Colab: its kernel on the new venv's python, cwd the
    # clone's notebooks/ (where the clone's sources are not importable). Colab's
    # runtime comes with ipykernel and matplotlib; a venv gets them here.
    t0 = time.perf_counter()
    kernel = run(
        ["-m", "pip", "install", "--quiet", "--no-compile", "ipykernel", "matplotlib"], 1800
    )
    assert kernel.returncode == 0, kernel.stdout + kernel.stderr
    seconds["pip install ipykernel matplotlib"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    spec = importlib.util.spec_from_file_location(
        "run_notebooks", ROOT / "scripts" / "run_notebooks.py"
    )
    run_notebooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_notebooks)
    path = tree / "notebooks" / NOTEBOOK
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_LOADED_CELL))
    nbformat.write(nb, path)
    ran = run_notebooks.execute(path, smoke=True, timeout=900, python=python, env=env)
    texts = [
        out.get("text", "")
        for cell in ran.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    ]
    assert any("SMOKE = True" in t for t in texts), f"{NOTEBOOK} did not run in smoke mode"
    assert run_notebooks.count_images(ran) >= 1, f"{NOTEBOOK} ran but drew no image"
    (loaded,) = [
        json.loads(line.removeprefix("LOADED "))
        for t in texts
        for line in t.splitlines()
        if line.startswith("LOADED ")
    ]
    assert {"reformer_jax.lsh", "reformer_jax.attention", "reformer_jax.profiling"} <= set(loaded)
    outside = {m: f for m, f in loaded.items() if not _inside(f, venv)}
    assert not outside, f"the notebook imported modules from outside the new venv: {outside}"
    seconds[f"notebook {NOTEBOOK}"] = time.perf_counter() - t0
    print("fresh install, seconds:", json.dumps({k: round(v, 1) for k, v in seconds.items()}))


def test_gin_file_falls_back_to_the_package_and_search_paths_resolve_includes(
    tmp_path, monkeypatch
):
    import gin

    from reformer_jax import cli

    # A name under configs/ that is not a path from here resolves to the shipped file.
    monkeypatch.chdir(tmp_path)
    assert cli.resolve_gin_file("configs/copy.gin") == os.path.join(cli.config_dir(), "copy.gin")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "shared.gin").write_text("ReformerConfig.d_ff = 96\n")
    (tmp_path / "mine.gin").write_text("include 'copy.gin'\ninclude 'shared.gin'\n")
    cli.parse_gin(["mine.gin"], [], search_paths=[str(lib)])
    assert cli.model_config().d_ff == 96 and cli.model_config().d_model == 128
    assert gin.query_parameter("train.steps") == 1500
    with pytest.raises(cli.UsageError, match="--gin_search_paths"):
        cli.parse_gin(["mine.gin"], [], search_paths=[str(tmp_path / "nowhere")])
