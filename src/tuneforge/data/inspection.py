"""Preview prepared data before any training: shape, counts per stage, token lengths, loss tokens, examples.

    from tuneforge.data.inspection import inspect_data
    inspection = inspect_data("../shared/data/roleplay_alpaca.json", tokenizer, config, n_examples=3,
                              histogram="lengths.png")
    print(inspection.render())

In the rendered examples, text whose tokens carry no loss (prompts, chat scaffolding, the first token of a
packed example) is wrapped in ⟦ ⟧, so it is plain to see what the model will and will not be trained to write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from tuneforge.data.examples import prepare_examples
from tuneforge.data.prepared import ExampleTable, PreparedData
from tuneforge.data.tokenization import IGNORE_INDEX

NO_LOSS_OPEN, NO_LOSS_CLOSE = "⟦", "⟧"


@dataclass
class Inspection:
    path: str
    prepared: PreparedData
    cutoff_len: int
    lengths: list[int]
    examples: list[tuple[int, str]] = field(default_factory=list)  # (index, rendered text)
    histogram_path: Path | None = None

    def render(self) -> str:
        return render_report(self)


def inspect_data(
    path: str | Path,
    tokenizer,
    config,
    n_examples: int = 3,
    histogram: str | Path | bool | None = None,
    prepared: PreparedData | None = None,
) -> Inspection:
    """Prepare `path` (from the cache when possible; or take `prepared`, already prepared from it with
    `config`) and gather what the preview shows.

    The histogram PNG goes to `histogram`, or with None to a place of its own (histogram_home), or nowhere
    with False. Placeholders and empty assistant turns are counted and shown here, not refused.
    """
    if prepared is None:
        prepared = prepare_examples(path, tokenizer, config, strict=False)
    lengths = ExampleTable(getattr(prepared.train, "rows", prepared.train)).lengths
    count = len(prepared.train)
    picks = (
        sorted({round(i * (count - 1) / max(n_examples - 1, 1)) for i in range(n_examples)}) if count else []
    )
    examples = [
        (i, mark_no_loss(prepared.train[i]["input_ids"], prepared.train[i]["labels"], tokenizer))
        for i in picks[:n_examples]
    ]
    inspection = Inspection(str(path), prepared, config.cutoff_len, lengths, examples)
    if histogram is not False:
        # True is no documented value (a str/Path, None or False); it would fail in Path() as before
        target = Path(cast("str | Path", histogram)) if histogram else histogram_home(path, prepared)
        inspection.histogram_path = write_histogram_png(
            lengths, target, config.cutoff_len, f"{Path(path).name}: {prepared.shape}"
        )
    return inspection


def histogram_home(path: str | Path, prepared: PreparedData) -> Path:
    """Where a histogram goes unasked: beside the prepared data in the cache (its folder is named by the data's
    fingerprint, so two files of the same name never share it), else under $TUNEFORGE_HOME/histograms."""
    from tuneforge.data.cache import datasets_home

    if prepared.cache_dir is not None and Path(prepared.cache_dir).parent == datasets_home():
        return Path(prepared.cache_dir) / "token-lengths.png"
    import hashlib

    from tuneforge.paths import tuneforge_home

    name = Path(str(path).rstrip("/")).name.split(".")[0] or "data"
    unique = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]
    return tuneforge_home() / "histograms" / f"{name}-{unique}-token-lengths.png"


def mark_no_loss(input_ids: list[int], labels: list[int], tokenizer) -> str:
    """The decoded example with every run of no-loss tokens wrapped in ⟦ ⟧."""
    pieces, start = [], 0
    for end in range(1, len(input_ids) + 1):
        if end == len(input_ids) or (labels[end] == IGNORE_INDEX) != (labels[start] == IGNORE_INDEX):
            text = tokenizer.decode(input_ids[start:end])
            pieces.append(f"{NO_LOSS_OPEN}{text}{NO_LOSS_CLOSE}" if labels[start] == IGNORE_INDEX else text)
            start = end
    return "".join(pieces)


def text_histogram(lengths: list[int], cutoff_len: int, bins: int = 10, width: int = 40) -> str:
    """Token-length histogram as text bars, one line per bin; the last bin ends at cutoff_len."""
    if not lengths:
        return "  (no examples)"
    top = max(max(lengths), cutoff_len)
    edges = np.linspace(0, top, bins + 1)
    counts, _ = np.histogram(lengths, bins=edges)
    peak = max(counts.max(), 1)
    lines = []
    for low, high, n in zip(edges[:-1], edges[1:], counts, strict=True):
        bar = "█" * int(round(width * n / peak)) or ("▏" if n else "")
        lines.append(f"  {int(low):6d}-{int(high):<6d} {n:7d} {bar}")
    return "\n".join(lines)


def write_histogram_png(lengths: list[int], path: str | Path, cutoff_len: int, title: str) -> Path:
    """Save the token-length histogram as a PNG (written beside, then renamed: never half written)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.hist(lengths, bins=40, color="#4c72b0")
    axes.axvline(cutoff_len, color="#c44e52", linestyle="--", label=f"cutoff_len = {cutoff_len}")
    axes.set(xlabel="tokens per training example", ylabel="examples", title=title)
    axes.legend()
    figure.tight_layout()
    temporary = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temporary)
    temporary.replace(path)
    return path


def flagged_lines(report: dict) -> list[str]:
    """Tool-call records, placeholders left unfilled and empty assistant turns, as the preview states them."""
    lines = []
    if report.get("tool_records"):
        lines.append(
            f"tools: {report['tool_records']} records define tools; tool calls carry loss, tool results do "
            "not"
        )
    placeholders = report.get("placeholders") or {}
    if placeholders.get("records"):
        names = ", ".join(f"{{{{{name}}}}} ({n})" for name, n in placeholders["names"].items())
        lines.append(
            f"placeholders: {placeholders['records']} records hold {names}, first records "
            f"{', '.join(map(str, placeholders['first']))}; training refuses them until placeholders "
            "gives their values"
        )
    empty = report.get("empty_turns") or {}
    if empty.get("records"):
        first = ", ".join(f"record {i} message {t}" for i, t in empty["first"])
        lines.append(
            f"empty assistant turns: {empty['records']} records ({first}); training refuses them unless "
            "allow_empty_turns is set"
        )
    return lines


def render_report(inspection: Inspection) -> str:
    prepared, counts, report = inspection.prepared, inspection.prepared.counts, inspection.prepared.report
    lines = [
        f"data: {inspection.path} ({report.get('files', 1)} file(s))",
        f"shape: {prepared.shape} ({report.get('shape_reason', 'cached')})",
    ]
    if "format_file" in report:
        usage = ", ".join(f"{k}: {v}" for k, v in report.get("template_usage", {}).items())
        lines.append(f"format file: {report['format_file']}; records per template: {usage}")
    stages = [
        f"read {counts['read']}",
        f"cleaned {counts['cleaned']}",
        f"deduplicated {counts['deduplicated']}",
    ]
    if "selected" in counts:
        stages.append(f"selected {counts['selected']}")
    if "train_records" in counts:
        stages.append(f"split {counts['train_records']} train / {counts['validation_records']} validation")
    stages.append(
        f"{'chunked' if prepared.shape in ('raw', 'text') else 'tokenized'} "
        f"{counts['train_examples']} train / {counts['validation_examples']} validation examples"
    )
    if prepared.shape == "raw" and "train_records" not in counts:
        stages[-1] += " (raw text is split over chunks)"
    lines.append("stages: " + " -> ".join(stages))
    lines += flagged_lines(report)
    removed = {k: v for k, v in report.get("removed", {}).items() if v}
    lines.append("removed: " + (", ".join(f"{k}: {v}" for k, v in removed.items()) or "none"))
    if report.get("unicode_normalized"):
        lines.append(f"unicode: {report['unicode_normalized']} records normalised to NFC")
    if "packed_blocks" in counts:
        lines.append(f"packing: {counts['packed_blocks']} blocks of up to {inspection.cutoff_len} tokens")
    tokens, loss = counts["train_tokens"], counts["loss_tokens"]
    lines.append(
        f"tokens: {tokens:,} in training examples, {loss:,} carry loss ({100 * loss / max(tokens, 1):.1f}%);"
        f" truncated to fit: {counts.get('truncated', 0)} examples; dropped without loss tokens: "
        f"{counts.get('dropped_without_loss', 0)}"
    )
    if "cuts_moved_to_newline" in report:
        lines.append(
            f"{'raw text' if prepared.shape == 'raw' else 'text records'}: {report['tokens']:,} tokens of text, "
            f"{report['cuts_moved_to_newline']} cuts moved back to a newline"
        )
    if inspection.lengths:
        array = np.asarray(inspection.lengths)
        lines.append(
            f"token lengths (train): min {array.min()}, median {int(np.median(array))}, max {array.max()}, "
            f"cutoff_len {inspection.cutoff_len}"
        )
    lines.append(text_histogram(inspection.lengths, inspection.cutoff_len))
    if inspection.histogram_path:
        lines.append(f"histogram written to {inspection.histogram_path}")
    if "clusters" in report:
        from tuneforge.data.diversity import ClusterReport

        lines.append(ClusterReport(**report["clusters"]).render())
    where = prepared.cache_dir or "not cached"
    lines.append(f"cache: {'hit' if prepared.cache_hit else 'written'} ({where})")
    lines.append(f"\n{len(inspection.examples)} examples ({NO_LOSS_OPEN}…{NO_LOSS_CLOSE} = carries no loss):")
    for index, text in inspection.examples:
        lines.append(f"--- train example {index} ({len(prepared.train[index]['input_ids'])} tokens)")
        lines.append(text)
    return "\n".join(lines)
