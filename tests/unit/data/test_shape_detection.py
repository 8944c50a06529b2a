"""A text file's shape is read from evidence: prose stays one text (raw), templated lines stay examples (lines).

python -m pytest tests/unit/data/test_shape_detection.py -q
"""

import re
from importlib import resources
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tuneforge.config import RunConfig
from tuneforge.data.examples import detect_text_shape, prepare_examples

SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"
CHEESE_INSTRUCTIONS = SHARED_DATA / "cheese_instructions.txt"
CHEESE_SANDWICHES = Path(str(resources.files("tuneforge") / "resources" / "cheese_sandwiches.txt"))
needs_shared_data = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data is not here")

# Notes as many users keep them: one sentence per line, no blank lines.
ESSAY = """The first thing to know about bread is that it is alive for a long time before it is baked.
Yeast eats the sugars in the flour and breathes out the gas that makes the dough rise.
A cold kitchen slows this down, which is why bakers in winter leave their dough overnight.
Salt does more than season the loaf.
It tightens the gluten, so the dough holds its shape in the oven.
Too much of it, though, and the yeast stops working altogether.
Most of the flavour comes from time rather than from any ingredient.
That is the whole secret of the slow loaves sold in good bakeries.
Anyone can learn it in a few weekends of patient practice.
"""


def shakespeare_one_sentence_per_line(speeches: int = 300) -> str:
    """Real prose, one sentence per line: tinyshakespeare's speeches joined, then cut at sentence ends."""
    blocks = SHAKESPEARE.read_text().split("\n\n")
    text = " ".join(" ".join(block.split("\n", 1)[1].split()) for block in blocks[:speeches] if "\n" in block)
    return "\n".join(s.strip() for s in re.findall(r"[^.!?]+[.!?]+", text)) + "\n"


def test_prose_one_sentence_per_line_is_one_text_and_the_reason_gives_the_counts():
    shape, reason = detect_text_shape(ESSAY)
    assert shape == "raw"
    assert reason.startswith("prose one sentence per line")
    assert "9 of 9 lines end a sentence" in reason and "0 share a common opening" in reason


@needs_shared_data
def test_real_prose_one_sentence_per_line_is_one_text():
    text = shakespeare_one_sentence_per_line()
    assert text.count("\n") > 300 and "\n\n" not in text
    shape, reason = detect_text_shape(text)
    assert shape == "raw", reason


@needs_shared_data
def test_tinyshakespeare_is_one_text_with_or_without_its_blank_lines():
    text = SHAKESPEARE.read_text()
    assert detect_text_shape(text)[0] == "raw"
    verse = "\n".join(line for line in text.split("\n") if line.strip())  # speakers' names, verse lines
    shape, reason = detect_text_shape(verse)
    assert shape == "raw", reason


@pytest.mark.parametrize("path", [CHEESE_INSTRUCTIONS, CHEESE_SANDWICHES], ids=["instructions", "sandwiches"])
def test_templated_lines_are_independent_examples(path):
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    shape, reason = detect_text_shape(path.read_text())
    assert shape == "lines"
    assert reason.startswith("one example per line: most lines repeat a template"), reason


def test_hard_wrapped_prose_is_one_text():
    words = ESSAY.split()
    wrapped = "\n".join(" ".join(words[i : i + 9]) for i in range(0, len(words), 9))  # lines cut mid-sentence
    shape, reason = detect_text_shape(wrapped)
    assert shape == "raw"
    assert reason.startswith("wrapped prose: lines break mid-phrase"), reason


def test_labelled_lines_are_examples_whatever_their_punctuation():
    text = "".join(f"Question: what is {a} plus {b}? Answer: {a + b}.\n" for a in range(4) for b in range(3))
    assert detect_text_shape(text)[0] == "lines"


def test_lines_that_end_sentences_but_start_lowercase_are_examples():
    items = [
        "toast the bread first.",
        "grate the cheese fine.",
        "melt butter in a hot pan.",
        "slice the tomato thin.",
        "press the sandwich flat.",
        "serve it warm with soup.",
    ]
    shape, reason = detect_text_shape("\n".join(items))
    assert shape == "lines", reason


def test_when_the_evidence_is_mixed_the_shape_that_keeps_context_is_chosen():
    mixed = "Some notes.\nmore notes here\nAnd then more\nfinal remark.\nanother one\nLast Line\n"
    shape, reason = detect_text_shape(mixed)
    assert shape == "raw"
    assert reason.startswith("unsure whether lines are examples or one text"), reason


def test_prepared_prose_is_trained_as_one_text_and_the_preview_states_why(tmp_path, tokenizer):
    path = tmp_path / "essay.txt"
    path.write_text(ESSAY)
    prepared = prepare_examples(path, tokenizer, RunConfig(cutoff_len=32, overlap_len=0), use_cache=False)
    assert prepared.shape == "raw"
    assert prepared.report["shape_reason"].startswith(
        "detected: prose one sentence per line: the lines run on as one text ("
    )
    eos_count = sum(ids.count(tokenizer.eos_token_id) for ids in (e["input_ids"] for e in prepared.train))
    assert eos_count <= 1  # sentences are not each closed by an end-of-sequence token
