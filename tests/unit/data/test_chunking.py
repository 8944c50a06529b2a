"""Raw-text chunking rules pinned on hand-worked examples with a one-character-per-token tokenizer."""

import pytest

from tuneforge.data.chunking import chunk_raw_text


class CharTokenizer:
    """Each character is one token whose id is its code point: chunk boundaries can be worked by hand."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        return {"input_ids": [ord(c) for c in text], "offset_mapping": [(i, i + 1) for i in range(len(text))]}


def texts(chunks):
    return ["".join(chr(t) if t else "<eos>" for t in chunk) for chunk in chunks]


def test_chunks_hold_cutoff_tokens_and_the_tail_is_kept():
    chunks, stats = chunk_raw_text("abcdefghij", CharTokenizer(), cutoff_len=4)
    assert texts(chunks) == ["abcd", "efgh", "ij"]
    assert stats.chunks == 3 and stats.tokens == 10


def test_neighbouring_chunks_share_overlap_tokens():
    chunks, _ = chunk_raw_text("abcdefghij", CharTokenizer(), cutoff_len=4, overlap_len=2)
    assert texts(chunks) == ["abcd", "cdef", "efgh", "ghij"]


def test_cut_moves_back_to_a_newline_within_favor_length():
    text = "abc\ndefghij"
    # without newline favouring: a plain cut after 6 tokens
    assert texts(chunk_raw_text(text, CharTokenizer(), cutoff_len=6)[0]) == ["abc\nde", "fghij"]
    # the newline is 2 characters before the cut: the chunk ends on it
    chunks, stats = chunk_raw_text(text, CharTokenizer(), cutoff_len=6, newline_favor_len=2)
    assert texts(chunks) == ["abc\n", "defghi", "j"]
    assert stats.newline_cuts == 1


def test_newline_further_than_favor_length_is_ignored():
    chunks, _ = chunk_raw_text("abc\ndefghij", CharTokenizer(), cutoff_len=6, newline_favor_len=1)
    assert texts(chunks) == ["abc\nde", "fghij"]


def test_no_chunk_spans_or_contains_the_hard_cut_string():
    text = "one two\n\n\nthree four five"
    chunks, stats = chunk_raw_text(text, CharTokenizer(), cutoff_len=8, hard_cut_string="\n\n\n")
    assert texts(chunks) == ["one two", "three fo", "ur five"]
    assert all("\n\n\n" not in chunk for chunk in texts(chunks))
    assert stats.sections == 2


def test_empty_sections_between_hard_cuts_are_counted_not_trained():
    chunks, stats = chunk_raw_text("ab\n\n\n \n\n\ncd", CharTokenizer(), cutoff_len=8)
    assert texts(chunks) == ["ab", "cd"] and stats.empty_sections == 1


def test_eos_closes_each_section_when_asked():
    chunks, _ = chunk_raw_text("ab\n\n\ncd", CharTokenizer(), cutoff_len=8, add_eos_token=True)
    assert texts(chunks) == ["ab<eos>", "cd<eos>"]


def test_overlap_not_below_cutoff_is_refused():
    with pytest.raises(ValueError, match="overlap_len"):
        chunk_raw_text("abc", CharTokenizer(), cutoff_len=4, overlap_len=4)


def test_real_tokenizer_chunks_cover_the_text_with_exact_overlaps(tokenizer):
    text = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks, _ = chunk_raw_text(text, tokenizer, cutoff_len=64, overlap_len=16, newline_favor_len=60)
    assert all(len(c) <= 64 for c in chunks)
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        assert previous[-16:] == chunk[:16]  # exactly overlap_len shared tokens
        assert tokenizer.decode(previous).endswith("\n")  # every inner cut landed after a newline
    rebuilt = chunks[0] + [token for chunk in chunks[1:] for token in chunk[16:]]
    assert rebuilt == ids  # consecutive exact slices, tail included
