"""The package's import graph reads top-down: no cycles, and gin only at the top.

Library modules never import gin (every function is usable from a notebook
without a config file); the command-line layer (cli.py) and the entry points
that use it are the only ones that do. The trainer package does not import
the command line, and `python -m reformer_jax.train` runs the trainer once.
"""

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "reformer_jax")
TOP = {
    "reformer_jax.cli",
    "reformer_jax.evaluate",
    "reformer_jax.memory",
    "reformer_jax.predict",
    "reformer_jax.sample",
    "reformer_jax.tokenizer",
    "reformer_jax.train.__main__",
}


def _modules() -> dict[str, str]:
    """module name -> file, for every .py file of the package."""
    out = {}
    for dirpath, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(dirpath, name)
    return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The package modules `path` imports (at any depth of its code)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("reformer_jax.") or name == "reformer_jax":
                found.add(name)
    return found


def test_no_import_cycle():
    modules = _modules()
    graph = {m: _imports(f, modules) - {m} for m, f in modules.items()}
    # Importing a submodule runs its parent packages first.
    for m in modules:
        if "." in m:
            graph[m].add(m.rpartition(".")[0])
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(graph[m]):
            visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
    assert "reformer_jax.cli" not in graph["reformer_jax.trainer"]
    assert graph["reformer_jax.train.__main__"] <= {
        "reformer_jax",
        "reformer_jax.cli",
        "reformer_jax.train",
    }


def test_only_the_command_line_imports_gin():
    library = sorted(set(_modules()) - TOP)
    code = (
        "import importlib, sys\n"
        f"for m in {library!r}:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m == 'gin' or m.startswith('gin.')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"gin imported below the CLI: {result.stdout}"
    assert "reformer_jax.trainer" in library and "reformer_jax.checkpoints" in library
    # Each gin-importing module is one of the command-line modules.
    for name, path in _modules().items():
        if "import gin" in open(path).read():
            assert name in TOP, name
