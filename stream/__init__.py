"""socialstream: streaming multi-person conversation understanding."""

__version__ = "0.1.0"
