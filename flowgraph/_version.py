"""The version of flowgraph (launcher and workers must have the same)."""

__version__ = "0.1.0"
