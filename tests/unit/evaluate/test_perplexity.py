"""Sliding-window perplexity agrees with a direct token-by-token computation; history and tables."""

import math

import pytest
import torch

from tuneforge.evaluate.perplexity import (
    EvaluationError,
    append_history,
    format_table,
    perplexity,
    read_history,
    window_nll,
)

TEXT = (
    "you can make a tasty cheese sandwich quickly\nanyone can build a small ham sandwich today\n"
    "you can build a tasty cheese sandwich slowly\n"
) * 3


def direct_perplexity(model, ids: list[int], max_length: int) -> float:
    """Token by token: token t is predicted from up to max_length - 1 tokens before it, one forward each."""
    nll = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            context = ids[max(0, t - max_length + 1) : t]
            logits = model(input_ids=torch.tensor([context])).logits[0, -1]
            nll -= float(torch.log_softmax(logits.double(), dim=-1)[ids[t]])
    return math.exp(nll / (len(ids) - 1))


@pytest.mark.parametrize("max_length", [512, 16])
def test_stride_one_matches_the_direct_token_by_token_computation(tiny_llm, max_length):
    ids = tiny_llm.tokenizer(TEXT)["input_ids"]
    assert len(ids) > 2 * max_length or max_length > len(ids)
    result = perplexity(
        tiny_llm.model, tiny_llm.tokenizer, TEXT, max_length=max_length, stride=1, shape="raw"
    )
    assert result.tokens == len(ids) - 1
    assert result.perplexity == pytest.approx(direct_perplexity(tiny_llm.model, ids, max_length), rel=1e-3)


def test_every_token_is_scored_once_whatever_the_stride(tiny_llm):
    ids = tiny_llm.tokenizer(TEXT)["input_ids"]
    for stride in (1, 5, 16):
        _, count = window_nll(tiny_llm.model, ids, max_length=16, stride=stride)
        assert count == len(ids) - 1
    whole = perplexity(tiny_llm.model, tiny_llm.tokenizer, TEXT, max_length=512, stride=512, shape="raw")
    disjoint = perplexity(tiny_llm.model, tiny_llm.tokenizer, TEXT, max_length=8, stride=8, shape="raw")
    assert whole.perplexity != pytest.approx(
        disjoint.perplexity, rel=1e-6
    )  # less context per token: a different number


def test_a_text_file_and_its_contents_give_the_same_perplexity(tiny_llm, tmp_path):
    path = tmp_path / "heldout.txt"
    path.write_text(TEXT)
    from_file = perplexity(tiny_llm.model, tiny_llm.tokenizer, path, max_length=32, stride=16)
    from_text = perplexity(tiny_llm.model, tiny_llm.tokenizer, TEXT, max_length=32, stride=16)
    assert from_file.perplexity == pytest.approx(from_text.perplexity, rel=1e-9)
    assert from_file.data.startswith(str(path))


def test_line_shaped_text_is_scored_line_by_line_like_training_reads_it(tiny_llm):
    lines = TEXT.splitlines()
    auto = perplexity(tiny_llm.model, tiny_llm.tokenizer, TEXT, max_length=64)
    nll = sum(window_nll(tiny_llm.model, tiny_llm.tokenizer(line)["input_ids"], 64, 32)[0] for line in lines)
    tokens = sum(len(tiny_llm.tokenizer(line)["input_ids"]) - 1 for line in lines)
    assert auto.data.endswith("(per line)") and auto.tokens == tokens
    assert auto.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-5)  # batched: rounding only
    raw = perplexity(tiny_llm.model, tiny_llm.tokenizer, TEXT, max_length=64, shape="raw")
    assert raw.tokens == len(tiny_llm.tokenizer(TEXT)["input_ids"]) - 1


def test_short_sequences_scored_together_equal_each_scored_alone_and_progress_reaches_the_end(tiny_llm):
    """Padding must not leak: a 3-token line batched with a 60-token one scores as it does alone."""
    from tuneforge.evaluate.perplexity import sequences_nll

    tokenize = tiny_llm.tokenizer
    texts = ["cheese", "you can build a tasty cheese sandwich " * 8, "ham on rye", "a b c d e f g h i j k"]
    sequences = [(ids, None) for ids in tokenize(texts)["input_ids"]]
    sequences.append((sequences[1][0], [-100] * 10 + list(sequences[1][0][10:])))  # labels mask a prompt
    heard = []
    together = sequences_nll(tiny_llm.model, sequences, 64, 32, heard.append)
    alone = [window_nll(tiny_llm.model, ids, 64, 32, labels) for ids, labels in sequences]
    assert together[1] == sum(n for _, n in alone)
    assert together[0] == pytest.approx(sum(nll for nll, _ in alone), rel=1e-5)
    assert sum(heard) == sum(len(ids) for ids, _ in sequences)
    windows = sequences_nll(tiny_llm.model, sequences, 16, 8)  # longer than a window: read window by window
    assert windows[1] == together[1] and windows[0] != pytest.approx(together[0], rel=1e-6)


PROSE = (
    "The first thing to know about bread is that it is alive.\nYeast eats the sugars in the flour.\n"
    "A cold kitchen slows this down.\nSalt tightens the gluten, so the dough holds its shape.\n"
    "Most of the flavour comes from time.\n"
)


def test_prose_one_sentence_per_line_is_measured_as_written(tiny_llm):
    ids = tiny_llm.tokenizer(PROSE)["input_ids"]
    auto = perplexity(tiny_llm.model, tiny_llm.tokenizer, PROSE, max_length=512, stride=512)
    raw = perplexity(tiny_llm.model, tiny_llm.tokenizer, PROSE, max_length=512, stride=512, shape="raw")
    assert not auto.data.endswith("(per line)") and auto.tokens == raw.tokens == len(ids) - 1
    assert auto.perplexity == pytest.approx(raw.perplexity, rel=1e-12)
    assert auto.perplexity == pytest.approx(direct_perplexity(tiny_llm.model, ids, 512), rel=1e-3)
    lines = perplexity(tiny_llm.model, tiny_llm.tokenizer, PROSE, max_length=512, stride=512, shape="lines")
    assert lines.tokens < auto.tokens  # per line, each sentence loses the text before it


def test_prepared_examples_score_only_tokens_with_labels(tiny_llm):
    ids = tiny_llm.tokenizer("you can make a tasty cheese sandwich")["input_ids"]
    masked = [-100] * 4 + ids[4:]
    full = perplexity(tiny_llm.model, tiny_llm.tokenizer, [{"input_ids": ids, "labels": ids}], max_length=64)
    part = perplexity(
        tiny_llm.model, tiny_llm.tokenizer, [{"input_ids": ids, "labels": masked}], max_length=64
    )
    assert full.tokens == len(ids) - 1 and part.tokens == len(ids) - 4


def test_packed_examples_are_scored_each_on_its_own_as_unpacked(tiny_llm):
    """Recipe auto packs short examples, and its validation set reaches perplexity() packed: each example in a
    block must be scored without seeing the ones before it, as training's attention does."""
    from tuneforge.data.packing import pack_examples

    lines = [line for line in TEXT.splitlines() if line][:3]
    examples = [{"input_ids": ids, "labels": ids} for ids in tiny_llm.tokenizer(lines)["input_ids"]]
    blocks = pack_examples(examples, 64)
    assert len(blocks) == 1 and "position_ids" in blocks[0]
    packed = perplexity(tiny_llm.model, tiny_llm.tokenizer, blocks, max_length=64)
    apart = perplexity(tiny_llm.model, tiny_llm.tokenizer, examples, max_length=64)
    assert packed.tokens == apart.tokens and packed.loss == pytest.approx(apart.loss, rel=1e-5)


def test_history_keeps_every_evaluation_and_the_table_shows_the_change(tiny_llm, tmp_path):
    first = perplexity(tiny_llm.model, tiny_llm.tokenizer, TEXT, max_length=32, label="base")
    second = perplexity(tiny_llm.model, tiny_llm.tokenizer, TEXT[:80], max_length=32, label="other")
    history = tmp_path / "history.jsonl"
    append_history(history, [first])
    append_history(history, [second])
    records = read_history(history)
    assert [r["label"] for r in records] == ["base", "other"] and "time" in records[0]
    table = format_table([first, second], baseline="base")
    assert "vs base" in table and f"{first.perplexity:.3f}" in table and "+0.000" in table


def test_bad_window_sizes_are_explained(tiny_llm):
    with pytest.raises(EvaluationError, match="stride"):
        perplexity(tiny_llm.model, tiny_llm.tokenizer, TEXT, max_length=8, stride=9)
    with pytest.raises(EvaluationError, match="fewer than 2 tokens"):
        perplexity(tiny_llm.model, tiny_llm.tokenizer, "you", max_length=8)
    with pytest.raises(EvaluationError, match=r"stride \(0\) must be between 1"):  # not quietly the default
        perplexity(tiny_llm.model, tiny_llm.tokenizer, TEXT, max_length=8, stride=0)


def test_a_file_of_records_is_refused_not_scored_as_json_text(tiny_llm, tmp_path):
    (tmp_path / "alpaca.json").write_text('[{"instruction": "Say hi", "output": "Hi"}]')
    with pytest.raises(EvaluationError, match="holds records, not plain text.*LLM.evaluate"):
        perplexity(tiny_llm.model, tiny_llm.tokenizer, tmp_path / "alpaca.json")


def test_a_mistyped_file_name_is_an_error_not_a_text_to_score(tiny_llm, tmp_path):
    with pytest.raises(EvaluationError, match=r"data file 'cheese5O.txt' does not exist.*\['cheese5O.txt'\]"):
        perplexity(tiny_llm.model, tiny_llm.tokenizer, "cheese5O.txt")
    with pytest.raises(EvaluationError, match="does not exist"):
        perplexity(tiny_llm.model, tiny_llm.tokenizer, str(tmp_path / "heldout.jsonl.gz"))
    as_text = perplexity(tiny_llm.model, tiny_llm.tokenizer, ["cheese5O.txt"], max_length=8)
    assert as_text.tokens > 0  # the same characters, asked for as text
