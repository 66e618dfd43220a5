"""ir_jax: language models trained with instant rewards in JAX/Flax.

Import what you use: `ir_jax.rewards` (reward functions), `ir_jax.config`
(configs and their checks), `ir_jax.train` (the training loop); the layout
is in README.md and docs/training.md. Importing the package itself loads
nothing else, so configs stay cheap to load.
"""
