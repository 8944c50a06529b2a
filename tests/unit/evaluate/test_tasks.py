"""Task scores on hand-worked examples."""

import json

import pytest

from tuneforge.errors import DataError
from tuneforge.evaluate.tasks import (
    exact_match,
    final_number,
    numeric_match,
    read_records,
    rouge_l,
    score_task,
)


def test_exact_match_ignores_case_punctuation_articles_and_spaces():
    assert exact_match("The  Cat sat.", "cat sat") == 1.0
    assert exact_match("a dog", "the cat") == 0.0


def test_rouge_l_on_hand_worked_examples():
    # LCS("the cat sat on the mat", "the cat is on the mat") after dropping articles:
    # "cat sat on mat" vs "cat is on mat" -> LCS "cat on mat" = 3; P = R = 3/4; F1 = 0.75
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)
    # "police killed gunman" vs "police kill gunman" -> LCS 2, P = R = 2/3
    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(2 / 3)
    # prediction "a b c d" (4 words) vs reference "b d" (2): LCS 2, P = 1/2, R = 1 -> F1 = 2/3
    assert rouge_l("w x y z", "x z") == pytest.approx(2 / 3)
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0


def test_numeric_match_reads_the_final_number_or_the_gsm8k_answer():
    assert final_number("She pays 3 + 4 = 7 dollars") == 7
    assert final_number("so 1,234.5 in total") == 1234.5
    assert final_number("Natalia sold 48/2 = 24 clips.\n#### 72") == 72
    assert numeric_match("The answer is 72.", "#### 72") == 1.0
    assert numeric_match("The answer is 71", "#### 72") == 0.0
    assert numeric_match("no number here", "5") == 0.0


def test_score_task_averages_each_metric_over_records():
    records = [("2 + 2 =", "4"), ("capital of France?", "Paris"), ("3 * 3 =", "9")]
    answers = {"2 + 2 =": " 4", "capital of France?": "paris!", "3 * 3 =": "it is 10"}
    scores = score_task(lambda prompt: answers[prompt], records, label="after")
    assert scores.means["exact_match"] == pytest.approx(2 / 3)
    assert scores.means["numeric"] == pytest.approx(1 / 3)  # "paris!" has no number; 10 != 9
    assert [row["prediction"] for row in scores.rows] == ["4", "paris!", "it is 10"]
    assert "exact_match 0.667" in scores.to_markdown()


def test_records_are_read_from_jsonl_and_alpaca_json(tmp_path):
    jsonl = tmp_path / "val.jsonl"
    jsonl.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) for i in range(3)))
    assert read_records(jsonl) == [("q0", "a0"), ("q1", "a1"), ("q2", "a2")]
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add", "input": "1 2", "output": "3"}]))
    assert read_records(alpaca) == [("Add\n1 2", "3")]
    with pytest.raises(DataError, match="input and output"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"x": 1, "y": 2}))
        read_records(bad)


def test_evaluate_scores_a_model_before_and_after_an_adapter(tiny_llm, adapter_dirs):
    tiny_llm.load_adapter(adapter_dirs[0], name="one")
    scores = tiny_llm.evaluate(
        [("you can", "make"), ("anyone can", "build")], max_new_tokens=3, adapters=["base", "one"]
    )
    assert set(scores) == {"base", "one"}
    assert all(set(s.means) == {"exact_match", "rouge_l", "numeric"} for s in scores.values())
    assert [r["prediction"] for r in scores["base"].rows] != [r["prediction"] for r in scores["one"].rows]
