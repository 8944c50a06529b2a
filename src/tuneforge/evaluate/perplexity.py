"""Perplexity by the sliding-window method (text-generation-webui's Perplexity evaluation tab), with a history.

    from tuneforge.evaluate.perplexity import perplexity, format_table
    result = perplexity(model, tokenizer, "heldout.txt", max_length=512, stride=256, label="base")
    print(format_table([result]))           # | model | data | perplexity | loss | tokens | max_length | stride |

A text is tokenized once and read in windows of at most `max_length` tokens, each moved on by `stride`
tokens; each window scores only the tokens no earlier window scored, so every token is scored exactly once,
with up to `max_length - 1` tokens of context (stride = 1: the most context, slowest; a large stride: fast,
less context). Perplexity is exp(total negative log-likelihood / tokens scored); the first token has no
context and is not scored. Unlike the recipe in transformers' docs, a stride of max_length does not drop
the first token of each window.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneforge.errors import TuneforgeError

IGNORE_INDEX = -100  # labels that carry no loss (as in tuneforge.data)
SHAPES = ("auto", "raw", "lines")
RECORD_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".sql")  # files of records, not text
BATCH_TOKENS = 2048  # padded tokens a forward when short sequences are scored together (fp32 logits ~400 MB)


class EvaluationError(TuneforgeError, ValueError):
    """Evaluation input (data, window sizes) is wrong."""


@dataclass
class PerplexityResult:
    label: str  # which model/adapter
    data: str  # which text or dataset
    perplexity: float
    loss: float  # mean negative log-likelihood per scored token, in nats
    tokens: int  # tokens scored
    max_length: int
    stride: int


def window_nll(
    model,
    input_ids: Sequence[int],
    max_length: int,
    stride: int,
    labels: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens scored) of one token sequence, window by window.

    `labels` (same length, IGNORE_INDEX = not scored) lets prepared examples exclude prompt tokens;
    `progress(n)` hears of each window's n newly read tokens.
    """
    import torch
    import torch.nn.functional as F

    if max_length < 2:
        raise EvaluationError(f"max_length ({max_length}) must be at least 2 tokens")
    if not 1 <= stride <= max_length:
        raise EvaluationError(f"stride ({stride}) must be between 1 and max_length ({max_length})")
    device = next(model.parameters()).device
    ids = torch.as_tensor(list(input_ids), dtype=torch.long, device=device)
    targets_all = ids if labels is None else torch.as_tensor(list(labels), dtype=torch.long, device=device)
    n = ids.shape[0]
    step = min(stride, max_length - 1)  # a window must keep >= 1 token of context for its first new token
    total, count = 0.0, 0
    begin, end, scored_until = 0, min(max_length, n), 1  # token 0 has no context: never scored
    with torch.no_grad():
        while scored_until < n:
            targets = targets_all[begin:end].clone()
            targets[: scored_until - begin] = IGNORE_INDEX  # scored by an earlier window
            logits = model(input_ids=ids[begin:end].unsqueeze(0)).logits[0]  # (window, vocab)
            shifted = targets[1:]
            total += float(
                F.cross_entropy(logits[:-1].float(), shifted, ignore_index=IGNORE_INDEX, reduction="sum")
            )
            count += int((shifted != IGNORE_INDEX).sum())
            if progress is not None:
                progress(end - (scored_until if scored_until > 1 else 0))
            scored_until = end
            end = min(end + step, n)
            begin = max(0, end - max_length)
    return total, count


def sequences_nll(
    model,
    sequences: Sequence[tuple[Sequence[int], Sequence[int] | None]],
    max_length: int,
    stride: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens scored) of many (input_ids, labels or None) sequences, each
    scored on its own: those that fit one window go through the model together, right-padded under an
    attention mask (a file of short lines scores several times faster than line by line); longer ones by window_nll."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    short = [s for s in sequences if 2 <= len(s[0]) <= max_length]  # one token alone has nothing to score
    for ids, labels in sequences:
        if len(ids) > max_length:
            nll, n = window_nll(model, ids, max_length, stride, labels, progress)
            total, count = total + nll, count + n
    device = next(model.parameters()).device
    short.sort(key=lambda s: len(s[0]))  # similar lengths share a batch: little padding
    start = 0
    while start < len(short):
        end = start + 1
        while end < len(short) and (end - start + 1) * len(short[end][0]) <= BATCH_TOKENS:
            end += 1
        batch, width = short[start:end], len(short[end - 1][0])
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        targets = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (input_ids, labels) in enumerate(batch):
            n = len(input_ids)
            tokens[row, :n] = torch.as_tensor(list(input_ids))
            targets[row, :n] = torch.as_tensor(list(labels if labels is not None else input_ids))
            mask[row, :n] = 1
        tokens, targets, mask = tokens.to(device), targets.to(device), mask.to(device)
        with torch.no_grad():
            logits = model(input_ids=tokens, attention_mask=mask).logits[:, :-1].float()
            shifted = targets[:, 1:]
            total += float(
                F.cross_entropy(
                    logits.flatten(0, 1), shifted.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
                )
            )
        count += int((shifted != IGNORE_INDEX).sum())
        if progress is not None:
            progress(int(mask.sum()))
        start = end
    return total, count


def _unpacked(example: dict) -> list[dict]:
    """A packed block's examples, each scored on its own as training saw it (its position_ids restart at 0 where
    an example starts); scoring the block as one text would let each example see the ones before it."""
    positions = example.get("position_ids")
    if positions is None:
        return [example]
    positions = list(positions)
    starts = [i for i, position in enumerate(positions) if position == 0] or [0]
    ends = starts[1:] + [len(positions)]
    labels = example.get("labels")
    return [
        {
            "input_ids": list(example["input_ids"][start:end]),
            "labels": list(labels[start:end]) if labels is not None else None,
        }
        for start, end in zip(starts, ends, strict=True)
    ]


def _default_max_length(model) -> int:
    # Long windows cost memory quadratically in attention; 1024 tokens is cheap on a CPU yet long-context.
    return min(getattr(model.config, "max_position_embeddings", 1024) or 1024, 1024)


def _is_file(data) -> bool:
    """A Path, or a string naming an existing file (any other string is the text itself)."""
    if isinstance(data, Path):
        if not data.is_file():
            raise EvaluationError(f"data file '{data}' does not exist")
        return True
    if not isinstance(data, str) or "\n" in data:
        return False
    try:
        if Path(data).is_file():
            return True
    except OSError:  # a long text is not a valid file name
        return False
    from tuneforge.data.sources import TEXT_SUFFIXES, inner_suffix

    # one word ending in a file suffix is a mistyped path, not a text to score
    if not any(c.isspace() for c in data) and inner_suffix(Path(data)) in TEXT_SUFFIXES | set(
        RECORD_SUFFIXES
    ):
        raise EvaluationError(
            f"data file '{data}' does not exist (to score those characters as text, pass them in a list: [{data!r}])"
        )
    return False


def perplexity(
    model,
    tokenizer,
    data,
    *,
    max_length: int | None = None,
    stride: int | None = None,
    label: str = "model",
    data_label: str | None = None,
    shape: str = "auto",
    encoding: str = "utf-8",
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of `model` on `data`: a text file path, a string, a list of strings (each scored on its
    own), or prepared examples (a PreparedData or a list of {"input_ids", "labels"} dicts).

    `shape` says how a text is read: 'raw' as one long text, 'lines' as one example per line (how data of
    that shape is trained, so a line-trained model is not judged on line joins it never saw), 'auto' picks
    like training does (tuneforge.data's detect_shape): prose, one sentence per line or not, is measured as
    written; only lines that look like independent examples are scored one by one. `encoding` reads a file.
    `progress(done, total)` hears how many of the data's tokens have been read.
    """
    if shape not in SHAPES:
        raise EvaluationError(f"shape '{shape}' is not one of {', '.join(SHAPES)}")
    from tuneforge.data.examples import detect_shape
    from tuneforge.data.sources import inner_suffix, read_text

    max_length = max_length if max_length is not None else _default_max_length(model)
    stride = stride if stride is not None else max(1, max_length // 2)
    was_training = model.training
    model.eval()
    try:
        if hasattr(data, "train"):  # PreparedData: its held-out part when it has one
            data = data.validation or data.train
        if not isinstance(data, str | Path) and len(data) and isinstance(data[0], dict):
            name = data_label or f"{len(data)} prepared examples"
            sequences = [  # a list, or tuneforge.data's ExampleTable
                (example["input_ids"], example.get("labels"))
                for i in range(len(data))
                for example in _unpacked(data[i])
            ]
        else:
            if _is_file(data):
                if inner_suffix(Path(data)) in RECORD_SUFFIXES:
                    raise EvaluationError(
                        f"{data} holds records, not plain text: its JSON or table syntax would be scored; "
                        "score records by their answers (task scores: LLM.evaluate(file) in Python) or by a "
                        "run's validation loss (validation_split), or give a text file"
                    )
                name, texts = data_label or str(data), [read_text(data, encoding)]
            elif isinstance(data, str):
                name, texts = data_label or "text", [data]
            elif isinstance(data, list | tuple):
                name, texts = data_label or f"{len(data)} texts", list(data)
            else:
                raise EvaluationError(
                    f"cannot compute perplexity on {type(data).__name__}; pass a text file, "
                    "a string, a list of strings or prepared examples"
                )
            if len(texts) == 1 and (
                shape == "lines" or shape == "auto" and detect_shape(texts[0]) == "lines"
            ):
                texts = [line.strip() for line in texts[0].split("\n") if line.strip()]
                name += " (per line)"
            sequences = [(ids, None) for ids in tokenizer(texts)["input_ids"]]
        tokens, done = sum(len(ids) for ids, _ in sequences), 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(min(done, tokens), tokens)

        total, count = sequences_nll(model, sequences, max_length, stride, advance)
    finally:
        model.train(was_training)
    if count == 0:
        raise EvaluationError("the data holds fewer than 2 tokens, so no token could be scored")
    loss = total / count
    return PerplexityResult(label, name, math.exp(loss), loss, count, max_length, stride)


def format_table(results: Sequence[PerplexityResult], baseline: str | None = None) -> str:
    """A Markdown table of results; with `baseline`, a column of the perplexity change against that label."""
    base = next((r.perplexity for r in results if r.label == baseline), None)
    header = "| model | data | perplexity | loss | tokens | max_length | stride |"
    if base is not None:
        header += f" vs {baseline} |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        row = (
            f"| {r.label} | {r.data} | {r.perplexity:.3f} | {r.loss:.4f} | {r.tokens} | {r.max_length} | "
            f"{r.stride} |"
        )
        if base is not None:
            row += f" {r.perplexity - base:+.3f} ({100 * (r.perplexity / base - 1):+.1f}%) |"
        lines.append(row)
    return "\n".join(lines)


def append_history(path: str | Path, results: Sequence[PerplexityResult]) -> Path:
    """Add results to a JSON-lines history of past evaluations (one record per line, with a timestamp)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with path.open("a") as history:
        for result in results:
            history.write(json.dumps({"time": stamp, **asdict(result)}) + "\n")
    return path


def read_history(path: str | Path) -> list[dict]:
    """Past evaluations, oldest first; an absent file is an empty history."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def default_history_path() -> Path:
    from tuneforge.paths import tuneforge_home

    return tuneforge_home() / "perplexity-history.jsonl"
