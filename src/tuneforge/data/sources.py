"""Read training text from files, with errors that name the file, the byte and the fix.

    from tuneforge.data.sources import read_text
    text = read_text("../shared/data/cheese_instructions.txt")
"""

from __future__ import annotations

import gzip
from pathlib import Path

from tuneforge.errors import DataError


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The whole file as text (`.gz` is unpacked). Missing, empty or undecodable files raise DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file '{path}' does not exist; check the path given as data")
    if path.is_dir():
        raise DataError(f"data '{path}' is a folder; point data at a text file")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: byte 0x{raw[error.start]:02x} at offset {error.start} is not valid {encoding}; "
                        "pass the file's real encoding with --encoding (e.g. latin-1 or cp1252)") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")  # BOM and Windows line ends
    if not text.strip():
        raise DataError(f"data file '{path}' is empty; it needs at least one line of text to train on")
    return text
