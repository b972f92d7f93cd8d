"""The shipped gin configs, installed as the package `reformer_jax.configs` (see setup.cfg)."""
