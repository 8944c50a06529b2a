"""Data preparation: read files, shape them into examples, tokenize, split (see each module's docstring)."""

from tuneforge.data.examples import IGNORE_INDEX, PreparedData, prepare_examples

__all__ = ["IGNORE_INDEX", "PreparedData", "prepare_examples"]
