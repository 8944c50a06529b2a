"""The verbs for seeing what a model learned: generate, logits, perplexity, compare, merge, export.

    tuneforge generate --adapter runs/demo/adapter --stream "To make a cheese sandwich "
    tuneforge logits --adapter runs/demo/adapter "To be or not to"          # base and adapter side by side
    tuneforge perplexity heldout.txt --adapter runs/demo/adapter --stride 256
    tuneforge compare --adapter runs/demo/adapter --heldout heldout.txt --output runs/demo "To make "
    tuneforge merge --adapter runs/demo/adapter --output merged/
    tuneforge export --adapter runs/demo/adapter --gguf cheese.gguf

`--adapter` may be repeated and may also name a whole model folder (a checkpoint of a full fine-tune); an
adapter folder given as `--model` is its base plus that adapter, as if given to `--adapter`. The
model keys (--model, --precision, --device, --trust_remote_code) are RunConfig's and the sampling flags are
GenerationSettings', built by cli/flags.py; the handlers only parse, call the core and print.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import monotonic
from typing import Any

from tuneforge.cli.flags import MODEL_KEYS, add_setting_flags, add_verb, given_settings, run_config_from
from tuneforge.config import RunConfig
from tuneforge.errors import ModelError, TuneforgeError
from tuneforge.generate import GenerationSettings, resolve_settings

EVALUATION_FORMATS = ("auto", "raw", "lines")  # how perplexity reads a text file, as training would


def settings_from(args: argparse.Namespace) -> GenerationSettings:
    """The generation settings given as flags, validated by GenerationSettings."""
    given = given_settings(args, GenerationSettings)
    if "stop" in given:  # a shell passes "\n" as two characters
        given["stop"] = [s.encode().decode("unicode_escape") for s in given["stop"]]
    return resolve_settings(None, **given)


def trained_weights(path: str) -> Path:
    """The adapter or model folder `--adapter` names: the folder itself, or the adapter/ or model/ of a run or
    checkpoint folder."""
    folder = Path(path)
    if not folder.exists():
        raise ModelError(f"adapter folder '{path}' does not exist")
    for inner in (folder, folder / "adapter", folder / "model"):
        if (inner / "adapter_config.json").is_file() or (inner / "config.json").is_file():
            return inner
    raise ModelError(
        f"'{path}' is neither an adapter folder (adapter_config.json) nor a model folder (config.json), nor a run "
        "folder holding one"
    )


def load_variants(config: RunConfig, adapters: list[str] | None, include_base: bool = True) -> list:
    """The base model and each adapter as comparison variants; adapters share one copy of the base."""
    import tuneforge as tf
    from tuneforge.evaluate.compare import BASE, Variant
    from tuneforge.models.loading import adapter_base

    load: dict[str, Any] = dict(
        device=config.device, precision=config.precision, trust_remote_code=config.trust_remote_code
    )
    model, adapters = config.model, list(adapters or [])
    base_of_adapter = adapter_base(model) if Path(model).is_dir() else None
    if base_of_adapter is not None:  # --model ADAPTER: its base, and it as the first adapter, named as such
        model, adapters = base_of_adapter, [config.model, *adapters]
    folders = [trained_weights(path) for path in adapters]  # named before the base model loads
    base = tf.load(model, **load)
    variants = [Variant(BASE, base, BASE)] if include_base or not adapters else []
    for folder in folders:
        if (folder / "adapter_config.json").is_file():
            name = base.load_adapter(folder, name=_unique_label(folder, variants))
            variants.append(Variant(name, base, name))
        else:
            variants.append(Variant(_unique_label(folder, variants), tf.load(str(folder), **load), None))
    return variants


def _unique_label(folder: Path, variants: list) -> str:
    """A short label: the folder name, or its run folder's name for <run>/adapter; numbered if taken."""
    label = folder.parent.name if folder.name in ("adapter", "model") and folder.parent.name else folder.name
    taken = {v.label for v in variants}
    candidate, n = label, 2
    while candidate in taken or candidate == "base":
        candidate, n = f"{label}-{n}", n + 1
    return candidate


def _evaluation_format(config: RunConfig, given: str | None = None) -> str:
    if config.format not in EVALUATION_FORMATS:
        # an alias names what it was given as: `--format alpaca` is the 'formatted' format
        named = f"'{given}' ('{config.format}')" if given and given != config.format else f"'{config.format}'"
        raise TuneforgeError(
            f"format {named} cannot be scored as plain text; use one of {', '.join(EVALUATION_FORMATS)}"
        )
    return config.format


# ---------------------------------------------------------------------------------------------- verbs
def cmd_generate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    variants = load_variants(
        run_config_from(args, settings_class=GenerationSettings), args.adapter, include_base=False
    )
    # a completion continues the prompt; a chat answer is a reply to it, on its own line
    shown = f"user: {args.prompt}\nassistant: " if settings.chat else args.prompt
    for variant in variants:
        prefix = f"[{variant.label}] " if len(variants) > 1 else ""
        with variant.active():
            if args.stream:
                print(f"{prefix}{shown}", end="", flush=True)
                for piece in variant.llm.stream(args.prompt, settings):
                    print(piece, end="", flush=True)
                print()
            else:
                print(f"{prefix}{shown}{variant.llm.generate(args.prompt, settings)}")
    return 0


def cmd_logits(args: argparse.Namespace) -> int:
    variants = load_variants(run_config_from(args, settings_class=GenerationSettings), args.adapter)
    columns = []
    for variant in variants:
        with variant.active():
            columns.append(variant.llm.next_token_probs(args.text, args.top))
    print(f"next-token probabilities after {args.text!r}:")
    print("  ".join(f"{v.label[:28]:>38}" for v in variants))
    for rank in range(args.top):
        print("  ".join(f"{col[rank][1]:8.4f}  {col[rank][0]!r:28.28}" for col in columns))
    return 0


@contextmanager
def reading_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress callback for perplexity's tokens: a bar on a terminal, else a line every 15 s."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(file=sys.stderr, highlight=False)
    if console.is_terminal:
        columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"))
        with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task(label, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    last = monotonic()

    def print_line(done: int, total: int) -> None:
        nonlocal last
        now = monotonic()
        if now - last >= 15 and done < total:
            last = now
            print(f"{label}: {done:,}/{total:,} tokens read", file=sys.stderr, flush=True)

    yield print_line


def cmd_perplexity(args: argparse.Namespace) -> int:
    from tuneforge.evaluate.perplexity import (
        append_history,
        default_history_path,
        format_table,
        perplexity,
        read_history,
    )

    history = Path(args.history) if args.history else default_history_path()
    if args.show_history:
        records = read_history(history)
        print(f"{len(records)} past evaluations in {history}")
        for r in records:
            print(
                f"  {r['time']}  {r['label']:<24} {r['data']:<30} ppl {r['perplexity']:.3f}  "
                f"(max_length {r['max_length']}, stride {r['stride']})"
            )
        return 0
    config = run_config_from(args, settings_class=GenerationSettings)
    if not config.data:
        raise TuneforgeError("give a text file to evaluate, e.g. tuneforge perplexity heldout.txt")
    if Path(config.data).is_dir():
        raise TuneforgeError(f"'{config.data}' is a folder; give the text file to evaluate")
    if not Path(config.data).is_file():
        raise TuneforgeError(f"data file '{config.data}' does not exist")
    shape = _evaluation_format(config, getattr(args, "format", None))
    results = []
    for variant in load_variants(config, args.adapter):
        with variant.active(), reading_progress(f"perplexity of {variant.label}") as progress:
            results.append(
                perplexity(
                    variant.llm.model,
                    variant.llm.tokenizer,
                    config.data,
                    max_length=args.max_length,
                    stride=args.stride,
                    label=variant.label,
                    shape=shape,
                    encoding=config.encoding,
                    progress=progress,
                )
            )
    print(format_table(results, baseline=results[0].label if len(results) > 1 else None))
    if not args.no_history:
        append_history(history, results)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tuneforge.evaluate.compare import compare

    if args.heldout and not Path(args.heldout).is_file():
        raise TuneforgeError(f"held-out file '{args.heldout}' does not exist")
    config, settings = run_config_from(args, settings_class=GenerationSettings), settings_from(args)
    seeds = args.seeds
    if hasattr(args, "seed"):  # one seed given as --seed: those are the seeds (--seeds says several)
        if seeds is not None:
            raise TuneforgeError("give --seeds (one or more) or --seed, not both")
        seeds = [args.seed]
    result = compare(
        load_variants(config, args.adapter),
        args.prompts,
        seeds=seeds if seeds is not None else [0, 1],
        settings=settings,
        heldout=args.heldout,
        max_length=args.max_length,
        stride=args.stride,
        shape=_evaluation_format(config, getattr(args, "format", None)),
        encoding=config.encoding,
    )
    print(result.to_markdown())
    if args.output:
        markdown, page = result.write(args.output)
        print(f"written: {markdown} and {page}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from tuneforge.models.export import merge_adapter

    config = run_config_from(args, settings_class=GenerationSettings)
    if not args.adapter or len(args.adapter) != 1:
        raise TuneforgeError("give exactly one --adapter to merge into the base model")
    precision = (
        "fp32" if config.precision == "auto" else config.precision
    )  # merge in full precision by default
    output = merge_adapter(config.model, args.adapter[0], args.output, device="cpu", precision=precision)
    print(f"merged model written to {output} (loads with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import tuneforge as tf
    from tuneforge.models.export import VERIFY_PROMPTS

    config = run_config_from(args, settings_class=GenerationSettings)
    if len(args.adapter or []) > 1:
        raise TuneforgeError("give at most one --adapter to export")
    precision = "fp32" if config.precision == "auto" else config.precision
    trained = trained_weights(args.adapter[0]) if args.adapter else None
    # a full fine-tune's model folder is the model itself, not an adapter on the base
    whole = trained is not None and not (trained / "adapter_config.json").is_file()
    llm = tf.load(
        str(trained) if whole else config.model,
        adapter=None if whole else trained,
        device=config.device,
        precision=precision,
        trust_remote_code=config.trust_remote_code,
    )
    check = llm.export_gguf(args.gguf, dtype=args.dtype, verify=not args.no_verify)
    print(f"GGUF written to {args.gguf}")
    if not args.no_verify:
        print(
            f"loaded back with transformers: top-1 next token agrees on {check.agreement:.0%} of "
            f"{len(VERIFY_PROMPTS)} prompts, max logit difference "
            f"{check.max_logit_difference:.4f}; chat template kept: {'yes' if check.chat_template_kept else 'NO'}; "
            f"EOS kept: {'yes' if check.eos_kept else 'NO'}"
        )
        for line in check.mismatches:
            print(f"  mismatch: {line}")
        if not check.ok:
            raise TuneforgeError(
                f"the GGUF file {args.gguf} does not reproduce the model; see the mismatches"
            )
    return 0


# ---------------------------------------------------------------------------------------------- parsers
def _add_model_flags(parser: argparse.ArgumentParser, adapters: bool = True, several: bool = True) -> None:
    if adapters:
        parser.add_argument(
            "--adapter",
            action="append",
            default=None,
            help="LoRA adapter folder (a run's <run>/adapter), a whole model folder (a full fine-tune's "
            "<run>/model), or a run or checkpoint folder holding one"
            + ("; repeat to compare several." if several else "."),
        )
    add_setting_flags(parser, RunConfig, MODEL_KEYS)


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    add_setting_flags(parser, GenerationSettings)
    parser.add_argument(
        "--greedy",
        dest="do_sample",
        action="store_const",
        const=False,
        default=argparse.SUPPRESS,
        help="Always take the most likely token (same as --do_sample false).",
    )


def _add_window_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-length",
        "--max_length",
        dest="max_length",
        type=int,
        default=None,
        help="Perplexity: tokens per window (default: min(1024, the model's context)).",
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=None,
        help="Perplexity: tokens between window starts; "
        "smaller gives more context per token and is slower (default: max_length / 2).",
    )
    # --shape is this verb's older name for the format key
    add_setting_flags(
        parser,
        RunConfig,
        ["format", "encoding"],
        aliases={"format": ["--shape"]},
        helps={
            "format": "How the text is read: 'raw' (one text), 'lines' (each line on its own, as line-per-"
            "example training reads it) or 'auto' (as training detects it). (default: 'auto')"
        },
    )


def add_eval_commands(subparsers) -> None:
    """Register generate, logits, perplexity, compare, merge and export on the main parser's sub-parsers."""
    generate = add_verb(
        subparsers, "generate", help="Generate text from a model, optionally with LoRA adapters."
    )
    generate.add_argument("prompt", help="Text to continue.")
    generate.add_argument("--stream", action="store_true", help="Print tokens as they are generated.")
    _add_model_flags(generate)
    _add_generation_flags(generate)

    logits = add_verb(
        subparsers,
        "logits",
        help="Show the most likely next tokens, for the base and each adapter side by side.",
    )
    logits.add_argument("text", help="Text whose next token to predict (e.g. 'To be or not to').")
    logits.add_argument("--top", type=int, default=10, help="How many tokens to show (default: 10).")
    _add_model_flags(logits)

    ppl = add_verb(
        subparsers,
        "perplexity",
        help="Sliding-window perplexity of the base and each adapter on a text file.",
    )
    ppl.add_argument(
        "data_file", nargs="?", metavar="DATA", help="Text file to evaluate on (or --data FILE)."
    )
    add_setting_flags(ppl, RunConfig, ["data"], helps={"data": "Text file to evaluate on."})
    _add_window_flags(ppl)
    ppl.add_argument(
        "--history",
        default=None,
        help="History file of past evaluations (default: $TUNEFORGE_HOME/perplexity-history.jsonl).",
    )
    ppl.add_argument(
        "--no-history",
        "--no_history",
        dest="no_history",
        action="store_true",
        help="Do not record this evaluation.",
    )
    ppl.add_argument(
        "--show-history",
        "--show_history",
        dest="show_history",
        action="store_true",
        help="Print past evaluations and exit.",
    )
    _add_model_flags(ppl)

    comp = add_verb(
        subparsers,
        "compare",
        help="Base vs adapters/checkpoints on the same prompts and seeds, as Markdown/HTML.",
    )
    comp.add_argument("prompts", nargs="+", help="Prompts to continue.")
    comp.add_argument("--seeds", type=int, nargs="+", default=None, help="Seeds per prompt (default: 0 1).")
    comp.add_argument("--heldout", default=None, help="Held-out text file: adds each model's perplexity.")
    comp.add_argument("--output", default=None, help="Folder to write compare.md and compare.html into.")
    _add_window_flags(comp)
    _add_model_flags(comp)
    _add_generation_flags(comp)

    merge = add_verb(
        subparsers, "merge", help="Merge a LoRA adapter into its base: one Hugging Face safetensors folder."
    )
    merge.add_argument("--output", required=True, help="Folder to write the merged model into.")
    _add_model_flags(merge, several=False)

    export = add_verb(
        subparsers, "export", help="Export a model (adapter merged) to a GGUF file and check it loads back."
    )
    export.add_argument("--gguf", required=True, help="GGUF file to write (llama, mistral and qwen2 models).")
    export.add_argument("--dtype", default="f16", choices=["f16", "f32"], help="Weight type (default: f16).")
    export.add_argument(
        "--no-verify",
        "--no_verify",
        dest="no_verify",
        action="store_true",
        help="Skip loading the file back to compare.",
    )
    _add_model_flags(export, several=False)
