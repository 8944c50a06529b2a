"""Minimise the noise (seed 002): Unicode normalisation, phrase/regex filters, length limits, duplicate removal.

    from tuneforge.data.cleaning import clean_records
    kept, removed, counts = clean_records([{"text": "As an AI language model, I ..."}, {"text": "Hi"}],
                                          clean=True, dedup="exact")
    # counts == {"refusal phrases": 1, ...}; removed[0][2] == "refusal phrases: 'As an AI language model'"

Every filter counts what it removed, and every removed record keeps its reason so it can be written out for
review (`save_removed`). Near duplicates are found with MinHash over character 5-grams and LSH banding.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from importlib import resources

import numpy as np

from tuneforge.errors import DataError

Removed = tuple[int, dict, str]  # (index in the data as read, record, reason)

NUM_PERMUTATIONS = (
    128  # MinHash signature length: the Jaccard estimate's standard error is ~1/sqrt(128) = 0.09
)
SHINGLE_CHARS = 5


def default_phrases() -> list[str]:
    """The shipped list of stock refusal/identity phrases (resources/refusal_phrases.txt)."""
    text = (resources.files("tuneforge") / "resources" / "refusal_phrases.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def record_text(record: dict) -> str:
    """All the text a record holds (string values, chat message contents), in key order."""
    parts = []

    def collect(value) -> None:
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(record)
    return "\n".join(parts)


def normalize_record(value):
    """NFC-normalise every string inside a record (one code point per accented letter)."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, dict):
        return {k: normalize_record(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_record(v) for v in value]
    return value


def clean_records(
    records: list[dict],
    *,
    clean: bool = False,
    filter_patterns: Sequence[str] = (),
    min_length: int = 0,
    max_length: int | None = None,
    normalize_unicode: bool = False,
    dedup: str = "none",
    near_dup_threshold: float = 0.85,
) -> tuple[list[dict], list[Removed], dict[str, int]]:
    """(kept records, removed records with reasons, records removed per filter) — filters run in this order."""
    counts: dict[str, int] = {}
    if normalize_unicode:
        normalized = [normalize_record(r) for r in records]
        counts["unicode normalized (kept)"] = sum(a != b for a, b in zip(records, normalized, strict=True))
        records = normalized
    # an empty record trains nothing: counted and written to save_removed like any removal, not lost unseen
    checks: list[tuple[str, Callable[[str], object]]] = [("empty text", lambda t: not t.strip())]
    if min_length:
        checks.append((f"shorter than {min_length} characters", lambda t: len(t) < min_length))
    if max_length:
        checks.append((f"longer than {max_length} characters", lambda t: len(t) > max_length))
    if clean:
        phrases = re.compile("|".join(re.escape(p) for p in default_phrases()), re.IGNORECASE)
        checks.append(("refusal phrases", phrases.search))
    for pattern in filter_patterns:
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise DataError(
                f"filter pattern '{pattern}' is not a valid regular expression: {error}"
            ) from None
        checks.append((f"pattern '{pattern}'", compiled.search))

    kept: list[dict] = []
    origin: list[int] = []  # index of each kept record in the data as read
    removed: list[Removed] = []
    for name, _ in checks:
        counts[name] = 0
    texts = []
    for index, record in enumerate(records):
        text = record_text(record)
        reason, found = next(((name, hit) for name, check in checks if (hit := check(text))), (None, None))
        if reason is None:
            kept.append(record)
            origin.append(index)
            texts.append(text)
        else:
            counts[reason] += 1
            said = (
                f"{reason}: '{found.group(0)[:60]}'" if isinstance(found, re.Match) else reason
            )  # the words
            removed.append((index, record, said))
    if dedup != "none":
        duplicate_of = (
            exact_duplicates(texts) if dedup == "exact" else near_duplicates(texts, near_dup_threshold)
        )
        name = (
            "exact duplicates" if dedup == "exact" else f"near duplicates (Jaccard >= {near_dup_threshold})"
        )
        counts[name] = len(duplicate_of)
        removed.extend(
            (origin[i], kept[i], f"{dedup} duplicate of record {origin[j]}")
            for i, j in sorted(duplicate_of.items())
        )
        kept = [r for i, r in enumerate(kept) if i not in duplicate_of]
    removed.sort(key=lambda item: item[0])
    return kept, removed, counts


def exact_duplicates(texts: list[str]) -> dict[int, int]:
    """{index: index of its first occurrence} for every text seen before (whitespace at the ends ignored)."""
    first: dict[str, int] = {}
    duplicate_of = {}
    for i, text in enumerate(texts):
        j = first.setdefault(text.strip(), i)
        if j != i:
            duplicate_of[i] = j
    return duplicate_of


def _shingles(text: str) -> np.ndarray:
    """Hashes (uint64) of the distinct character 5-grams of lowercased, whitespace-collapsed text."""
    data = np.frombuffer(" ".join(text.lower().split()).encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    if len(data) < SHINGLE_CHARS:
        return np.array([zlib.crc32(data.tobytes())], dtype=np.uint64)
    hashes = np.zeros(len(data) - SHINGLE_CHARS + 1, dtype=np.uint64)
    for k in range(SHINGLE_CHARS):  # polynomial rolling hash; uint64 arithmetic wraps, which is what we want
        hashes = hashes * np.uint64(1_000_003) + data[k : len(data) - SHINGLE_CHARS + 1 + k]
    return np.unique(hashes)


def minhash_signatures(
    texts: list[str], num_permutations: int = NUM_PERMUTATIONS, seed: int = 0
) -> np.ndarray:
    """(len(texts), num_permutations) uint32 MinHash signatures; equal rows estimate Jaccard similarity."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, num_permutations, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, num_permutations, dtype=np.uint64)
    signatures = np.empty((len(texts), num_permutations), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for row, text in enumerate(texts):
            shingles = _shingles(text)
            for start in range(0, len(shingles), 4096):  # bounds memory at 4096 x 128 x 8 bytes
                block = (shingles[start : start + 4096, None] * a + b) >> np.uint64(
                    32
                )  # multiply-shift hashing
                low = block.min(axis=0).astype(np.uint32)
                signatures[row] = low if start == 0 else np.minimum(signatures[row], low)
    return signatures


def _bands(threshold: float, num_permutations: int) -> tuple[int, int]:
    """LSH (bands, rows) whose S-curve threshold (1/bands)^(1/rows) is closest to `threshold`."""
    options = [
        (b, num_permutations // b) for b in range(1, num_permutations + 1) if num_permutations % b == 0
    ]
    return min(options, key=lambda br: abs((1 / br[0]) ** (1 / br[1]) - threshold))


def near_duplicates(texts: list[str], threshold: float = 0.85, seed: int = 0) -> dict[int, int]:
    """{index: index of an earlier kept text} for texts whose estimated Jaccard similarity >= threshold."""
    signatures = minhash_signatures(texts, seed=seed)
    bands, rows = _bands(threshold, signatures.shape[1])
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    duplicate_of: dict[int, int] = {}
    for i in range(len(texts)):
        keys = [signatures[i, band * rows : (band + 1) * rows].tobytes() for band in range(bands)]
        candidates = {j for band, key in enumerate(keys) for j in buckets[band].get(key, ())}
        best = max(candidates, key=lambda j: (signatures[i] == signatures[j]).mean(), default=None)
        if best is not None and (signatures[i] == signatures[best]).mean() >= threshold:
            duplicate_of[i] = best
            continue
        for band, key in enumerate(keys):  # only kept texts go into buckets: duplicates point at a kept one
            buckets[band].setdefault(key, []).append(i)
    return duplicate_of
