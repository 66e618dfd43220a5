"""Shared recursions, platform dispatch and Pallas kernels (TPU, GPU).

The floor below `ir_jax.rewards`: `recursions` holds the cell rules every
implementation uses, `dispatch` the one policy that picks XLA or a kernel,
`platform` which platform a trace is for. Nothing here imports rewards.
"""
