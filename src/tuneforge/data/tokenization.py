"""Tokenize shaped examples into an Arrow dataset of `input_ids` and `labels` (-100 = no loss), in parallel.

    from tuneforge.data.tokenization import tokenize_segments
    dataset = tokenize_segments([[("### Instruction:\\nAdd 2+2\\n\\n### Response:\\n", False), ("4", True)]],
                                tokenizer, cutoff_len=256, eos="always")
    dataset[0]["labels"]   # -100 on every prompt token, the answer's ids (and EOS) after

Each segment is tokenized on its own, so a token never straddles prompt and answer and the -100 labels fall
exactly on the prompt's tokens (the QLoRA recipe of seed 002 does the same). Raw text and text records are cut
by `chunking.chunk_raw_text` instead. Both run through `datasets.map(batched=True, num_proc=...)`.
"""

from __future__ import annotations

from typing import Any

from tuneforge.data.chunking import chunk_raw_text

IGNORE_INDEX = -100  # label value that carries no loss (PyTorch's cross_entropy default)
# always: unless the example's text already ends with the EOS token; if_missing: also unless the last answer
# holds it (chat templates end each turn with it, often followed by a newline)
EOS_MODES = ("always", "if_missing", "never")


def _map(columns: dict[str, list], function, num_proc: int, fingerprint: str, desc: str):
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    dataset = Dataset.from_dict(columns)
    workers = min(num_proc, max(1, len(dataset) // 64)) if num_proc > 1 else None  # tiny data: no workers
    # new_fingerprint spares datasets from hashing the function and tokenizer (slow, and warns); the tuneforge
    # cache key already covers every input.
    return dataset.map(
        function,
        batched=True,
        batch_size=1000,
        num_proc=workers,
        remove_columns=dataset.column_names,
        new_fingerprint=fingerprint,
        desc=desc,
    )


def tokenize_segments(
    examples: list[list[tuple]],
    tokenizer,
    *,
    cutoff_len: int | None,
    eos: str = "always",
    num_proc: int = 1,
    fingerprint: str = "segments",
):
    """One row per example; a segment is (text, carries_loss) or (text, carries_loss, max_tokens)."""
    columns = {
        "texts": [[s[0] for s in e] for e in examples],
        "loss": [[bool(s[1]) for s in e] for e in examples],
        "caps": [[int(s[2]) if len(s) > 2 and s[2] else 0 for s in e] for e in examples],
    }

    def encode(batch: dict) -> dict:
        return encode_batch(batch, tokenizer, cutoff_len, eos)

    return _map(columns, encode, num_proc, fingerprint, "tokenizing")


def encode_batch(batch: dict, tokenizer, cutoff_len: int | None, eos: str) -> dict:
    """The datasets.map function of tokenize_segments: segments -> input_ids, labels, truncated, n_loss."""
    flat = [text for texts in batch["texts"] for text in texts]
    encoded = iter(tokenizer(flat, add_special_tokens=False)["input_ids"]) if flat else iter(())
    eos_id, eos_token = tokenizer.eos_token_id, tokenizer.eos_token
    out: dict[str, list] = {"input_ids": [], "labels": [], "truncated": [], "n_loss": []}
    for texts, losses, caps in zip(batch["texts"], batch["loss"], batch["caps"], strict=True):
        ids: list[int] = []
        labels: list[int] = []
        truncated = False
        last_answer: list[int] = []
        for _, carries_loss, cap in zip(texts, losses, caps, strict=True):
            segment = list(next(encoded))
            if cap and len(segment) > cap:
                segment, truncated = segment[:cap], True
            ids += segment
            labels += segment if carries_loss else [IGNORE_INDEX] * len(segment)
            if carries_loss:
                last_answer = segment
        # A format file or template may end the answer with the EOS already (ChatML's <|im_end|>): never twice.
        ends_with_eos = bool(eos_token) and "".join(texts).rstrip().endswith(eos_token)
        wants_eos = not ends_with_eos and (
            eos == "always" or (eos == "if_missing" and eos_id not in last_answer)
        )
        if wants_eos and eos_id is not None:
            ids.append(eos_id)
            labels.append(eos_id)  # the model must learn to stop: EOS carries loss
        if cutoff_len and len(ids) > cutoff_len:
            ids, labels, truncated = ids[:cutoff_len], labels[:cutoff_len], True
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["truncated"].append(truncated)
        out["n_loss"].append(
            sum(label != IGNORE_INDEX for label in labels[1:])
        )  # position 0 is never predicted
    return out


def tokenize_chunked(
    texts: list[str],
    tokenizer,
    *,
    cutoff_len: int,
    overlap_len: int,
    newline_favor_len: int,
    hard_cut_string: str,
    add_eos_token: bool,
    num_proc: int = 1,
    fingerprint: str = "chunks",
):
    """Chunks of each document by the raw-text rules; every token carries loss (unsupervised)."""
    settings: dict[str, Any] = dict(
        cutoff_len=cutoff_len,
        overlap_len=overlap_len,
        newline_favor_len=newline_favor_len,
        hard_cut_string=hard_cut_string,
        add_eos_token=add_eos_token,
    )

    def chunk(batch: dict) -> dict:
        out: dict[str, list] = {
            "input_ids": [],
            "labels": [],
            "truncated": [],
            "n_loss": [],
            "doc_tokens": [],
            "doc_sections": [],
            "doc_newline_cuts": [],
        }
        for text in batch["text"]:
            chunks, stats = chunk_raw_text(text, tokenizer, **settings)
            for i, ids in enumerate(chunks):
                out["input_ids"].append(ids)
                out["labels"].append(ids)
                out["truncated"].append(False)
                out["n_loss"].append(len(ids) - 1)
                first = i == 0  # document totals ride on its first chunk, so they can be summed afterwards
                out["doc_tokens"].append(stats.tokens if first else 0)
                out["doc_sections"].append(stats.sections if first else 0)
                out["doc_newline_cuts"].append(stats.newline_cuts if first else 0)
        return out

    return _map({"text": texts}, chunk, num_proc, fingerprint, "chunking")
