"""The command-line jobs beside launch.py: each a small CLI over the playmate_jax package (see the README)."""
