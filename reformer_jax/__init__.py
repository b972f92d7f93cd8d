"""reformer_jax: the Reformer in JAX."""
