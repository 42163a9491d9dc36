"""The experiment configs, one file per objective or evaluation.

Each file's `get_config(arg)` gives the config that
`--config=configs/<name>.py:<arg>` hands to `python -m sslprune_jax.main`.
They live in the package so that an installed copy (pip install, without a
checkout) has them; the checkout's `configs/` links here.
"""
