"""Tokenize once: prepared datasets cached as Arrow under $TUNEFORGE_HOME/datasets/<fingerprint>.

    from tuneforge.data.cache import data_fingerprint, load_preprocessed_data, save_preprocessed_data
    save_preprocessed_data(prepared, "my-data.prepared")       # HappyTransformer's save_preprocessed_data
    prepared = load_preprocessed_data("my-data.prepared")       # ... and load_preprocessed_data

The fingerprint covers the bytes of every input file, the tokenizer (vocabulary, merges, special tokens, chat
template) and every setting that changes the result, so the same prepare twice is a hit and any change a miss.
Folders are written under a temporary name and renamed into place: an interrupted prepare leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import cast

from tuneforge.config import field_help
from tuneforge.data.prepared import ExampleTable, PreparedData
from tuneforge.errors import DataError

PIPELINE_VERSION = "4"  # bump when a change to the code changes prepared output for the same inputs
# Every setting of group "data" enters the fingerprint except these, which cannot change prepared examples:
NOT_FINGERPRINTED = {
    "data": "the files are hashed by name and bytes instead of by path",
    "validation_data": "the same: its files are hashed by name and bytes",
    "num_proc": "worker processes give the same examples, only faster",
    "save_removed": "only where removed records are written, not which",
}
# Settings of other groups that the data code reads.
ALSO_FINGERPRINTED = ("seed",)  # the validation split and diversity clustering draw from it
MARKER = "meta.json"
log = logging.getLogger(__name__)


def datasets_home() -> Path:
    from tuneforge.paths import tuneforge_home

    return tuneforge_home() / "datasets"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything about the tokenizer that changes token ids (~30 ms for a 49k vocabulary)."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else repr(tokenizer).encode())
    for attribute in ("chat_template", "eos_token", "bos_token", "pad_token"):
        digest.update(repr(getattr(tokenizer, attribute, None)).encode())
    return digest.hexdigest()


def file_fingerprint(files: list[Path], digest=None):
    """Update `digest` with the name and bytes of each file, in order."""
    digest = digest or hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        digest.update(b"\0")
    return digest


def fingerprint_keys() -> list[str]:
    """The settings that change prepared data: all of group "data" (a new one joins unasked), and seed."""
    data_keys = [name for name, f in field_help().items() if f.metadata.get("group") == "data"]
    return [key for key in data_keys if key not in NOT_FINGERPRINTED] + list(ALSO_FINGERPRINTED)


def data_fingerprint(files: list[Path], validation_files: list[Path], tokenizer, config) -> str:
    settings = {key: getattr(config, key, None) for key in fingerprint_keys()}
    digest = hashlib.sha256(f"tuneforge-data-{PIPELINE_VERSION}".encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    file_fingerprint(files, digest)
    digest.update(b"--validation--")
    file_fingerprint(validation_files, digest)
    format_file = Path(config.format_file).expanduser() if getattr(config, "format_file", None) else None
    if format_file is not None and format_file.is_file():  # its templates render the examples: edits count
        digest.update(b"--format--")
        file_fingerprint([format_file], digest)
    return digest.hexdigest()[:24]


def save_prepared(prepared: PreparedData, target: Path, removed: list[dict] | None = None) -> Path:
    """Write train/validation Arrow datasets, meta.json and removed.jsonl to `target`, atomically."""
    from tuneforge.paths import write_folder_atomically

    def write(folder: Path) -> None:
        for name in ("train", "validation"):
            if len(getattr(prepared, name)):  # datasets cannot reload a zero-row dataset; absent means empty
                _as_dataset(getattr(prepared, name)).save_to_disk(str(folder / name))
        with (folder / "removed.jsonl").open("w", encoding="utf-8") as handle:
            for row in removed or []:
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        meta = {"shape": prepared.shape, "counts": prepared.counts, "report": prepared.report}
        (folder / MARKER).write_text(json.dumps(meta, indent=1, ensure_ascii=False, default=str))

    write_folder_atomically(target, write, marker=MARKER)
    return target


def load_prepared(folder: Path) -> PreparedData:
    """Open a prepared folder (memory-mapped: well under a second whatever its size)."""
    from datasets import load_from_disk

    meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    train, validation = (
        ExampleTable(load_from_disk(str(folder / name))) if (folder / name).is_dir() else []
        for name in ("train", "validation")
    )
    return PreparedData(meta["shape"], train, validation, meta["counts"], meta["report"], folder, True)


def load_cached(folder: Path) -> PreparedData | None:
    """The cached data in `folder`, or None when there is none or it cannot be read (it is then removed)."""
    if not (folder / MARKER).is_file():
        return None
    try:
        return load_prepared(folder)
    except Exception as error:  # a cache written by an older or interrupted version: rebuild, don't fail
        log.warning("ignoring unreadable cached data in %s (%s); preparing again", folder, error)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def copy_removed(folder: Path, destination: str | Path) -> Path:
    """Copy the cached removed.jsonl to `destination` (write then rename, so it is never half written)."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(folder / "removed.jsonl", temporary)
    temporary.replace(destination)
    return destination


def save_preprocessed_data(prepared: PreparedData, path: str | Path) -> Path:
    """Keep a prepared dataset at `path` (HappyTransformer's save_preprocessed_data), e.g. to share or archive."""
    path = Path(path)
    if path.exists():
        raise DataError(f"'{path}' already exists; choose a new path for the preprocessed data")
    if prepared.cache_dir is not None and (prepared.cache_dir / MARKER).is_file():
        from tuneforge.paths import write_folder_atomically

        return write_folder_atomically(
            path,
            lambda tmp: shutil.copytree(cast(Path, prepared.cache_dir), tmp, dirs_exist_ok=True),
            marker=MARKER,
        )
    return save_prepared(prepared, path)


def load_preprocessed_data(path: str | Path) -> PreparedData:
    """Open data written by save_preprocessed_data (HappyTransformer's load_preprocessed_data)."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise DataError(
            f"'{path}' is not preprocessed tuneforge data (no {MARKER}); write it with "
            "save_preprocessed_data or `tuneforge data prepare --save PATH`"
        )
    return load_prepared(path)


def _as_dataset(rows):
    from datasets import Dataset

    rows = getattr(rows, "rows", rows)
    if isinstance(rows, Dataset):
        return rows
    columns = [c for c in ("input_ids", "labels", "position_ids") if rows and c in rows[0]] or [
        "input_ids",
        "labels",
    ]
    return Dataset.from_dict({c: [row[c] for row in rows] for c in columns})
