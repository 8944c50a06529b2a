"""Read training data from files and folders, with errors that name the file, the place and the fix.

    from tuneforge.data.sources import read_source
    source = read_source("../shared/data/roleplay_alpaca.json")
    print(source.kind, len(source.records), source.records[0].keys())

Plain text (`.txt`, `.md`, unknown suffixes) and HTML (visible text only) give one `text`; everything else gives
`records` (one dict per JSON object, JSONL line, CSV/TSV/Parquet row, or SQL INSERT row; a JSON file holding
one object is one record). `.gz` of any of them is unpacked first; a folder is read file by file (text files
are joined with the hard cut string so text from different files never lands in one chunk). Binary content is
refused whatever the encoding (see check_printable).
"""

from __future__ import annotations

import gzip
import io
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.errors import DataError

# Control characters other than tab, newline, vertical tab, form feed and carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_C0_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")
TEXT_SUFFIXES = {".txt", ".md", ".text", ".html", ".htm"}
RECORD_SUFFIXES = {".json", ".jsonl", ".csv", ".tsv", ".parquet", ".sql"}
# Keys under which a JSON object wraps its list of records (HF datasets' exports, SQuAD-style files).
WRAPPER_KEYS = ("data", "records", "examples", "rows", "train", "items")
# Keys that make a JSON object a record of its own rather than a {"data": [...]} wrapper around records.
RECORD_KEYS = {
    "messages",
    "conversations",
    "instruction",
    "input",
    "output",
    "text",
    "prompt",
    "completion",
    "question",
    "answer",
    "response",
    "chosen",
    "rejected",
    "system",
    "tools",
}
# Elements whose content is never shown in a browser, and elements that start a new paragraph.
_INVISIBLE = ["script", "style", "noscript", "template", "head", "svg", "iframe"]
_BLOCKS = [
    "p",
    "div",
    "section",
    "article",
    "header",
    "footer",
    "main",
    "aside",
    "nav",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "li",
    "ul",
    "ol",
    "table",
    "tr",
    "blockquote",
    "pre",
    "title",
    "dd",
    "dt",
    "figcaption",
]


@dataclass
class Source:
    """What was read: one text (kind 'text') or a list of records (kind 'records'), and from which files."""

    kind: str
    files: list[Path]
    text: str = ""
    records: list[dict] = field(default_factory=list)


def data_files(path: str | Path, key: str = "data") -> list[Path]:
    """The file itself, or every readable file in a folder (recursively, sorted; hidden files skipped, files of
    other suffixes skipped with a warning that names them)."""
    path = Path(path)
    if not path.exists():
        where = (
            "" if path.is_absolute() else f" (a relative path is read from the current folder, {Path.cwd()})"
        )
        raise DataError(f"data file '{path}' does not exist{where}; check the path given as {key}")
    if path.is_file():
        return [path]
    visible = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    files: list[Path] = []
    other: list[Path] = []
    for p in visible:
        (files if inner_suffix(p) in TEXT_SUFFIXES | RECORD_SUFFIXES else other).append(p)
    readable = " ".join(sorted(TEXT_SUFFIXES | RECORD_SUFFIXES)) + ", or .gz of one"
    named = ", ".join(p.relative_to(path).as_posix() for p in other[:5]) + (
        f" and {len(other) - 5} more" if len(other) > 5 else ""
    )
    if not files:
        found = f"; it holds {named}" if other else " (it is empty, hidden files aside)"
        raise DataError(f"data folder '{path}' holds no data files ({readable}){found}")
    if other:  # never silently: a folder of notes may hold text under a suffix tuneforge does not read
        warnings.warn(
            f"data folder '{path}': {len(other)} file(s) not read, their suffix is not one of {readable}: "
            f"{named} (rename a text file to .txt to train on it)",
            stacklevel=1,  # this line: shown once per process however many steps list the folder
        )
    return files


def read_source(
    path: str | Path,
    encoding: str = "utf-8",
    text_column: str | None = None,
    sql_table: str | None = None,
    sql_column: str | None = None,
    hard_cut_string: str = "\n\n\n",
) -> Source:
    """Read a file or folder into a Source; mixing text files and record files in one folder is refused."""
    files = data_files(path)
    texts: list[str] = []
    records: list[dict] = []
    for file in files:
        suffix = inner_suffix(file)
        if suffix in RECORD_SUFFIXES:
            records.extend(_read_records(file, suffix, encoding, text_column, sql_table, sql_column))
        else:
            text = _decode(file, _read_bytes(file), encoding)
            texts.append(html_text(text) if suffix in (".html", ".htm") else text)
    if texts and records:
        raise DataError(
            f"data folder '{path}' mixes plain-text files and record files (JSON/CSV/...); "
            "put them in separate folders"
        )
    if texts:
        return Source("text", files, text=(hard_cut_string or "\n\n").join(texts))
    return Source("records", files, records=records)


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The whole file (or a folder's files joined) as text; missing, empty or undecodable data raises DataError."""
    return "\n\n\n".join(_decode(file, _read_bytes(file), encoding) for file in data_files(path))


def inner_suffix(path: Path) -> str:
    """'.json' for both data.json and data.json.gz."""
    suffix = path.suffix.lower()
    return Path(path.stem).suffix.lower() if suffix == ".gz" else suffix


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"{path} is not a valid gzip file ({error})") from None
    if not raw.strip():
        raise DataError(f"data file '{path}' is empty; it needs at least one line of text")
    return raw


def other_encodings(encoding: str) -> str:
    """Encodings to suggest when `encoding` failed: the common ones it is not."""
    import codecs

    tried = codecs.lookup(encoding).name  # a known codec: it decoded up to the bad byte
    others = [e for e in ("utf-8", "latin-1", "cp1252", "utf-16") if codecs.lookup(e).name != tried]
    return "e.g. " + ", ".join(others[:3])


def _decode(path: Path, raw: bytes, encoding: str) -> str:
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        refuse_utf16_mark(path, raw)  # its NULs are no binary: say which encoding it is
        check_undecodable_bytes(path, raw)  # binary in any encoding: not "pass --encoding"
        raise DataError(
            f"{path}: byte 0x{raw[error.start]:02x} at offset {error.start} is not valid {encoding}; "
            f"pass the file's real encoding with --encoding ({other_encodings(encoding)})"
        ) from None
    except LookupError:
        raise DataError(
            f"unknown encoding '{encoding}'; use a Python codec name such as utf-8 or latin-1"
        ) from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")  # BOM and Windows line ends
    if not text.strip():
        raise DataError(f"data file '{path}' is empty; it needs at least one line of text")
    check_printable(path, text)
    return text


def refuse_utf16_mark(path: Path, raw: bytes) -> None:
    """DataError naming UTF-16 when the bytes start with its byte-order mark (read in another encoding)."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(
            f"{path} is UTF-16 text (it starts with that byte-order mark); pass --encoding utf-16"
        )


def check_undecodable_bytes(path: Path, raw: bytes) -> None:
    """For bytes the chosen encoding could not decode: DataError when they are binary in any encoding (NUL or
    C0 control bytes), so the advice is not "pass --encoding". C1 bytes (0x80-0x9f) are left out: they fill
    UTF-8 text read as latin-1."""
    check_printable(path, raw[: 1 << 20].decode("latin-1"), _C0_CONTROL)


def check_printable(path: Path, text: str, control: re.Pattern | None = None) -> None:
    """DataError for binary content: NUL bytes, or over 1% control characters (what any 8-bit codec gives)."""
    controls = len((control or _CONTROL).findall(text, 0, 1 << 20))  # the first million characters tell
    sample = min(len(text), 1 << 20)
    if "\x00" in text[:sample] or controls > 0.01 * sample:
        raise DataError(
            f"data file '{path}' holds binary data, not text ({controls:,} of its first {sample:,} "
            "characters are control characters); give a text, JSON, CSV or Parquet file"
        )


def html_text(html: str) -> str:
    """The visible text of an HTML page: scripts, styles and markup dropped, one paragraph per block element."""
    from bs4 import BeautifulSoup, Comment

    soup = BeautifulSoup(html, "html.parser")
    for element in soup(_INVISIBLE):
        element.decompose()
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        comment.extract()
    # Markers, not newlines: newlines in HTML source are plain whitespace, while <br> and blocks break lines.
    for br in soup.find_all("br"):
        br.replace_with("\x00")
    for block in soup.find_all(_BLOCKS):
        block.insert_before("\x01")
        block.insert_after("\x01")
    for cell in soup.find_all(["td", "th"]):  # a table row's cells stay one line, apart
        cell.insert_after(" ")
    for hidden in soup.find_all(hidden=True):  # hidden: never shown, like a script
        hidden.decompose()
    for pre in soup.find_all("pre"):  # preformatted (code): its line breaks and indentation are the text
        kept = "\x00".join(
            line or "\x02" for line in pre.get_text().strip("\n").split("\n")
        )  # blank lines too
        pre.string = kept.replace(" ", "\x02").replace("\t", "\x03")
    paragraphs = []
    for paragraph in soup.get_text().split("\x01"):
        lines = [" ".join(line.split()) for line in paragraph.split("\x00")]
        lines = [line.replace("\x02", " ").replace("\x03", "\t").rstrip() for line in lines if line]
        if any(lines):
            paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs) + "\n"


def _read_records(
    path: Path,
    suffix: str,
    encoding: str,
    text_column: str | None,
    sql_table: str | None,
    sql_column: str | None,
) -> list[dict]:
    raw = _read_bytes(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            records = pq.read_table(io.BytesIO(raw)).to_pylist()
        except Exception as error:  # pyarrow raises several types for a broken file
            raise DataError(f"{path} is not a readable Parquet file ({error})") from None
    elif suffix == ".sql":
        from tuneforge.data.sql import sql_rows

        return sql_rows(path, _decode(path, raw, encoding), sql_table, sql_column)
    else:
        text = _decode(path, raw, encoding)
        if suffix == ".json":
            records = _json_records(path, text)
        elif suffix == ".jsonl":
            records = [
                _json_value(path, line, number)
                for number, line in enumerate(text.split("\n"), 1)
                if line.strip()
            ]
        else:
            records = _csv_records(path, text, "\t" if suffix == ".tsv" else ",")
    records = [
        r if isinstance(r, dict) else {"text": r} if isinstance(r, str) else _not_a_record(path, r)
        for r in records
    ]
    if not records:
        raise DataError(f"data file '{path}' holds no records")
    if text_column is not None and suffix != ".sql" and not any(text_column in r for r in records):
        keys = sorted({k for r in records[:100] for k in r})
        raise DataError(f"column '{text_column}' is not in {path}; its columns are: {', '.join(keys)}")
    return records


def _not_a_record(path: Path, value) -> dict:
    raise DataError(
        f"{path} must hold objects (records) or strings, found {type(value).__name__}: "
        f"{json.dumps(value)[:60]}"
    )


def _json_records(path: Path, text: str) -> list:
    data = _json_value(path, text, 1)
    if isinstance(data, dict) and RECORD_KEYS & set(data):  # one record (a conversation, say), not a wrapper
        return [data]
    if isinstance(data, dict):  # {"data": [...]} style wrappers: take the one list inside
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        named = [k for k in WRAPPER_KEYS if isinstance(data.get(k), list)]  # beside metadata lists (tags)
        of_records = [k for k, v in lists.items() if v and all(isinstance(r, dict) for r in v)]
        if len(lists) != 1 and (len(named) != 1 or of_records not in ([], named)):  # train + test: which?
            found = f"lists under {', '.join(lists)}" if lists else f"keys {', '.join(list(data)[:8])}"
            raise DataError(
                f'{path} must be a JSON list of records, e.g. [{{"instruction": ..., '
                f'"output": ...}}], or an object holding one under "data"; found an object with {found}'
            )
        data = next(iter(lists.values())) if len(lists) == 1 else data[named[0]]
    if not isinstance(data, list):
        raise DataError(f"{path} must be a JSON list of records; found {type(data).__name__}")
    return data


def _json_value(path: Path, text: str, first_line: int):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}:{first_line + error.lineno - 1}:{error.colno}: malformed JSON: {error.msg}"
        ) from None


def _csv_records(path: Path, text: str, separator: str) -> list[dict]:
    import pandas as pd

    kind = "TSV" if separator == chr(9) else "CSV"
    try:
        with warnings.catch_warnings():
            # index_col=False: pandas would read a first row with an extra field as an index, shifting every
            # column; with it, pandas warns and drops the field, which we refuse instead
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(text), sep=separator, dtype=str, keep_default_na=False, index_col=False
            )
    except pd.errors.ParserWarning:
        raise DataError(f"{path} is not valid {kind}: {_wider_row(text, separator)}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path} is not valid {kind}: {str(error).strip()}") from None
    return frame.to_dict("records")


def _wider_row(text: str, separator: str) -> str:
    import csv

    reader = csv.reader(io.StringIO(text), delimiter=separator)
    rows = (row for row in reader if row)  # pandas skips blank lines
    header = next(rows, [])
    for row in rows:
        if len(row) > len(header):
            return (
                f"line {reader.line_num} has {len(row)} fields where the header has {len(header)} "
                f"({', '.join(header)}); quote a field that holds the separator"
            )
    return "a row has more fields than the header"
