"""Pull the values of one column of one table out of a `.sql` dump's INSERT statements (seed 002 uses sqlparse).

    from tuneforge.data.sql import sql_rows
    rows = sql_rows(Path("dump.sql"), Path("dump.sql").read_text(), table="posts", column="body")
    # [{"text": "first post"}, {"text": "second post"}]

sqlparse does the lexing (quoted strings, comments, escapes); we walk its tokens. Column names come from the
INSERT's column list or, when it has none, from the table's CREATE TABLE statement.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from tuneforge.errors import DataError

_CONSTRAINTS = {"PRIMARY", "KEY", "UNIQUE", "CONSTRAINT", "INDEX", "FOREIGN", "CHECK", "FULLTEXT", "SPATIAL"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"', "Z": "\x1a"}


def sql_rows(path: Path, text: str, table: str | None, column: str | None) -> list[dict]:
    """One record {"text": value} per row inserted into `table`, for the string or number in `column`."""
    inserts, columns_of = _parse(text)
    tables = sorted({name for name, _, _ in inserts})
    if not tables:
        raise DataError(f"{path} holds no INSERT statements with values to train on")
    if table is None:
        if len(tables) > 1:
            raise DataError(
                f"{path} inserts into several tables ({', '.join(tables)}); choose one with --sql_table"
            )
        table = tables[0]
    if table not in tables:
        raise DataError(
            f"no INSERT INTO table '{table}' in {path}; tables inserted into: {', '.join(tables)}"
        )
    records: list[dict] = []
    skipped = 0
    for name, columns, rows in inserts:
        if name != table:
            continue
        columns = columns or columns_of.get(table)
        if columns is None:
            raise DataError(
                f"the INSERTs into '{table}' in {path} name no columns and no CREATE TABLE defines "
                "them; add a column list to the INSERT statements"
            )
        if column is None:
            if len(columns) > 1:
                raise DataError(
                    f"table '{table}' in {path} has columns {', '.join(columns)}; choose one with "
                    "--sql_column"
                )
            column = columns[0]
        if column not in columns:
            raise DataError(
                f"table '{table}' in {path} has no column '{column}'; its columns are: {', '.join(columns)}"
            )
        position = columns.index(column)
        values = [row[position] if position < len(row) else None for row in rows]
        records.extend({"text": value} for value in values if value is not None)
        skipped += values.count(None)
    if skipped:
        warnings.warn(
            f"{path}: {skipped} rows of '{table}' have no value (NULL) in '{column}'; they are skipped",
            stacklevel=2,
        )
    return records


def _parse(text: str) -> tuple[list[tuple[str, list[str] | None, list[list]]], dict[str, list[str]]]:
    """(table, column names or None, rows) per INSERT, and column names per CREATE TABLE."""
    from sqlparse import tokens as T
    from sqlparse.engine import FilterStack

    inserts, columns_of = [], {}
    # statements split but not grouped: we walk flat tokens anyway, and sqlparse.parse's grouping refuses a
    # statement of over 10,000 tokens (one mysqldump INSERT of a few thousand rows) with SQLParseError
    for statement in FilterStack().run(text):
        kind = statement.get_type()
        if kind == "CREATE":
            match = re.search(
                r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([^\s(]+)\s*\((.*)\)",
                str(statement),
                re.IGNORECASE | re.DOTALL,
            )
            if match:
                columns_of[_name(match.group(1))] = _create_columns(match.group(2))
            continue
        if kind != "INSERT":
            continue
        tokens = [
            t
            for t in statement.flatten()
            if not t.is_whitespace
            and t.ttype not in T.Comment
            and t.ttype not in (T.Comment.Single, T.Comment.Multiline)
        ]
        upper = [t.normalized.upper() if t.ttype in T.Keyword or t.ttype in T.DML else None for t in tokens]
        try:
            start = upper.index("INTO") + 1
            values_at = upper.index("VALUES")
        except ValueError:
            continue  # INSERT ... SELECT: no literal values
        head = tokens[start:values_at]
        name_end = next((i for i, t in enumerate(head) if t.value == "("), len(head))
        table = _name("".join(t.value for t in head[:name_end]))
        columns = [_name(t.value) for t in head[name_end:] if t.value not in "(),"] or None
        inserts.append((table, columns, _rows(tokens[values_at + 1 :])))
    return inserts, columns_of


def _rows(tokens) -> list[list]:
    """The value tuples after VALUES: strings unquoted, numbers as text, NULL as None."""
    from sqlparse import tokens as T

    rows: list[list[str | None]] = []
    row: list[str | None] | None = None
    depth, sign = 0, ""
    for token in tokens:
        value = token.value
        if value == "(":
            depth += 1
            if depth == 1:
                row = []
        elif value == ")":
            depth -= 1
            if depth == 0 and row is not None:
                rows.append(row)
                row = None
        elif row is None or depth != 1 or value == ",":
            continue
        elif value == "-" and token.ttype in T.Operator:
            sign = "-"
        elif token.ttype in T.String:
            row.append(_unquote(value))
        elif token.ttype in T.Number:
            row.append(sign + value)
            sign = ""
        elif value.upper() == "NULL":
            row.append(None)
        else:
            row.append(value)
    return rows


def _unquote(literal: str) -> str:
    quote, body = literal[0], literal[1:-1]
    body = body.replace(quote * 2, quote)  # SQL standard: '' inside '...'
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)  # MySQL backslash escapes


def _name(identifier: str) -> str:
    """`db`.`table` -> table; strips quotes of any dialect."""
    return identifier.strip().split(".")[-1].strip('`"[]')


def _create_columns(body: str) -> list[str]:
    """Column names from the body of CREATE TABLE (...), skipping key and constraint lines."""
    parts, depth, current = [], 0, ""
    for ch in body:  # split on top-level commas only: types like DECIMAL(10,2) hold commas
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    names = []
    for part in parts:
        words = part.split()
        if words and words[0].upper().strip('`"') not in _CONSTRAINTS:
            names.append(_name(words[0]))
    return names
