"""pilot: a pilot-job agent that claims tokens from a pool, runs their tasks and reports back."""

__version__ = "0.1.0"
