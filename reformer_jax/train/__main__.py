"""`python -m reformer_jax.train`: the command line (reformer_jax/cli.py) around train()."""

from reformer_jax import cli

if __name__ == "__main__":
    cli.run_main(cli.train_main)
