"""Data preparation speed: tuneforge's full raw-text prepare vs a plain `datasets.map(batched=True)` tokenization.

    .venv/bin/python benchmarks/data_prepare.py            # tinyshakespeare, cutoff 256, overlap 32
    .venv/bin/python benchmarks/data_prepare.py --repeats 5 --data path/to/other.txt

Both sides tokenize the same text with the same tokenizer in the same process; tuneforge's side also cuts the
chunks (overlap, newline favouring, hard cuts) and writes the Arrow cache. Each side's best of --repeats runs is
reported (the machine may be shared). Targets (issue 3): prepare within 1.5x of the plain pass; a cache hit < 1 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # both sides may use the tokenizer's threads

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def best_of(repeats: int, function) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "tinyshakespeare.txt")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from datasets import Dataset, disable_progress_bars

    from tuneforge.config import RunConfig
    from tuneforge.data import prepare_examples
    from tuneforge.models.loading import load_tokenizer, resolve

    disable_progress_bars()
    tokenizer = load_tokenizer(resolve("default"))
    text = args.data.read_text(encoding="utf-8")
    config = RunConfig(format="raw", cutoff_len=256, overlap_len=32)

    def plain() -> int:
        dataset = Dataset.from_dict({"text": text.split("\n")})
        tokenized = dataset.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])
        return len(tokenized)

    def prepare(home: str):
        os.environ["TUNEFORGE_HOME"] = home
        return prepare_examples(args.data, tokenizer, config)

    plain()  # warm-up: imports, thread pools, page cache
    plain_s, _ = best_of(args.repeats, plain)
    prepare_s, prepared = best_of(args.repeats, lambda: prepare(tempfile.mkdtemp(prefix="tf-bench-")))
    home = tempfile.mkdtemp(prefix="tf-bench-")
    prepare(home)
    hit_s, hit = best_of(args.repeats, lambda: prepare(home))
    assert hit.cache_hit and len(hit.train) == len(prepared.train)

    ratio = prepare_s / plain_s
    print(f"data: {args.data.name} ({len(text):,} characters), {prepared.describe()}")
    print(f"plain datasets.map(batched=True) tokenization: {plain_s:.3f} s")
    print(
        f"tuneforge prepare (raw, cutoff 256, overlap 32): {prepare_s:.3f} s  ({ratio:.2f}x plain; target <= 1.5x)"
    )
    print(f"tuneforge cache hit:                              {hit_s:.3f} s  (target < 1 s)")
    ok = ratio <= 1.5 and hit_s < 1.0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
