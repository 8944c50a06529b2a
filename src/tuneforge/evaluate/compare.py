"""Before/after comparison: base vs adapters or checkpoints on the same prompts, seeds and settings.

    import tuneforge as tf
    llm = tf.load("default")
    llm.load_adapter("runs/demo/adapter", name="cheese")
    result = llm.compare(["To make a cheese sandwich "], heldout="heldout.txt")
    result.write("runs/demo")          # compare.md and compare.html: generations + perplexity table

`record_gallery` is the same comparison for one model at one training step: a run calls it at each save and
its folder collects a checkpoint-by-checkpoint gallery (gallery.md, gallery.html, gallery.jsonl).
"""

from __future__ import annotations

import dataclasses
import html
import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.evaluate.perplexity import PerplexityResult, perplexity
from tuneforge.generate import GenerationSettings, generate, resolve_settings
from tuneforge.models.adapters import BASE  # the label of the model with no adapter active

__all__ = ["BASE", "Comparison", "Variant", "compare", "record_gallery"]


@dataclass
class Variant:
    """One model to compare: a label, an LLM and the adapter to activate on it ("base" = none; None = as is)."""

    label: str
    llm: Any  # a tuneforge.LLM (not imported: the core never imports a face)
    adapter: str | None = None

    def active(self):
        return self.llm.use_adapter(self.adapter) if self.adapter is not None else nullcontext()


@dataclass
class Comparison:
    """Generations per (prompt, seed) for each variant, and each variant's held-out perplexity."""

    labels: list[str]
    prompts: list[str]
    seeds: list[int]
    settings: GenerationSettings
    outputs: dict[str, list[str]] = field(default_factory=dict)  # label -> texts in (prompt, seed) order
    perplexities: list[PerplexityResult] = field(default_factory=list)
    heldout: str | None = None

    def rows(self) -> list[tuple[str, int, list[str]]]:
        cases = [(p, s) for p in self.prompts for s in self.seeds]
        return [(p, s, [self.outputs[label][i] for label in self.labels]) for i, (p, s) in enumerate(cases)]

    def _settings_line(self) -> str:
        changed = {
            k: v
            for k, v in dataclasses.asdict(self.settings).items()
            if k != "seed" and v != getattr(GenerationSettings(), k)
        }
        shown = ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"
        return f"settings: {shown}; seeds: {', '.join(map(str, self.seeds))}"

    def _perplexity_rows(self) -> list[list[str]]:
        base = next((r.perplexity for r in self.perplexities if r.label == self.labels[0]), None)
        rows = []
        for r in self.perplexities:
            change = (
                ""
                if base is None or r.label == self.labels[0]
                else f"{r.perplexity - base:+.3f} ({100 * (r.perplexity / base - 1):+.1f}%)"
            )
            rows.append([r.label, f"{r.perplexity:.3f}", f"{r.loss:.4f}", str(r.tokens), change])
        return rows

    def to_markdown(self) -> str:
        def cell(text: str) -> str:
            return " ".join(text.split()).replace("|", "\\|")

        lines = [
            "# Before/after comparison",
            "",
            self._settings_line(),
            "",
            "## Generations",
            "",
            "| prompt | seed | " + " | ".join(self.labels) + " |",
            "|---|---|" + "---|" * len(self.labels),
        ]
        for prompt, seed, texts in self.rows():
            lines.append(f"| {cell(prompt)} | {seed} | " + " | ".join(cell(t) for t in texts) + " |")
        if self.perplexities:
            lines += [
                "",
                f"## Perplexity on held-out data `{self.heldout}`",
                "",
                f"| model | perplexity | loss | tokens | change vs {self.labels[0]} |",
                "|---|---|---|---|---|",
            ]
            lines += ["| " + " | ".join(row) + " |" for row in self._perplexity_rows()]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(label)}</th>" for label in self.labels)
        body = "".join(
            f"<tr><td class=p>{esc(p)}</td><td>{s}</td>"
            + "".join(f"<td><b>{esc(p)}</b>{esc(t)}</td>" for t in texts)
            + "</tr>"
            for p, s, texts in self.rows()
        )
        parts = [
            "<!doctype html><meta charset=utf-8><title>tuneforge comparison</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:.4em;vertical-align:top;max-width:30em}"
            "th{background:#f3f3f3}td.p{color:#555}</style>",
            "<h1>Before/after comparison</h1>",
            f"<p>{esc(self._settings_line())}</p>",
            f"<table><tr><th>prompt</th><th>seed</th>{head}</tr>{body}</table>",
        ]
        if self.perplexities:
            rows = "".join(
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                for row in self._perplexity_rows()
            )
            parts += [
                f"<h2>Perplexity on held-out data <code>{esc(str(self.heldout))}</code></h2>",
                f"<table><tr><th>model</th><th>perplexity</th><th>loss</th><th>tokens</th>"
                f"<th>change vs {esc(self.labels[0])}</th></tr>{rows}</table>",
            ]
        return "\n".join(parts) + "\n"

    def write(self, folder: str | Path, name: str = "compare") -> tuple[Path, Path]:
        """Write <folder>/<name>.md and <folder>/<name>.html; returns both paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        markdown, page = folder / f"{name}.md", folder / f"{name}.html"
        markdown.write_text(self.to_markdown())
        page.write_text(self.to_html())
        return markdown, page


def compare(
    variants: list[Variant],
    prompts: list[str],
    *,
    seeds: list[int] | tuple = (0,),
    settings: GenerationSettings | None = None,
    heldout=None,
    max_length: int | None = None,
    stride: int | None = None,
    shape: str = "auto",
    encoding: str = "utf-8",
) -> Comparison:
    """Generate every prompt with every seed on every variant (same settings), and score held-out perplexity."""
    settings = resolve_settings(settings)
    result = Comparison([v.label for v in variants], list(prompts), list(seeds), settings)
    for variant in variants:
        with variant.active():
            model, tokenizer = variant.llm.model, variant.llm.tokenizer
            result.outputs[variant.label] = [
                generate(model, tokenizer, prompt, dataclasses.replace(settings, seed=seed))
                for prompt in prompts
                for seed in seeds
            ]
            if heldout is not None:
                result.perplexities.append(
                    perplexity(
                        model,
                        tokenizer,
                        heldout,
                        max_length=max_length,
                        stride=stride,
                        label=variant.label,
                        shape=shape,
                        encoding=encoding,
                    )
                )
                result.heldout = result.perplexities[-1].data  # names the file and how it was read
    return result


def record_gallery(
    model,
    tokenizer,
    run_dir: str | Path,
    step: int,
    prompts: list[str],
    *,
    settings: GenerationSettings | None = None,
    heldout=None,
) -> Path:
    """Add this step's generations (and held-out perplexity) to the run's gallery; returns gallery.md.

    Called by a training run at each save, so the run folder shows the model changing checkpoint by checkpoint.
    """
    settings = resolve_settings(settings, max_new_tokens=40, seed=0) if settings is None else settings
    run_dir = Path(run_dir)
    record = {"step": step, "outputs": {p: generate(model, tokenizer, p, settings) for p in prompts}}
    if heldout is not None:
        record["perplexity"] = dataclasses.asdict(perplexity(model, tokenizer, heldout, label=f"step {step}"))
    with (run_dir / "gallery.jsonl").open("a") as log:
        log.write(json.dumps(record) + "\n")
    records = [json.loads(line) for line in (run_dir / "gallery.jsonl").read_text().splitlines() if line]
    gallery = Comparison(
        [f"step {r['step']}" for r in records], list(prompts), [settings.seed or 0], settings
    )
    gallery.outputs = {f"step {r['step']}": [r["outputs"].get(p, "") for p in prompts] for r in records}
    gallery.perplexities = [PerplexityResult(**r["perplexity"]) for r in records if "perplexity" in r]
    gallery.heldout = gallery.perplexities[0].data if gallery.perplexities else None
    markdown, _ = gallery.write(run_dir, "gallery")
    return markdown
