"""What the distribution holds; its metadata and dependencies are in setup.cfg.

Every package under reformer_jax/ is found, not listed, so a new subpackage
cannot be left out of the wheel (tests/test_install.py compares the wheel with
the source tree). The one package that lives elsewhere is reformer_jax.configs:
its files are configs/ at the top of the checkout, where
`--gin_file=configs/x.gin` reads them, and an installed package finds them
inside itself (reformer_jax/cli.py resolves configs/<name>.gin there).
setup.cfg's `packages = find:` cannot name a package outside the directory it
searches, so discovery and that one mapping are both written here.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["reformer_jax", "reformer_jax.*"]), "reformer_jax.configs"],
    package_dir={"reformer_jax.configs": "configs"},
    package_data={"reformer_jax.configs": ["*.gin"]},
)
