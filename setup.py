"""Which packages the distribution holds; everything else is in setup.cfg.

Every package under reformer_jax/ is found, not listed, so a new subpackage
cannot be left out of the wheel (tests/test_packaging.py compares the wheel
with the source tree). The one package found elsewhere is reformer_jax.configs:
its files live at configs/ (setup.cfg's package_dir), where
`--gin_file=configs/x.gin` reads them from the source tree, and setup.cfg's
`packages = find:` cannot name a package outside the directory it searches.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["reformer_jax", "reformer_jax.*"]), "reformer_jax.configs"])
