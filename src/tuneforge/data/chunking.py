"""Cut raw text into training chunks the way text-generation-webui's "Raw text file" settings describe.

    from tuneforge.data.chunking import chunk_raw_text
    chunks, stats = chunk_raw_text(text, tokenizer, cutoff_len=256, overlap_len=32)

- Each chunk holds at most `cutoff_len` tokens; neighbouring chunks share `overlap_len` tokens.
- A cut is moved back to the nearest newline if one lies within `newline_favor_len` characters, so chunks
  end on whole lines.
- The text is first split at `hard_cut_string`; no chunk ever spans it (and none contains it).
- The tail of every section is kept as a shorter last chunk, never dropped.

We cut in token space using the tokenizer's character offsets instead of decode/re-encode round trips
(as text-generation-webui does), so chunks are exact token slices and the cut positions are predictable.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass
class ChunkStats:
    sections: int = 0  # pieces of text between hard cuts that had content
    empty_sections: int = 0  # whitespace-only pieces between hard cuts (nothing to train on)
    chunks: int = 0
    tokens: int = 0  # tokens in the source text (before overlap duplicates them)
    newline_cuts: int = 0  # cuts moved back to a newline


def chunk_spans(
    text: str,
    offsets: Sequence[tuple[int, int]],
    cutoff_len: int,
    overlap_len: int,
    newline_favor_len: int,
    stats: ChunkStats | None = None,
) -> Iterator[tuple[int, int]]:
    """Yield (start, end) token index ranges covering all tokens of one section."""
    n = len(offsets)
    start = 0
    while start < n:
        end = min(start + cutoff_len, n)
        if end < n and newline_favor_len > 0:
            cut = _newline_cut(text, offsets, start + overlap_len + 1, end, newline_favor_len)
            if cut != end and stats is not None:
                stats.newline_cuts += 1
            end = cut
        yield start, end
        if end >= n:
            return
        start = max(end - overlap_len, start + 1)


def _newline_cut(
    text: str, offsets: Sequence[tuple[int, int]], lowest: int, end: int, favor_chars: int
) -> int:
    """The largest token boundary t in [lowest, end] that starts a new line, no more than favor_chars before end.

    Boundary t lies between token t-1 and token t; it starts a line when the character before token t is a
    newline. `lowest` keeps each chunk longer than the overlap so cutting always makes progress.
    """
    cut_char = offsets[end][0]
    for t in range(end, max(lowest, 1) - 1, -1):
        position = offsets[t][0]
        if cut_char - position > favor_chars:
            break
        if position > 0 and text[position - 1] == "\n":
            return t
    return end


def chunk_raw_text(
    text: str,
    tokenizer,
    cutoff_len: int,
    overlap_len: int = 0,
    newline_favor_len: int = 0,
    hard_cut_string: str = "\n\n\n",
    add_eos_token: bool = False,
) -> tuple[list[list[int]], ChunkStats]:
    """Token id chunks of `text` (see the module docstring for the rules)."""
    if overlap_len >= cutoff_len:
        raise ValueError(f"overlap_len ({overlap_len}) must be smaller than cutoff_len ({cutoff_len})")
    stats = ChunkStats()
    sections = text.split(hard_cut_string) if hard_cut_string else [text]
    chunks: list[list[int]] = []
    for section in sections:
        if not section.strip():
            stats.empty_sections += 1
            continue
        stats.sections += 1
        encoded = tokenizer(section, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        offsets = [tuple(o) for o in encoded["offset_mapping"]]
        if add_eos_token and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
            offsets.append((len(section), len(section)))
        stats.tokens += len(ids)
        for start, end in chunk_spans(section, offsets, cutoff_len, overlap_len, newline_favor_len, stats):
            chunks.append(ids[start:end])
    stats.chunks = len(chunks)
    return chunks, stats
