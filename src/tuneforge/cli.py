"""The `tuneforge` command: a thin face over the core, one verb per function.

    tuneforge demo                                     # fine-tune the default model on bundled data
    tuneforge train examples/cheese_lora.yaml --epochs 1 --learning_rate 1e-3
    tuneforge generate --adapter runs/demo/adapter "To make a cheese sandwich "
    tuneforge logits "To be or not to"
    tuneforge modules default

Errors in the user's input print one line and exit with code 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable

from tuneforge.config import RunConfig, field_help, field_names, load_config
from tuneforge.errors import TuneforgeError

GROUP_TITLES = {"model": "model", "data": "data", "lora": "LoRA", "training": "training", "output": "output"}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per RunConfig key, with the key's help text; only flags actually given become overrides."""
    groups = {name: parser.add_argument_group(f"{title} settings") for name, title in GROUP_TITLES.items()}
    defaults = RunConfig()
    for name, f in field_help().items():
        meta = f.metadata
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, list) else repr(default) if isinstance(default, str) else default
        help_text = meta["help"] + (f" Choices: {', '.join(meta['choices'])}." if meta.get("choices") else "")
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        groups[meta.get("group", "training")].add_argument(
            *flags, dest=name, metavar="VALUE", default=argparse.SUPPRESS, help=f"{help_text} (default: {shown})")


def _config_overrides(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in field_names() if hasattr(args, name)}


def cmd_train(args: argparse.Namespace) -> int:
    import tuneforge as tf
    from tuneforge.data.sources import read_text

    config = load_config(args.config, _config_overrides(args))
    if not config.data:
        raise TuneforgeError("no training data given; set data: in the config or pass --data FILE")
    read_text(config.data)  # a missing or empty file fails now, not after loading the model
    print(f"loading model '{config.model}' ...", flush=True)
    llm = tf.load(config.model, device=config.device, precision=config.precision,
                  trust_remote_code=config.trust_remote_code)
    result = llm.train(config=config)
    print(f"done: {result.steps} steps ({result.stopped_because}); loss {result.losses[0]:.4f} -> "
          f"{result.final_loss:.4f}; saved to {result.saved_to}; report: {result.run_dir / 'report.md'}")
    return 0


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=40,
                        help="Most tokens to generate (default: 40).")
    parser.add_argument("--temperature", type=float, default=0.7, help="Sampling temperature; higher is more "
                        "random (default: 0.7).")
    parser.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=50, help="Sample only from the k "
                        "most likely tokens (default: 50).")
    parser.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=1.0, help="Sample from the "
                        "smallest set of tokens whose probability adds up to p (default: 1.0).")
    parser.add_argument("--repetition-penalty", "--repetition_penalty", dest="repetition_penalty", type=float,
                        default=1.0, help="Penalise tokens already generated (>1 discourages repeats).")
    parser.add_argument("--no-repeat-ngram-size", "--no_repeat_ngram_size", dest="no_repeat_ngram_size", type=int,
                        default=0, help="Never repeat an n-gram of this size (0 = off).")
    parser.add_argument("--greedy", action="store_true", help="Always take the most likely token (no sampling).")
    parser.add_argument("--seed", type=int, default=0, help="Sampling seed: same seed, same text (default: 0).")
    parser.add_argument("--chat", action="store_true", help="Wrap the prompt in the model's chat template.")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="Base model: 'default', a folder, a .gguf file or a "
                        "hub id (default: default).")
    parser.add_argument("--adapter", action="append", default=None, help="LoRA adapter folder to apply "
                        "(repeat to compare several).")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="Weight/compute precision (default: auto).")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto).")


def _load_models(args) -> list[tuple[str, object]]:
    """The base model, then the base with each --adapter, as (label, LLM) pairs."""
    import tuneforge as tf

    base = tf.load(args.model, device=args.device, precision=args.precision)
    if not args.adapter:
        return [("base", base)]
    return [(path, tf.load(args.model, adapter=path, device=args.device, precision=args.precision))
            for path in args.adapter]


def cmd_generate(args: argparse.Namespace) -> int:
    from tuneforge.generate import GenerationSettings

    settings = dict(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                    no_repeat_ngram_size=args.no_repeat_ngram_size, seed=args.seed, chat=args.chat)
    for label, llm in _load_models(args):
        text = llm.generate(args.prompt, GenerationSettings(**settings))
        prefix = f"[{label}] " if args.adapter and len(args.adapter) > 1 else ""
        print(f"{prefix}{args.prompt}{text}")
    return 0


def cmd_logits(args: argparse.Namespace) -> int:
    for label, llm in _load_models(args):
        print(f"next-token probabilities after {args.text!r} ({label}):")
        for token, probability in llm.next_token_probs(args.text, args.top):
            print(f"  {probability:8.4f}  {token!r}")
    return 0


def cmd_modules(args: argparse.Namespace) -> int:
    import tuneforge as tf
    from tuneforge.models.adapters import linear_module_names

    llm = tf.load(args.model, precision="fp32")
    config = llm.model.config
    print(f"model: {args.model} ({config.model_type}), hidden size: {config.hidden_size}, "
          f"layers: {getattr(config, 'num_hidden_layers', '?')}")
    print("linear modules (usable as target_modules): " + ", ".join(linear_module_names(llm.model)))
    print("embedding/output modules: " + ", ".join(
        name for name, _ in llm.model.named_children() if name) + " (e.g. embed_tokens, lm_head)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tuneforge.demo import run_demo

    run_demo(output_dir=args.output_dir, max_steps=args.max_steps)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train, "generate": cmd_generate, "logits": cmd_logits, "modules": cmd_modules, "demo": cmd_demo,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", allow_abbrev=False, description="Fine-tune a language model on your own text "
                                     "and see what it learned.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks for errors.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Prefix matching would take a mistyped --learning_rat as --learning_rate; we suggest the fix instead.
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, allow_abbrev=False, **k)

    train = sub.add_parser("train", help="Fine-tune a model from a YAML config and/or --key value settings.",
                           description="Fine-tune a model. Every config key can be given as --key value and "
                           "overrides the YAML file.")
    train.add_argument("config", nargs="?", help="YAML run config (optional; keys as listed below).")
    _add_config_flags(train)

    generate = sub.add_parser("generate", help="Generate text from a model, optionally with a LoRA adapter.")
    generate.add_argument("prompt", help="Text to continue.")
    _add_model_flags(generate)
    _add_generation_flags(generate)

    logits = sub.add_parser("logits", help="Show the most likely next tokens and their probabilities.")
    logits.add_argument("text", help="Text whose next token to predict (e.g. 'To be or not to').")
    logits.add_argument("--top", type=int, default=10, help="How many tokens to show (default: 10).")
    _add_model_flags(logits)

    modules = sub.add_parser("modules", help="List a model's module names (for target_modules) and hidden size.")
    modules.add_argument("model", nargs="?", default="default", help="Model (default: default).")

    demo = sub.add_parser("demo", help="Fine-tune the default model on bundled sample data; show before/after.")
    demo.add_argument("--output-dir", default="runs/demo", help="Run folder (default: runs/demo).")
    demo.add_argument("--max-steps", type=int, default=None, help="Training steps (default: the demo's own).")
    return parser


def _reject_unknown(parser: argparse.ArgumentParser, unknown: list[str], command: str) -> None:
    flags = [a for a in unknown if a.startswith("-")]
    if not flags:
        raise TuneforgeError(f"unexpected argument '{unknown[0]}'; see tuneforge {command} --help")
    name = flags[0].lstrip("-").split("=")[0]
    candidates = field_names() if command == "train" else []
    close = difflib.get_close_matches(name.replace("-", "_"), candidates, n=1, cutoff=0.5)
    hint = f"; did you mean --{close[0]}?" if close else f"; see tuneforge {command} --help"
    raise TuneforgeError(f"unknown option '{flags[0]}'{hint}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    try:
        if unknown:
            _reject_unknown(parser, unknown, args.command)
        return COMMANDS[args.command](args)
    except TuneforgeError as error:
        if args.debug:
            raise
        print(f"tuneforge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuneforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
