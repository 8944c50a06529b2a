"""Why recipe auto picks what it picks: the same held-out score for auto with other settings, one run each.

    python benchmarks/outcome_sweep.py --shape sentences \
        "base:" "full-1e-4:--method full --learning_rate 1e-4" "2-epochs:--epochs 2"

Each `name:flags` trains `tuneforge train --recipe auto` plus those flags on the slice benchmarks/outcome.py
uses for that shape (same split, same fp32 scoring, one process per run) and prints one table row:
held-out perplexity (raw prose) or response loss and ROUGE-L (instructions), steps and process seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import outcome  # noqa: E402  (the benchmark's own slices, training worker and scoring)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="name:flags, e.g. 'lr-2e-4:--learning_rate 2e-4'")
    parser.add_argument("--shape", choices=outcome.SHAPES, default="sentences")
    parser.add_argument(
        "--chars", type=int, help="prefix of the text (default: outcome.py's, 9,000 Shakespeare, 30,000 Lee)"
    )
    parser.add_argument("--records", type=int, default=40, help="instruction records trained on")
    parser.add_argument("--heldout", type=int, default=24, help="instruction records held out")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--prose2", help="lee_background.cor or gensim's wheel")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from tuneforge.models.loading import default_checkpoint

    print(f"machine: {outcome.machine()}\ncommand: python {' '.join(sys.argv)}", flush=True)
    slices = argparse.Namespace(
        shapes=[args.shape], chars=args.chars or 9_000, prose2=args.prose2, prose2_chars=args.chars or 30_000,
        records=args.records, heldout=args.heldout,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(default_checkpoint())
    rows = []
    with tempfile.TemporaryDirectory(prefix="outcome-sweep-") as folder:
        work = Path(folder)
        files = outcome.write_shapes(slices, work)[args.shape]
        before = outcome.score(None, tokenizer, args.shape, files, args.new_tokens)
        print(f"before: {json.dumps(before)}", flush=True)
        for spec in args.runs:
            name, _, flags = spec.partition(":")
            run = outcome.run_worker("auto", files, work / name, flags.split())
            run.update(outcome.score(run["model"], tokenizer, args.shape, files, args.new_tokens))
            scores = " | ".join(f"{run[k]:.4f}" for k in ("ppl", "response_loss", "rouge_l") if k in run)
            rows.append(f"| {name} | `{flags.strip() or '(defaults)'}` | {scores} | {run['steps']} | "
                        f"{run['process_s']:.0f} |")  # fmt: skip
            print(rows[-1], flush=True)
    header = "held-out ppl" if args.shape != "instructions" else "response loss | ROUGE-L"
    columns = header.count("|") + 1
    before_scores = " | ".join(f"{v:.4f}" for v in before.values())
    print(f"\n| run | flags added to recipe auto | {header} | steps | process s |")
    print("|---|---|" + "---|" * columns + "---|---|")
    print(f"| before | (no training) | {before_scores} | 0 | 0 |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
