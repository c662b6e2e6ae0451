"""An OpenAI-compatible Chat Completions server for open-weight models."""

__version__ = "0.1.0"
