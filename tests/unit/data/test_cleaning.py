"""Cleaning filters, duplicate removal and diversity selection on records worked out by hand."""

from tuneforge.data.cleaning import clean_records, near_duplicates
from tuneforge.data.diversity import select_diverse


def records(*texts):
    return [{"text": t} for t in texts]


def test_every_filter_counts_what_it_removed_and_says_why():
    data = records(
        "As an AI language model, I cannot.",
        "ok",
        "a perfectly fine answer",
        "Visit http://spam.example",
        "x" * 50,
        "a perfectly fine answer",
        "  ",
    )
    kept, removed, counts = clean_records(
        data, clean=True, filter_patterns=[r"https?://"], min_length=3, max_length=40, dedup="exact"
    )
    assert kept == records("a perfectly fine answer")
    assert counts == {
        "empty text": 1,
        "shorter than 3 characters": 1,
        "longer than 40 characters": 1,
        "refusal phrases": 1,
        "pattern 'https?://'": 1,
        "exact duplicates": 1,
    }
    assert [(index, reason) for index, _, reason in removed] == [
        (0, "refusal phrases: 'As an AI language model'"),  # the words that matched
        (1, "shorter than 3 characters"),
        (3, "pattern 'https?://': 'http://'"),
        (4, "longer than 40 characters"),
        (5, "exact duplicate of record 2"),
        (6, "empty text"),
    ]


def test_phrases_match_any_field_case_insensitively():
    data = [
        {"instruction": "Who made you?", "output": "I was TRAINED BY OPENAI."},
        {"instruction": "a", "output": "b"},
    ]
    kept, _, counts = clean_records(data, clean=True)
    assert kept == data[1:] and counts["refusal phrases"] == 1


def test_unicode_is_normalised_to_nfc():
    kept, _, counts = clean_records(records("cafe\u0301"), normalize_unicode=True)
    assert kept == records("caf\u00e9") and counts["unicode normalized (kept)"] == 1


def test_near_duplicates_are_found_and_different_texts_kept():
    base = "The quick brown fox jumps over the lazy dog while the farmer sleeps in the afternoon sun."
    texts = [
        base,
        base.replace("sleeps", "naps"),
        base + "!",
        "An entirely different sentence about cheese sandwiches and how to make them well.",
        base.upper(),
    ]
    assert near_duplicates(texts, threshold=0.8) == {1: 0, 2: 0, 4: 0}
    kept, removed, counts = clean_records(records(*texts), dedup="near", near_dup_threshold=0.8)
    assert len(kept) == 2 and counts["near duplicates (Jaccard >= 0.8)"] == 3
    assert removed[0][2] == "near duplicate of record 0"


def test_diversity_keeps_a_subset_spread_over_clusters():
    cheese = [f"cheese sandwich recipe number {i} with bread and cheddar cheese" for i in range(8)]
    space = [f"rocket launch to orbit number {i} with fuel and engines" for i in range(3)]
    keep, report = select_diverse(cheese + space, clusters=2, subset=4, max_per_cluster=None, seed=0)
    assert sorted(report.sizes) == [3, 8] and report.kept == [2, 2]
    assert sum(i >= 8 for i in keep) == 2  # the small cluster is not drowned out
    capped, report = select_diverse(cheese + space, clusters=2, subset=None, max_per_cluster=1, seed=0)
    assert len(capped) == 2 and "clusters: 2" in report.render()
