"""`python -m reformer_jax.train` (this package's __main__): the trainer's command line.

A package, not a module, so that running it does not import the trainer a
second time as `__main__`; the trainer is reformer_jax/trainer.py and the
command line reformer_jax/cli.py.
"""
