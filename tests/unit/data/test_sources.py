"""Every source type read on small hand-written files, and each bad input refused with one clear sentence."""

import gzip
import json

import pytest

from tuneforge.data.sources import read_source
from tuneforge.errors import DataError


def test_json_list_jsonl_and_gz_give_the_same_records(tmp_path):
    records = [{"instruction": "Say hi", "output": "hi"}, {"instruction": "Say bye", "output": "bye"}]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress((tmp_path / "a.jsonl").read_bytes()))
    for name in ("a.json", "a.jsonl", "b.jsonl.gz"):
        source = read_source(tmp_path / name)
        assert source.kind == "records" and source.records == records


def test_csv_and_tsv_rows_become_records_and_a_missing_column_is_named(tmp_path):
    (tmp_path / "d.csv").write_text('title,body\nA,"first, with comma"\nB,second\n')
    (tmp_path / "d.tsv").write_text("title\tbody\nA\tfirst\n")
    assert read_source(tmp_path / "d.csv", text_column="body").records[0] == {
        "title": "A",
        "body": "first, with comma",
    }
    assert read_source(tmp_path / "d.tsv").records == [{"title": "A", "body": "first"}]
    with pytest.raises(DataError, match="column 'text' is not in .*d.csv; its columns are: body, title"):
        read_source(tmp_path / "d.csv", text_column="text")


def test_parquet_rows_become_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", "two"]}), tmp_path / "d.parquet")
    assert read_source(tmp_path / "d.parquet").records == [{"text": "one"}, {"text": "two"}]


def test_html_keeps_visible_paragraphs_and_drops_scripts_styles_and_markup(tmp_path):
    (tmp_path / "page.html").write_text(
        "<html><head><title>T</title><style>p {color: red}</style></head><body><h1>Welcome</h1>"
        "<script>var x = 1;</script><p>This is   a <b>bold</b>\n paragraph.</p><div><p>Second one.</p></div>"
        "<!-- hidden --></body></html>"
    )
    source = read_source(tmp_path / "page.html")
    assert source.kind == "text"
    assert source.text == "Welcome\n\nThis is a bold paragraph.\n\nSecond one.\n"


def test_sql_dump_gives_the_chosen_columns_strings(tmp_path):
    (tmp_path / "dump.sql").write_text(
        "CREATE TABLE `posts` (`id` int NOT NULL, `price` decimal(10,2), `body` text, PRIMARY KEY (`id`));\n"
        "INSERT INTO `posts` VALUES (1, 1.50, 'It''s a \\'test\\'\\nline two'),(2, -3, 'semi; colon');\n"
        "INSERT INTO users (id, name) VALUES (1, 'ann');\n"
    )
    rows = read_source(tmp_path / "dump.sql", sql_table="posts", sql_column="body").records
    assert rows == [{"text": "It's a 'test'\nline two"}, {"text": "semi; colon"}]
    with pytest.raises(
        DataError, match="no INSERT INTO table 'post' in .*; tables inserted into: posts, users"
    ):
        read_source(tmp_path / "dump.sql", sql_table="post", sql_column="body")
    with pytest.raises(DataError, match="has no column 'bdy'; its columns are: id, price, body"):
        read_source(tmp_path / "dump.sql", sql_table="posts", sql_column="bdy")


def test_folder_of_text_files_is_joined_with_hard_cuts(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n")
    (tmp_path / "a.txt").write_text("first file\n")
    (tmp_path / ".hidden.txt").write_text("skipped\n")
    source = read_source(tmp_path, hard_cut_string="\n\n\n")
    assert source.text == "first file\n\n\n\nsecond file\n" and len(source.files) == 2


def test_a_folders_files_of_other_suffixes_are_named_not_skipped_silently(tmp_path):
    (tmp_path / "a.txt").write_text("read\n")
    (tmp_path / "notes.rst").write_text("not read\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "scan.pdf").write_bytes(b"%PDF-1.4")
    with pytest.warns(UserWarning, match=r"2 file\(s\) not read.*: notes.rst, sub/scan.pdf \(rename a text"):
        assert read_source(tmp_path).files == [tmp_path / "a.txt"]
    (tmp_path / "a.txt").unlink()
    with pytest.raises(DataError, match=r"holds no data files \(.*\); it holds notes.rst, sub/scan.pdf$"):
        read_source(tmp_path)


def test_malformed_json_names_file_line_and_column(tmp_path):
    (tmp_path / "bad.json").write_text('[\n  {"a": "b"},\n  {"a": "c",}\n]')
    with pytest.raises(DataError, match=r"bad.json:3:13: malformed JSON"):
        read_source(tmp_path / "bad.json")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{"a": 2\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2:8: malformed JSON"):
        read_source(tmp_path / "bad.jsonl")


def test_empty_and_undecodable_files_are_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n \n")
    with pytest.raises(DataError, match="'.*empty.jsonl' is empty"):
        read_source(tmp_path / "empty.jsonl")
    (tmp_path / "latin.csv").write_bytes(b"text\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"byte 0xe9 at offset 8 is not valid utf-8; .*--encoding"):
        read_source(tmp_path / "latin.csv")
    assert read_source(tmp_path / "latin.csv", encoding="latin-1").records == [{"text": "café"}]


def test_a_mysqldump_sized_insert_is_read_not_refused_by_sqlparse(tmp_path):
    rows = ",".join(f"({i}, 'post {i}, with a comma')" for i in range(3000))  # one INSERT, ~15,000 tokens
    (tmp_path / "dump.sql").write_text(
        f"CREATE TABLE posts (id int, body text);\nINSERT INTO posts VALUES {rows};\n"
    )
    records = read_source(tmp_path / "dump.sql", sql_table="posts", sql_column="body").records
    assert len(records) == 3000 and records[-1] == {"text": "post 2999, with a comma"}


def test_html_table_cells_stay_apart_and_hidden_elements_are_not_text(tmp_path):
    (tmp_path / "t.html").write_text(
        "<table><tr><th>Name</th><th>Age</th></tr><tr><td>cell A</td><td>cell B</td></tr></table>"
        "<div hidden>not shown</div><p>shown</p>"
    )
    assert read_source(tmp_path / "t.html").text == "Name Age\n\ncell A cell B\n\nshown\n"


def test_a_csv_rows_extra_field_is_refused_not_read_as_an_index(tmp_path):
    (tmp_path / "shifted.csv").write_text("id,text\n1,hello,extra\n2,fine row\n")
    with pytest.raises(
        DataError, match="shifted.csv is not valid CSV: line 2 has 3 fields where the header has 2"
    ):
        read_source(tmp_path / "shifted.csv")
    (tmp_path / "blank_first.csv").write_text("\nid,text\n1,hello,extra\n")
    with pytest.raises(DataError, match="line 3 has 3 fields where the header has 2 \\(id, text\\)"):
        read_source(tmp_path / "blank_first.csv")


def test_sql_rows_without_a_value_are_skipped_with_a_warning(tmp_path):
    (tmp_path / "dump.sql").write_text("INSERT INTO posts (id, body) VALUES (1, 'kept'), (2, NULL);\n")
    with pytest.warns(UserWarning, match="1 rows of 'posts' have no value \\(NULL\\) in 'body'"):
        rows = read_source(tmp_path / "dump.sql", sql_table="posts", sql_column="body").records
    assert rows == [{"text": "kept"}]


def test_a_json_object_wraps_its_records_under_data_beside_metadata_lists(tmp_path):
    wrapped = {"version": "1", "data": [{"text": "a"}, {"text": "b"}], "tags": ["x", "y"]}
    (tmp_path / "wrapped.json").write_text(json.dumps(wrapped))
    assert read_source(tmp_path / "wrapped.json").records == [{"text": "a"}, {"text": "b"}]
    (tmp_path / "two.json").write_text(json.dumps({"left": [{"text": "a"}], "right": [{"text": "b"}]}))
    with pytest.raises(DataError, match="found an object with lists under left, right"):
        read_source(tmp_path / "two.json")
    (tmp_path / "splits.json").write_text(json.dumps({"train": [{"text": "a"}], "test": [{"text": "b"}]}))
    with pytest.raises(DataError, match="lists under train, test"):  # which? not silently train only
        read_source(tmp_path / "splits.json")


def test_preformatted_html_keeps_its_lines_and_indentation(tmp_path):
    (tmp_path / "code.html").write_text("<p>Example:</p><pre>def f():\n\n    return  1\n</pre>")
    assert read_source(tmp_path / "code.html").text == "Example:\n\ndef f():\n\n    return  1\n"
