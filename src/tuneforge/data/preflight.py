"""Check every data setting that can be checked without the model, so a mistake stops a run before it loads.

    from tuneforge.data import preflight
    preflight(config)      # DataError / ConfigError in one sentence, or None when the data settings are usable

It reads no more than the head of each file: the files exist and hold text in the given encoding (not binary),
the format file exists (a path or a shipped name) and is well formed, the validation data exists, the
patterns compile, and settings that need each other are given together. The full read happens when the data is
prepared; whatever preflight passes may still be refused there with the record that is wrong.
"""

from __future__ import annotations

import codecs
import gzip
import re
from pathlib import Path

from tuneforge.config import shown_format
from tuneforge.data.cache import MARKER
from tuneforge.data.formats import load_format
from tuneforge.data.sources import (
    TEXT_SUFFIXES,
    check_printable,
    check_undecodable_bytes,
    data_files,
    inner_suffix,
    other_encodings,
    refuse_utf16_mark,
)
from tuneforge.errors import ConfigError, DataError

HEAD_BYTES = 1 << 16  # enough to tell text from binary and to find a wrong encoding near the start
RECORD_FORMATS = ("text", "formatted", "input_output", "chat")


def preflight(config) -> None:
    """Raise DataError or ConfigError for the first data setting that cannot work; see the module docstring."""
    if not config.data:
        raise ConfigError("no training data given; pass a file or folder as data (e.g. --data train.jsonl)")
    try:
        codecs.lookup(config.encoding)
    except LookupError:
        raise DataError(
            f"unknown encoding '{config.encoding}'; use a Python codec name such as utf-8 or latin-1"
        ) from None
    for name, path in (("data", config.data), ("validation_data", config.validation_data)):
        if path and not (Path(path) / MARKER).is_file():  # a save_preprocessed_data folder is used as it is
            files = data_files(path, name)
            for file in files:
                check_file_head(file, config.encoding)
            if config.format in RECORD_FORMATS and all(inner_suffix(f) in TEXT_SUFFIXES for f in files):
                raise DataError(
                    f"{shown_format(config)} reads records (JSON, JSONL, CSV, Parquet), but {name} "
                    f"'{path}' is plain text; use format raw or lines"
                )
    if config.format_file or config.format == "formatted":
        load_format(config.format_file)
    for pattern in config.filter_patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(
                f"filter pattern '{pattern}' is not a valid regular expression: {error}"
            ) from None
    if (config.diversity_subset or config.max_per_cluster) and not config.diversity_clusters:
        raise ConfigError(
            "diversity_subset and max_per_cluster need diversity_clusters (how many clusters to form)"
        )
    placeholders = getattr(config, "placeholders", None)
    if placeholders is not None and (
        not isinstance(placeholders, dict) or not all(isinstance(v, str) for v in placeholders.values())
    ):
        raise ConfigError(
            'placeholders must map names to strings, e.g. {"name": "Ada", "author": "Forge Labs"}'
        )


def check_file_head(file: Path, encoding: str) -> None:
    """DataError when the file is empty, not valid `encoding` near its start, or binary."""
    if inner_suffix(file) == ".parquet":
        if file.stat().st_size == 0:
            raise DataError(f"data file '{file}' is empty; it needs at least one line of text")
        return  # binary by design; pyarrow checks it when it is read
    try:
        if file.suffix.lower() == ".gz":
            with gzip.open(file, "rb") as handle:
                head = handle.read(HEAD_BYTES)
        else:
            with file.open("rb") as handle:
                head = handle.read(HEAD_BYTES)
    except (OSError, EOFError) as error:
        raise DataError(f"{file} cannot be read ({error})") from None
    if not head.strip():
        raise DataError(f"data file '{file}' is empty; it needs at least one line of text")
    utf16 = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))  # wide already: marks are theirs
    if not utf16:  # before the NUL count: the mark says it all
        refuse_utf16_mark(file, head)
    wide = None if utf16 else _utf16_without_mark(head)
    if wide:  # ASCII in UTF-16 decodes as valid UTF-8 full of NUL bytes: it would be called binary
        raise DataError(f"{file} looks like UTF-16 text without a byte-order mark; pass --encoding {wide}")
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        text = decoder.decode(head, final=len(head) < HEAD_BYTES)  # a character cut at the end is no error
    except UnicodeDecodeError as error:
        check_undecodable_bytes(file, head)  # binary in any encoding: say so, not "pass --encoding"
        raise DataError(
            f"{file}: byte 0x{head[error.start]:02x} at offset {error.start} is not valid {encoding}; "
            f"pass the file's real encoding with --encoding ({other_encodings(encoding)})"
        ) from None
    check_printable(file, text)


def _utf16_without_mark(head: bytes) -> str | None:
    """utf-16-le/-be when every other byte is NUL (ASCII text in UTF-16), else None."""
    even, odd = head[0::2], head[1::2]
    if len(head) >= 16 and odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if len(head) >= 16 and even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None
