"""Data preparation: read files, clean, shape, split, tokenize once (cached), pack, preview.

    from tuneforge.data import prepare_examples
    prepared = prepare_examples("../shared/data/tinyshakespeare.txt", tokenizer, config)

Stages live in their own modules: sources (files), screening (kinds refused by name, placeholders, empty
turns), formats (format files, input/output), chat (messages, tool calls), chunking (raw text), cleaning
(filters, dedup), diversity (k-means), tokenization, packing, cache (Arrow), inspection (preview), and
preflight (every data setting checked before the model loads).
"""

from tuneforge.data.cache import load_preprocessed_data, save_preprocessed_data
from tuneforge.data.examples import prepare_examples, split_examples
from tuneforge.data.packing import pack_examples
from tuneforge.data.preflight import preflight
from tuneforge.data.prepared import PreparedData
from tuneforge.data.tokenization import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "PreparedData",
    "load_preprocessed_data",
    "pack_examples",
    "preflight",
    "prepare_examples",
    "save_preprocessed_data",
    "split_examples",
]
