"""The CLI verbs for seeing what a model learned: generate, logits, perplexity, compare, merge, export.

    tuneforge generate --adapter runs/demo/adapter --stream "To make a cheese sandwich "
    tuneforge logits --adapter runs/demo/adapter "To be or not to"          # base and adapter side by side
    tuneforge perplexity heldout.txt --adapter runs/demo/adapter --stride 256
    tuneforge compare --adapter runs/demo/adapter --heldout heldout.txt --output runs/demo "To make a cheese sandwich "
    tuneforge merge --adapter runs/demo/adapter --output merged/
    tuneforge export --adapter runs/demo/adapter --gguf cheese.gguf

`--adapter` may be repeated and may also name a whole model folder (a checkpoint of a full fine-tune).
`cli.py` registers these with `add_eval_commands(subparsers)` and dispatches through `EVAL_COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from tuneforge.errors import ModelError, TuneforgeError
from tuneforge.generate import GenerationSettings

_DEFAULTS = GenerationSettings()


def _flag(parser, name: str, **kwargs) -> None:
    """--some-name and --some_name for one setting (dest some_name)."""
    flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
    parser.add_argument(*flags, dest=name, **kwargs)


def add_model_flags(parser: argparse.ArgumentParser, adapters: bool = True) -> None:
    parser.add_argument("--model", default="default", help="Base model: 'default', a folder, a .gguf file or a "
                        "hub id (default: default).")
    if adapters:
        parser.add_argument("--adapter", action="append", default=None, help="LoRA adapter folder, or a whole "
                            "model folder (a checkpoint); repeat to compare several.")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="Weight/compute precision (default: auto).")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto).")


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    _flag(parser, "max_new_tokens", type=int, default=d.max_new_tokens, help=f"Most tokens to generate "
          f"(default: {d.max_new_tokens}).")
    _flag(parser, "min_new_tokens", type=int, default=d.min_new_tokens, help="Fewest tokens before the model "
          "may stop (default: 0).")
    parser.add_argument("--temperature", type=float, default=d.temperature, help="Sampling temperature; higher "
                        f"is more random (default: {d.temperature}).")
    _flag(parser, "top_k", type=int, default=d.top_k, help=f"Sample from the k most likely tokens (0 = off; "
          f"default: {d.top_k}).")
    _flag(parser, "top_p", type=float, default=d.top_p, help="Sample from the smallest set of tokens whose "
          "probability adds up to p (default: 1.0 = off).")
    _flag(parser, "min_p", type=float, default=d.min_p, help="Drop tokens less likely than min_p times the "
          "most likely one (default: 0 = off).")
    _flag(parser, "typical_p", type=float, default=d.typical_p, help="Locally typical sampling mass "
          "(default: 1.0 = off).")
    _flag(parser, "repetition_penalty", type=float, default=d.repetition_penalty, help="Penalise tokens already "
          "in the text (>1 discourages repeats; default: 1.0).")
    _flag(parser, "no_repeat_ngram_size", type=int, default=d.no_repeat_ngram_size, help="Never repeat an "
          "n-gram of this size (0 = off).")
    _flag(parser, "num_beams", type=int, default=d.num_beams, help="Beam search width (1 = no beam search).")
    _flag(parser, "early_stopping", action="store_true", help="Beam search: stop when num_beams candidates "
          "are finished.")
    parser.add_argument("--greedy", action="store_true", help="Always take the most likely token (no sampling).")
    parser.add_argument("--seed", type=int, default=0, help="Sampling seed: same seed, same text (default: 0).")
    parser.add_argument("--stop", action="append", default=[], help="Stop before this string (repeatable), "
                        "e.g. --stop '\\n'. Escapes like \\n are understood.")
    parser.add_argument("--chat", action="store_true", help="Wrap the prompt in the model's chat template.")


def add_shape_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", default="auto", choices=["auto", "raw", "lines"], help="Read the text as one "
                        "long text (raw) or one example per line (lines), as training would; auto detects it.")


def settings_from(args: argparse.Namespace) -> GenerationSettings:
    stop = [s.encode().decode("unicode_escape") for s in args.stop]  # a shell passes "\n" as two characters
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens, do_sample=not args.greedy,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        typical_p=args.typical_p, repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size, num_beams=args.num_beams,
        early_stopping=args.early_stopping, stop=stop, seed=args.seed, chat=args.chat)


def load_variants(args: argparse.Namespace, include_base: bool = True) -> list:
    """The base model and each --adapter as comparison variants; adapters share one copy of the base."""
    import tuneforge as tf
    from tuneforge.evaluate.compare import BASE, Variant

    base = tf.load(args.model, device=args.device, precision=args.precision)
    variants = [Variant(BASE, base, BASE)] if include_base or not args.adapter else []
    for path in args.adapter or []:
        folder = Path(path)
        if (folder / "adapter_config.json").is_file():
            name = base.load_adapter(folder, name=_unique_label(folder, variants))
            variants.append(Variant(name, base, name))
        elif (folder / "config.json").is_file():
            llm = tf.load(str(folder), device=args.device, precision=args.precision)
            variants.append(Variant(_unique_label(folder, variants), llm, None))
        else:
            raise ModelError(f"'{path}' is neither an adapter folder (adapter_config.json) nor a model folder "
                             "(config.json)")
    return variants


def _unique_label(folder: Path, variants: list) -> str:
    """A short label: the folder name, or its run folder's name for <run>/adapter; numbered if taken."""
    label = folder.parent.name if folder.name in ("adapter", "model") and folder.parent.name else folder.name
    taken = {v.label for v in variants}
    candidate, n = label, 2
    while candidate in taken or candidate == "base":
        candidate, n = f"{label}-{n}", n + 1
    return candidate


# ---------------------------------------------------------------------------------------------- verbs
def cmd_generate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    variants = load_variants(args, include_base=False)
    for variant in variants:
        prefix = f"[{variant.label}] " if len(variants) > 1 else ""
        with variant.active():
            if args.stream:
                print(f"{prefix}{args.prompt}", end="", flush=True)
                for piece in variant.llm.stream(args.prompt, settings):
                    print(piece, end="", flush=True)
                print()
            else:
                print(f"{prefix}{args.prompt}{variant.llm.generate(args.prompt, settings)}")
    return 0


def cmd_logits(args: argparse.Namespace) -> int:
    variants = load_variants(args)
    columns = []
    for variant in variants:
        with variant.active():
            columns.append(variant.llm.next_token_probs(args.text, args.top))
    print(f"next-token probabilities after {args.text!r}:")
    print("  ".join(f"{v.label[:28]:>38}" for v in variants))
    for rank in range(args.top):
        print("  ".join(f"{col[rank][1]:8.4f}  {col[rank][0]!r:28.28}" for col in columns))
    return 0


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
            print(f"  {r['time']}  {r['label']:<24} {r['data']:<30} ppl {r['perplexity']:.3f}  "
                  f"(max_length {r['max_length']}, stride {r['stride']})")
        return 0
    if not args.data:
        raise TuneforgeError("give a text file to evaluate, e.g. tuneforge perplexity heldout.txt")
    if not Path(args.data).is_file():
        raise TuneforgeError(f"data file '{args.data}' does not exist")
    results = []
    for variant in load_variants(args):
        with variant.active():
            results.append(perplexity(variant.llm.model, variant.llm.tokenizer, args.data,
                                      max_length=args.max_length, stride=args.stride, label=variant.label,
                                      shape=args.shape))
    print(format_table(results, baseline=results[0].label if len(results) > 1 else None))
    if not args.no_history:
        append_history(history, results)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tuneforge.evaluate.compare import compare

    if args.heldout and not Path(args.heldout).is_file():
        raise TuneforgeError(f"held-out file '{args.heldout}' does not exist")
    result = compare(load_variants(args), args.prompts, seeds=args.seeds, settings=settings_from(args),
                     heldout=args.heldout, max_length=args.max_length, stride=args.stride, shape=args.shape)
    print(result.to_markdown())
    if args.output:
        markdown, page = result.write(args.output)
        print(f"written: {markdown} and {page}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from tuneforge.models.export import merge_adapter

    if not args.adapter or len(args.adapter) != 1:
        raise TuneforgeError("give exactly one --adapter to merge into the base model")
    precision = "fp32" if args.precision == "auto" else args.precision  # merge in full precision by default
    output = merge_adapter(args.model, args.adapter[0], args.output, device="cpu", precision=precision)
    print(f"merged model written to {output} (loads with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import tuneforge as tf
    from tuneforge.models.export import VERIFY_PROMPTS

    if len(args.adapter or []) > 1:
        raise TuneforgeError("give at most one --adapter to export")
    precision = "fp32" if args.precision == "auto" else args.precision
    llm = tf.load(args.model, adapter=(args.adapter or [None])[0], device=args.device, precision=precision)
    check = llm.export_gguf(args.gguf, dtype=args.dtype, verify=not args.no_verify)
    print(f"GGUF written to {args.gguf}")
    if not args.no_verify:
        print(f"loaded back with transformers: top-1 next token agrees on {check.agreement:.0%} of "
              f"{len(VERIFY_PROMPTS)} prompts, max logit difference "
              f"{check.max_logit_difference:.4f}; chat template kept: {check.chat_template_kept}; "
              f"EOS kept: {check.eos_kept}")
        for line in check.mismatches:
            print(f"  mismatch: {line}")
        if not check.ok:
            raise TuneforgeError(f"the GGUF file {args.gguf} does not reproduce the model; see the mismatches")
    return 0


EVAL_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "generate": cmd_generate, "logits": cmd_logits, "perplexity": cmd_perplexity, "compare": cmd_compare,
    "merge": cmd_merge, "export": cmd_export,
}


def add_eval_commands(subparsers) -> None:
    """Register the evaluation verbs on the main parser's sub-parsers; each sets `func` to its handler."""
    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, **kwargs)
        parser.allow_abbrev = False  # set after creation: cli.py's add_parser may already pass it
        parser.set_defaults(func=EVAL_COMMANDS[name])
        return parser

    generate = add("generate", help="Generate text from a model, optionally with LoRA adapters.")
    generate.add_argument("prompt", help="Text to continue.")
    generate.add_argument("--stream", action="store_true", help="Print tokens as they are generated.")
    add_model_flags(generate)
    add_generation_flags(generate)

    logits = add("logits", help="Show the most likely next tokens, for the base and each adapter side by side.")
    logits.add_argument("text", help="Text whose next token to predict (e.g. 'To be or not to').")
    logits.add_argument("--top", type=int, default=10, help="How many tokens to show (default: 10).")
    add_model_flags(logits)

    ppl = add("perplexity", help="Sliding-window perplexity of the base and each adapter on a text file.")
    ppl.add_argument("data", nargs="?", help="Text file to evaluate on.")
    ppl.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=None,
                     help="Tokens per window (default: min(1024, the model's context)).")
    ppl.add_argument("--stride", type=int, default=None, help="Tokens between window starts; smaller gives more "
                     "context per token and is slower (default: max_length / 2).")
    add_shape_flag(ppl)
    ppl.add_argument("--history", default=None, help="History file of past evaluations (default: "
                     "$TUNEFORGE_HOME/perplexity-history.jsonl).")
    ppl.add_argument("--no-history", action="store_true", help="Do not record this evaluation.")
    ppl.add_argument("--show-history", action="store_true", help="Print past evaluations and exit.")
    add_model_flags(ppl)

    comp = add("compare", help="Base vs adapters/checkpoints on the same prompts and seeds, as Markdown/HTML.")
    comp.add_argument("prompts", nargs="+", help="Prompts to continue.")
    comp.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Seeds per prompt (default: 0 1).")
    comp.add_argument("--heldout", default=None, help="Held-out text file: adds each model's perplexity.")
    comp.add_argument("--output", default=None, help="Folder to write compare.md and compare.html into.")
    comp.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=None,
                      help="Perplexity window in tokens.")
    comp.add_argument("--stride", type=int, default=None, help="Perplexity stride in tokens.")
    add_shape_flag(comp)
    add_model_flags(comp)
    add_generation_flags(comp)

    merge = add("merge", help="Merge a LoRA adapter into its base: one Hugging Face safetensors folder.")
    merge.add_argument("--output", required=True, help="Folder to write the merged model into.")
    add_model_flags(merge)

    export = add("export", help="Export a model (adapter merged) to a GGUF file and check it loads back.")
    export.add_argument("--gguf", required=True, help="GGUF file to write (llama-architecture models).")
    export.add_argument("--dtype", default="f16", choices=["f16", "f32"], help="Weight type (default: f16).")
    export.add_argument("--no-verify", action="store_true", help="Skip loading the file back to compare.")
    add_model_flags(export)


def main(argv: list[str] | None = None) -> int:
    """Run one evaluation verb on its own (cli.py's main does the same for every verb)."""
    parser = argparse.ArgumentParser(prog="tuneforge", allow_abbrev=False)
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TuneforgeError as error:
        print(f"tuneforge: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
