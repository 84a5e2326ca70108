"""Checkpoints: what is stored, how it is stored, how a stored one serves a (maybe rescaled) topology."""
