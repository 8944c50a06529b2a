"""Task scores for supervised data: generate an output for each input and score it against the reference.

    from tuneforge.evaluate.tasks import read_records, score_task
    records = read_records("validation.jsonl")                  # [(input, reference), ...]
    scores = score_task(lambda p: llm.generate(p, do_sample=False, stop=["\\n"]), records, label="after")
    print(scores.to_markdown())      # exact_match, rouge_l, numeric mean scores, then one row per record

- exact_match: 1 when prediction and reference are equal after lower-casing and dropping punctuation,
  articles and extra spaces (SQuAD's normalisation).
- rouge_l: F1 of the longest common subsequence of normalised words (ROUGE-L, beta = 1).
- numeric: 1 when the final number of the prediction equals the reference's (GSM8K's "#### 42" answers
  are read after the ####); for math-style data.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.errors import DataError

INPUT_KEYS = ("instruction", "question", "prompt", "input", "source")  # alpaca: instruction (+ input)
OUTPUT_KEYS = ("output", "answer", "response", "completion", "target")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over normalised words: 2PR / (P + R) with P, R = LCS / len(prediction), LCS / len(reference)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    previous = [0] * (len(ref) + 1)  # LCS lengths, one row of the dynamic-programming table at a time
    for word in pred:
        current = [0]
        for j, other in enumerate(ref):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def final_number(text: str) -> float | None:
    """The answer number of `text`: what follows '####' if present, else the last number in the text."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    try:
        return float(numbers[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_match(prediction: str, reference: str, tolerance: float = 1e-6) -> float:
    expected, got = final_number(reference), final_number(prediction)
    if expected is None or got is None:
        return 0.0
    return float(abs(expected - got) <= tolerance * max(1.0, abs(expected)))


METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "rouge_l": rouge_l,
    "numeric": numeric_match,
}


@dataclass
class TaskScores:
    """Per-record predictions and scores, and each metric's mean."""

    label: str
    rows: list[dict] = field(default_factory=list)  # {"input", "reference", "prediction", metric: score}
    means: dict[str, float] = field(default_factory=dict)

    def to_markdown(self, limit: int = 20) -> str:
        metrics = list(self.means)
        lines = [
            f"**{self.label}**: " + ", ".join(f"{m} {v:.3f}" for m, v in self.means.items()),
            "",
            "| input | reference | prediction | " + " | ".join(metrics) + " |",
            "|---|---|---|" + "---|" * len(metrics),
        ]
        for row in self.rows[:limit]:
            cells = [row["input"], row["reference"], row["prediction"]] + [f"{row[m]:.2f}" for m in metrics]
            lines.append(
                "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
            )
        return "\n".join(lines)


def read_records(
    path: str | Path,
    input_key: str | None = None,
    output_key: str | None = None,
    format_file: str | None = None,
) -> list[tuple]:
    """(input, reference) pairs from a JSON list or JSON-lines file; alpaca's instruction + input are joined,
    or, with `format_file` ('alpaca-format', a path), each record's prompt is its template up to the answer,
    as training renders it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"task data file '{path}' does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not JSON or JSON lines ({error.msg} at line {error.lineno})") from None
    if not records or not isinstance(records[0], dict):
        raise DataError(f"{path}: expected records with input and output fields")
    keys = set(records[0])
    input_key = input_key or next((k for k in INPUT_KEYS if k in keys), None)
    output_key = output_key or next((k for k in OUTPUT_KEYS if k in keys), None)
    if input_key not in keys or output_key not in keys:
        raise DataError(
            f"{path}: could not tell the input and output fields among {sorted(keys)}; name them "
            "with input_key and output_key"
        )
    if format_file is not None:
        from tuneforge.data.formats import check_formatted, load_format, render_formatted

        fmt = load_format(format_file)
        check_formatted(records, fmt, f"records of {path}")
        rendered = [render_formatted(record, fmt, train_on_source=False) for record in records]
        return [
            (segments[0][0] if len(segments) > 1 else "", str(record.get(output_key, "")))
            for segments, record in zip(rendered, records, strict=True)
        ]
    pairs = []
    for record in records:
        prompt = str(record.get(input_key, ""))
        if input_key == "instruction" and record.get("input"):  # alpaca: the instruction, then its input
            prompt = f"{prompt}\n{record['input']}"
        pairs.append((prompt, str(record.get(output_key, ""))))
    return pairs


def is_alpaca(path: str | Path) -> bool:
    """Whether a JSON/JSONL file's first record has Alpaca's keys (instruction and output)."""
    try:
        text = Path(path).read_text(encoding="utf-8").lstrip()
        first = json.loads(text)[0] if text.startswith("[") else json.loads(text.splitlines()[0])
    except (OSError, ValueError, IndexError, KeyError):
        return False  # read_records says what is wrong with the file
    return isinstance(first, dict) and {"instruction", "output"} <= set(first)


def score_task(
    generate: Callable[[str], str],
    records: Sequence[tuple[str, str]],
    *,
    label: str = "model",
    metrics: Sequence[str] = ("exact_match", "rouge_l", "numeric"),
    template: str = "{input}",
) -> TaskScores:
    """Generate for each record's input (rendered through `template`) and score against its reference."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise DataError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    scores = TaskScores(label)
    for prompt, reference in records:
        prediction = generate(template.format(input=prompt)).strip()
        row: dict[str, str | float] = {"input": prompt, "reference": reference, "prediction": prediction}
        row.update({m: METRICS[m](prediction, reference) for m in metrics})
        scores.rows.append(row)
    n = max(len(scores.rows), 1)
    scores.means = {m: sum(row[m] for row in scores.rows) / n for m in metrics}
    return scores
