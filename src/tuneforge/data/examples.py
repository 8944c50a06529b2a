"""Turn a data file or folder into tokenized training examples: read -> clean -> dedup -> select -> split -> tokenize.

    from tuneforge.data.examples import prepare_examples
    prepared = prepare_examples("../shared/data/roleplay_alpaca.json", tokenizer, config)
    print(prepared.describe())          # shape: formatted; read: 3146, cleaned: 3146, ...

Each stage is a function of its own module (sources, formats, cleaning, diversity, tokenization, packing); this
one runs them in order, counts what each did, and caches the result (see cache.py) so the second prepare of
the same data is a memory-mapped load. Raw text is one document, so it is split after chunking (over chunks);
every other shape is split over records before tokenizing.
"""

from __future__ import annotations

import logging
import random
import re
import statistics
from collections import Counter
from collections.abc import Collection
from pathlib import Path

from tuneforge.config import shown_format
from tuneforge.data import cache
from tuneforge.data.chat import chat_conversation, render_chat
from tuneforge.data.cleaning import clean_records, record_text
from tuneforge.data.diversity import select_diverse
from tuneforge.data.formats import (
    check_formatted,
    detect_record_shape,
    input_output_pair,
    labelled_segments,
    load_format,
    render_formatted,
)
from tuneforge.data.packing import pack_dataset
from tuneforge.data.prepared import ExampleTable, PreparedData
from tuneforge.data.screening import (
    count_empty_turns,
    count_placeholders,
    fill_placeholders,
    refuse_flagged,
    refuse_untrained_kinds,
)
from tuneforge.data.sources import Source, data_files, read_source
from tuneforge.data.tokenization import IGNORE_INDEX, tokenize_chunked, tokenize_segments
from tuneforge.errors import DataError

__all__ = [
    "IGNORE_INDEX",
    "PreparedData",
    "detect_shape",
    "detect_text_shape",
    "prepare_examples",
    "split_examples",
]
log = logging.getLogger(__name__)
TEXT_SHAPES = ("raw", "lines")


def detect_shape(text: str) -> str:
    """'raw' for continuous text (prose, wrapped or one sentence per line), 'lines' for one example per line."""
    return detect_text_shape(text)[0]


# Words a sentence rarely ends on: a line ending on one was cut mid-phrase (hard-wrapped text).
PHRASE_WORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "as",
        "at",
        "but",
        "by",
        "for",
        "from",
        "if",
        "in",
        "into",
        "is",
        "of",
        "on",
        "or",
        "so",
        "than",
        "that",
        "the",
        "their",
        "then",
        "this",
        "to",
        "was",
        "were",
        "which",
        "who",
        "with",
    }
)
SENTENCE_ENDS = tuple(".!?:;\"')]\u201d\u2019\u2026")


def detect_text_shape(text: str) -> tuple[str, str]:
    """(shape, the evidence that decided it), as the preview states it.

    Prose one sentence per line (lines end a sentence, the next starts a new one in capitals) and hard-wrapped
    prose (lines end mid-phrase) are one text: 'raw', trained across line ends. Lines that repeat a template
    (many share an opening), or that neither end a sentence nor break one, are examples: 'lines'. Anything
    else is unsure and read as 'raw', the shape that does not cut the context at every line.
    """
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) < 2:
        return "raw", "the text is a single line, so it is cut into chunks"
    if "\n\n" in text.strip("\n"):
        return "raw", "blank lines separate paragraphs"
    long_lines = sum(len(line) > 2000 for line in lines)
    if long_lines > 0.1 * len(lines):
        return "raw", f"{long_lines} of {len(lines)} lines are longer than 2000 characters"
    n, pairs = len(lines), list(zip(lines, lines[1:], strict=False))
    ended = sum(line.endswith(SENTENCE_ENDS) for line in lines)
    after_end = [b for a, b in pairs if a.endswith(SENTENCE_ENDS)]
    capital_after_end = sum(not b[0].islower() for b in after_end)  # a new sentence: capital, digit or quote
    mid_phrase = sum(line.endswith((",", "-")) or line.split()[-1].lower() in PHRASE_WORDS for line in lines)
    mid_phrase = mid_phrase if n >= 3 else 0  # the last word of one of two lines is no evidence of wrapping
    continued = sum(b[0].islower() and not a.endswith(SENTENCE_ENDS) for a, b in pairs)
    openings = Counter(_opening(line) for line in lines)
    templated = sum(c for c in openings.values() if c >= max(3, 0.05 * n))  # lines sharing a common opening
    lengths = [len(line) for line in lines]
    spread = statistics.pstdev(lengths) / statistics.mean(lengths)
    facts = [f"{ended} of {n} lines end a sentence"]
    if after_end:
        facts.append(f"{capital_after_end} of {len(after_end)} after one start a new sentence")
    facts += [
        f"{mid_phrase} end mid-phrase",
        f"{continued} continue the line before in lowercase",
        f"{templated} share a common opening",
        f"line length spread {spread:.2f}",
    ]
    evidence = ", ".join(facts) if n >= 3 else ""  # two lines are too few to count evidence over
    if templated >= 0.5 * n:
        return "lines", _stated("one example per line: most lines repeat a template", evidence)
    if ended >= 0.6 * n and capital_after_end >= 0.6 * len(after_end):
        return "raw", _stated("prose one sentence per line: the lines run on as one text", evidence)
    if mid_phrase >= 0.15 * n:
        return "raw", _stated("wrapped prose: lines break mid-phrase", evidence)
    if (
        ended < 0.2 * n
        and mid_phrase < 0.05 * n
        or ended >= 0.6 * n
        and capital_after_end < 0.3 * len(after_end)
    ):
        return "lines", _stated("one short example per line, no blank lines", evidence)
    return "raw", _stated(
        "unsure whether lines are examples or one text, so read as one text (raw keeps "
        "the context; set format lines to train each line alone)",
        evidence,
    )


def _opening(line: str) -> str:
    """A line's first two words, or its label alone ('Question:', 'User:'), lowercased, numbers as '#'."""
    words = re.sub(r"\d+", "#", line.lower()).split()
    return words[0] if words[0].endswith(":") else " ".join(words[:2])


def _stated(verdict: str, evidence: str) -> str:
    return f"{verdict} ({evidence})" if evidence else verdict


def held_out_count(examples: int, validation_split: float) -> int:
    """How many of `examples` a validation_split holds out: a count (>= 1), or a fraction (at least one)."""
    return int(validation_split) if validation_split >= 1 else max(1, round(examples * validation_split))


def split_examples(examples: list, validation_split: float, seed: int) -> tuple[list, list]:
    """A deterministic train/validation split: a fraction (< 1) or a count (>= 1) held out, chosen by `seed`."""
    if validation_split <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = held_out_count(len(examples), validation_split)
    if n_val >= len(examples):
        raise DataError(
            f"validation_split {validation_split:g} would hold out all {len(examples)} examples; "
            "use a smaller count or a fraction such as 0.01"
        )
    held_out = set(order[:n_val])
    return (
        [e for i, e in enumerate(examples) if i not in held_out],
        [e for i, e in enumerate(examples) if i in held_out],
    )


def hold_out_last_chunks(
    lengths: list[int], validation_split: float, overlap_len: int, section_starts: Collection[int] = ()
) -> tuple[list[int], list[int]]:
    """Raw text's split: (training, held-out) chunk indices. The last chunks are held out and the chunks before
    them that share tokens with them (neighbours overlap by `overlap_len`) are trained on by neither, so no
    held-out token is ever trained on; a random choice of overlapping chunks would leak most of them. A chunk
    in `section_starts` begins a hard-cut section: no chunk before it shares its text."""
    n = len(lengths)
    if validation_split <= 0 or n < 2:
        return list(range(n)), []
    held = held_out_count(n, validation_split)
    first_held = keep = n - held
    shared = overlap_len  # tokens of the first held-out chunk that chunk keep-1 may still hold
    starts = set(section_starts)
    while keep > 0 and shared > 0 and keep not in starts:
        keep -= 1
        shared -= lengths[keep] - overlap_len  # chunk keep starts this many tokens before the next one
    if keep < 1:
        raise DataError(
            f"validation_split {validation_split:g} would hold out all {n} chunks of the text (with the "
            f"{first_held - keep} before them that overlap the held-out ones); use a smaller count or "
            "fraction, or give validation_data"
        )
    return list(range(keep)), list(range(first_held, n))


def prepare_examples(
    path: str | Path,
    tokenizer,
    config,
    encoding: str | None = None,
    use_cache: bool = True,
    strict: bool = True,
) -> PreparedData:
    """Read, clean, shape, split and tokenize `path` as `config` says, from the cache when nothing changed.

    A folder written by save_preprocessed_data is used as it is (HappyTransformer's load_preprocessed_data).
    `strict` refuses placeholders and empty assistant turns the config does not allow; the preview passes
    False, to count and show them instead.
    """
    if (Path(path) / cache.MARKER).is_file():
        return cache.load_preprocessed_data(path)
    if encoding is not None and encoding != config.encoding:
        config = config.replace(encoding=encoding)
    validation_files = data_files(config.validation_data, "validation_data") if config.validation_data else []
    fingerprint = cache.data_fingerprint(data_files(path), validation_files, tokenizer, config)
    folder = cache.datasets_home() / fingerprint
    prepared = cache.load_cached(folder) if use_cache else None
    if prepared is None:
        prepared, removed = build_examples(path, tokenizer, config, fingerprint)
        if use_cache:
            try:
                cache.save_prepared(prepared, folder, removed)
                prepared = cache.load_prepared(folder)
                prepared.cache_hit = False
            except (
                OSError
            ) as error:  # a read-only home must not stop training; it only costs the next run time
                log.warning("could not cache prepared data in %s: %s", folder, error)
        elif config.save_removed:
            raise DataError("save_removed needs the dataset cache; remove use_cache=False")
    if strict:
        refuse_flagged(prepared.report, config)  # on cache hits too: the counts are kept in the report
    if config.save_removed and prepared.cache_dir is not None:
        cache.copy_removed(prepared.cache_dir, config.save_removed)
    return prepared


def build_examples(path, tokenizer, config, fingerprint: str = "data") -> tuple[PreparedData, list[dict]]:
    """The whole pipeline without the cache: (prepared data, removed records with reasons)."""
    source = read_source(
        path, config.encoding, config.text_column, config.sql_table, config.sql_column, config.hard_cut_string
    )
    refuse_untrained_kinds(source.records, str(path))
    shape, reason = choose_shape(source, config)
    report: dict = {"files": len(source.files), "shape_reason": reason}
    records = source_records(source, shape, config, report)
    records = flag_records(records, shape, config, report)
    counts: dict[str, int] = {"read": len(records)}
    kept, removed, removed_counts = _clean(records, config)
    dropped = {index for index, _, _ in removed}
    origin = [i for i in range(len(records)) if i not in dropped]  # each kept record's index as read
    report["unicode_normalized"] = removed_counts.pop("unicode normalized (kept)", 0)
    report["removed"] = removed_counts
    filtered = sum(n for name, n in removed_counts.items() if "duplicates" not in name)
    counts["cleaned"] = len(records) - filtered
    counts["deduplicated"] = len(kept)
    if not records:
        raise DataError(f"{path} holds no text (nothing visible is left once it is read)")
    if not kept:
        whole = (
            " (raw text: each hard-cut section is one record, so a filter matching anywhere in it removes the "
            "whole section; use format lines to filter line by line)"
            if shape == "raw"
            else ""
        )
        raise DataError(f"cleaning removed all {len(records)} records of {path}; loosen the filters{whole}")
    if config.diversity_clusters:
        chosen, clusters = select_diverse(
            [record_text(r) for r in kept],
            config.diversity_clusters,
            config.diversity_subset,
            config.max_per_cluster,
            config.seed,
        )
        kept, origin = [kept[i] for i in chosen], [origin[i] for i in chosen]
        report["clusters"] = clusters.to_dict()
        counts["selected"] = len(kept)
    elif config.diversity_subset or config.max_per_cluster:
        raise DataError(
            "diversity_subset and max_per_cluster need diversity_clusters (how many clusters to form)"
        )

    if shape == "formatted":
        report["template_usage"] = check_formatted(kept, load_format(config.format_file), indexes=origin)
    validation_records = None
    if config.validation_data:
        report["validation_data"] = str(config.validation_data)
        validation_source = read_source(
            config.validation_data,
            config.encoding,
            config.text_column,
            config.sql_table,
            config.sql_column,
            config.hard_cut_string,
        )
        refuse_untrained_kinds(validation_source.records, str(config.validation_data))
        validation_records = flag_records(
            source_records(validation_source, shape, config, {}), shape, config, {}
        )
        validation_records, _, _ = _clean(validation_records, config)
    elif shape != "raw":
        kept, validation_records = split_examples(kept, config.validation_split, config.seed)
    if validation_records:
        counts["train_records"], counts["validation_records"] = len(kept), len(validation_records)

    train = _tokenize(kept, shape, tokenizer, config, report, f"{fingerprint}-train")
    validation = _tokenize(validation_records or [], shape, tokenizer, config, {}, f"{fingerprint}-val")
    train = _drop_unlearnable(train, counts) if train is not None else None
    validation = _drop_unlearnable(validation, {}) if validation is not None else None
    if train is None or len(train) == 0:
        hint = (
            f"; the prompts of {counts['dropped_without_loss']} examples fill all cutoff_len "
            f"({config.cutoff_len}) tokens, so raise cutoff_len"
            if counts.get("dropped_without_loss")
            else ""
        )
        raise DataError(f"data '{path}' gave no training example with 2 or more tokens that carry loss{hint}")
    if shape == "raw":  # where each hard-cut section's chunks begin (the split and recipe auto read it)
        report["section_starts"] = [i for i, first in enumerate(train["doc_sections"]) if first]
        train = train.remove_columns("doc_sections")
        if validation is not None and "doc_sections" in validation.column_names:
            validation = validation.remove_columns("doc_sections")
    if shape == "raw" and validation_records is None:
        train_idx, val_idx = hold_out_last_chunks(
            ExampleTable(train).lengths,
            config.validation_split,
            config.effective_overlap_len,
            report["section_starts"],
        )
        train, validation = train.select(train_idx), train.select(val_idx) if val_idx else None
    counts["train_examples"] = len(train)
    counts["validation_examples"] = len(validation) if validation is not None else 0
    counts["train_tokens"] = sum(ExampleTable(train).lengths)
    counts["loss_tokens"] = int(sum(train["n_loss"]))
    if getattr(config, "packing", False):
        train = pack_dataset(_core(train), config.cutoff_len, config.num_proc, f"{fingerprint}-packed")
        if validation is not None:
            validation = pack_dataset(
                _core(validation), config.cutoff_len, config.num_proc, f"{fingerprint}-vp"
            )
        counts["packed_blocks"] = len(train)
    prepared = PreparedData(
        shape,
        ExampleTable(_core(train)),
        ExampleTable(_core(validation)) if validation is not None else [],
        counts,
        report,
    )
    removed_rows = [{"index": i, "reason": why, "record": r} for i, r, why in removed]
    return prepared, removed_rows


def choose_shape(source: Source, config) -> tuple[str, str]:
    """(shape, why) — the preview states both."""
    if config.format != "auto":
        if source.kind == "text" and config.format not in TEXT_SHAPES:
            raise DataError(
                f"{shown_format(config)} reads records (JSON, JSONL, CSV, Parquet), but "
                f"{source.files[0]} is plain text; use format raw or lines"
            )
        return config.format, "set by format"
    if source.kind == "text":
        shape, why = detect_text_shape(source.text)
        return shape, f"detected: {why}"
    origin = str(source.files[0]) if len(source.files) == 1 else f"the records of {config.data}"
    shape = detect_record_shape(source.records, config.text_column, config.format_file, origin)
    return shape, f"detected from the records' keys ({', '.join(sorted(source.records[0])[:6])})"


def source_records(source: Source, shape: str, config, report: dict) -> list[dict]:
    """The unit that cleaning, dedup and splitting work on: a record, a line, or a hard-cut section of text."""
    if source.kind == "text":
        if shape == "lines":
            lines = source.text.split("\n")
            report["blank_lines_skipped"] = sum(1 for line in lines if not line.strip())
            return [{"text": line.strip()} for line in lines if line.strip()]
        cut = config.hard_cut_string or None
        sections = source.text.split(cut) if cut else [source.text]
        report["empty_sections_skipped"] = sum(1 for s in sections if not s.strip())
        return [{"text": s} for s in sections if s.strip()]
    if shape in ("text", "raw", "lines"):
        column = config.text_column or "text"
        missing = [i for i, r in enumerate(source.records) if not isinstance(r.get(column), str)]
        if missing:
            keys = ", ".join(sorted(source.records[missing[0]])) or "none"
            raise DataError(
                f"{len(missing)} records have no text in '{column}' (first: record {missing[0]}, "
                f"keys: {keys}); choose the field with text_column"
            )
        return [{"text": r[column]} for r in source.records]
    return source.records


def flag_records(records: list[dict], shape: str, config, report: dict) -> list[dict]:
    """Fill the config's placeholder values, and count what is left unfilled and the empty assistant turns."""
    if shape not in ("formatted", "input_output", "chat"):
        return records  # {{ }} in raw text is text (code, wiki markup), not LLaMA-Factory's placeholders
    values = getattr(config, "placeholders", None)
    records = fill_placeholders(records, values)
    report["placeholders"] = count_placeholders(records, values)
    if shape == "chat":
        report["empty_turns"] = count_empty_turns(records)
    return records


def _clean(records: list[dict], config):
    return clean_records(
        records,
        clean=config.clean,
        filter_patterns=config.filter_patterns,
        min_length=config.min_length,
        max_length=config.max_length,
        normalize_unicode=config.normalize_unicode,
        dedup=config.dedup,
        near_dup_threshold=config.near_dup_threshold,
    )


def _tokenize(records: list[dict], shape: str, tokenizer, config, report: dict, fingerprint: str):
    """An Arrow dataset with input_ids, labels, truncated and n_loss (None for no records)."""
    if not records:
        return None
    if shape in ("raw", "text"):
        dataset = tokenize_chunked(
            [r["text"] for r in records],
            tokenizer,
            cutoff_len=config.cutoff_len,
            overlap_len=config.effective_overlap_len,
            newline_favor_len=config.newline_favor_len,
            hard_cut_string=config.hard_cut_string,
            add_eos_token=config.add_eos_token,
            num_proc=config.num_proc,
            fingerprint=fingerprint,
        )
        report.update(
            tokens=sum(dataset["doc_tokens"]), cuts_moved_to_newline=sum(dataset["doc_newline_cuts"])
        )
        # doc_sections stays for raw text until the split has read where sections begin
        done = ["doc_tokens", "doc_newline_cuts"] + (["doc_sections"] if shape == "text" else [])
        return dataset.remove_columns(done)
    eos = "always" if config.add_eos_token else "never"
    cutoff = config.cutoff_len
    if shape == "lines":
        examples: list[list[tuple]] = [[(r["text"], True)] for r in records]
    elif shape == "formatted":
        fmt = load_format(config.format_file)
        report["format_file"] = fmt.describe()
        usage = check_formatted(records, fmt)
        report.setdefault("template_usage", usage)  # build_examples counts all records, before the split
        examples = [render_formatted(r, fmt, config.train_on_source) for r in records]
    elif shape == "input_output":
        if all(
            isinstance(r.get("segments"), list) for r in records
        ):  # axolotl: labelled segments, cutoff_len
            examples = [labelled_segments(r, i) for i, r in enumerate(records)]
        else:
            pairs = [input_output_pair(r, i) for i, r in enumerate(records)]
            examples = [
                [(s, config.train_on_source, config.source_max_len), (t, True, config.target_max_len)]
                for s, t in pairs
            ]
            cutoff = None  # QLoRA's recipe: source_max_len and target_max_len bound each part instead
            report["length_bounds"] = "source_max_len, target_max_len"
    elif shape == "chat":
        conversations = [chat_conversation(r, i) for i, r in enumerate(records)]
        examples = [
            render_chat(messages, tokenizer, config.train_on_source, tools=tools)
            for messages, tools in conversations
        ]
        report["tool_records"] = sum(bool(tools) for _, tools in conversations)
        eos = "if_missing" if config.add_eos_token else "never"
    else:
        raise DataError(f"unknown data shape '{shape}'")
    return tokenize_segments(
        examples, tokenizer, cutoff_len=cutoff, eos=eos, num_proc=config.num_proc, fingerprint=fingerprint
    )


def _drop_unlearnable(dataset, counts: dict):
    """Drop examples under 2 tokens or with no loss token (e.g. a prompt that filled the whole cutoff)."""
    import numpy as np

    lengths = np.asarray(ExampleTable(dataset).lengths)
    n_loss = np.asarray(dataset["n_loss"])
    keep = np.flatnonzero((lengths >= 2) & (n_loss > 0))
    counts["truncated"] = int(sum(dataset["truncated"]))
    counts["dropped_without_loss"] = int(len(dataset) - len(keep))
    return dataset.select(keep) if len(keep) < len(dataset) else dataset


def _core(dataset):
    """Only the columns training reads."""
    extra = [c for c in dataset.column_names if c not in ("input_ids", "labels", "position_ids")]
    return dataset.remove_columns(extra) if extra else dataset
