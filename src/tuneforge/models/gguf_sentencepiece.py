"""A SentencePiece BPE vocabulary (Llama 2, TinyLlama, Mistral: pieces spelled with "▁", byte fallback) for GGUF.

llama.cpp tokenizes such a vocabulary (tokenizer.ggml.model "llama") as SentencePiece does: from single
characters it merges the adjacent pair whose joined text has the highest score. tokenizer.json keeps no scores,
only the merges transformers derived from them (in score order), so each piece's score here is minus the rank of
the first merge that builds it: the order the pieces were learnt in, which is what llama.cpp and transformers'
GGUF reader (which derives its merges back from these scores) both need. The gguf package's LlamaHfVocab, the
converter's fallback for a folder without tokenizer.model, gives every piece the same score instead, and its
files split words differently from the tokenizer they came from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
UNREACHABLE = -1e9  # a piece no merge builds: transformers never makes it, so llama.cpp should make it last


@dataclass
class SentencePieceVocab:
    scores: list[float]
    types: list[int]  # gguf.TokenType values
    add_space_prefix: (
        bool  # "▁" in front of the text, as Metaspace's prepend_scheme or a Prepend normalizer does
    )


def _steps(part: dict | None) -> list[dict]:
    """A normalizer, pre-tokenizer or decoder, followed by the steps inside it when it is a Sequence."""
    if not part:
        return []
    inner = part.get("normalizers") or part.get("pretokenizers") or part.get("decoders") or []
    return [part, *[step for each in inner for step in _steps(each)]]


def tokenizer_json(tokenizer) -> dict | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        return json.loads(backend.to_str()) if backend is not None else None
    except Exception:  # a custom Python component cannot be serialised
        return None


def is_sentencepiece_bpe(described: dict | None) -> bool:
    """A BPE that spells spaces as "▁" (Metaspace, or a normalizer replacing " ") and decodes without bytes-as-
    characters: what transformers converts a SentencePiece BPE model (tokenizer.model) to."""
    if not described or (described.get("model") or {}).get("type") != "BPE":
        return False
    decoding = _steps(described.get("decoder"))
    if any(step.get("type") == "ByteLevel" for step in decoding):
        return False
    spelling = _steps(described.get("pre_tokenizer")) + _steps(described.get("normalizer"))
    return any(
        step.get("type") == "Metaspace" or (step.get("type") == "Replace" and step.get("content") == "▁")
        for step in spelling
    )


def _adds_space_prefix(described: dict) -> bool:
    for step in _steps(described.get("pre_tokenizer")):
        if step.get("type") == "Metaspace":
            if "prepend_scheme" in step:
                return step["prepend_scheme"] != "never"
            return bool(step.get("add_prefix_space", True))
    return any(step.get("type") == "Prepend" for step in _steps(described.get("normalizer")))


def sentencepiece_vocab(described: dict, tokens: list[str], types: list[int], unk_id: int | None):
    """Scores and GGUF types for `tokens` (by id, as export's byte-level writer lists them, with `types`: added
    tokens CONTROL or USER_DEFINED, padding UNUSED): byte pieces become BYTE and <unk> UNKNOWN."""
    import gguf

    score: dict[str, float] = {}
    for rank, merge in enumerate(described["model"].get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        score.setdefault(left + right, -float(rank + 1))
    scores, kinds = [], []
    for i, (piece, kind) in enumerate(zip(tokens, types, strict=True)):
        value = 0.0
        if kind == gguf.TokenType.UNUSED:
            value = UNREACHABLE
        elif i == unk_id:
            kind = gguf.TokenType.UNKNOWN
        elif kind == gguf.TokenType.NORMAL and BYTE_PIECE.fullmatch(piece):
            kind = gguf.TokenType.BYTE
        elif kind == gguf.TokenType.NORMAL:
            value = score.get(piece, 0.0 if len(piece) == 1 else UNREACHABLE)
        scores.append(value)
        kinds.append(int(kind))
    return SentencePieceVocab(scores, kinds, _adds_space_prefix(described))
