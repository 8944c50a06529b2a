"""Expand spintax like `{you can|anyone can} {make|build} a sandwich` into sentences (seed 001's sample data).

    python -m tuneforge.data.spintax src/tuneforge/resources/cheese_sandwich.spintax -n 1500 > out.txt

Choices nest: `{a {tasty|simple}|your}`. Generation is seeded, de-duplicated and shuffled, so the same
template, count and seed always give the same file.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path


def _parse(template: str, i: int = 0, top: bool = True) -> tuple[list, int]:
    """Parse into a tree: a sequence is a list of str | alternatives; alternatives is a tuple of sequences."""
    sequence: list = []
    text = ""
    while i < len(template):
        ch = template[i]
        if ch == "{":
            if text:
                sequence.append(text)
                text = ""
            alternatives, i = _parse_choice(template, i + 1)
            sequence.append(alternatives)
            continue
        if ch in "|}" and not top:
            break
        text += ch
        i += 1
    if text:
        sequence.append(text)
    return sequence, i


def _parse_choice(template: str, i: int) -> tuple[tuple, int]:
    options = []
    while True:
        option, i = _parse(template, i, top=False)
        options.append(option)
        if i >= len(template):
            raise ValueError("unclosed '{' in spintax")
        if template[i] == "}":
            return tuple(options), i + 1
        i += 1  # skip '|'


def _spin(sequence: list, rng: random.Random) -> str:
    out = []
    for part in sequence:
        out.append(part if isinstance(part, str) else _spin(rng.choice(part), rng))
    return "".join(out)


def expand(template: str, count: int, seed: int = 0) -> list[str]:
    """Up to `count` distinct sentences from one or more templates (one per non-empty line)."""
    trees = [
        _parse(line.strip())[0] for line in template.splitlines() if line.strip() and not line.startswith("#")
    ]
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < count and attempts < count * 50:
        seen.setdefault(" ".join(_spin(rng.choice(trees), rng).split()), None)
        attempts += 1
    sentences = list(seen)
    rng.shuffle(sentences)
    return sentences


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", type=Path)
    parser.add_argument("-n", "--count", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sys.stdout.write("\n".join(expand(args.template.read_text(), args.count, args.seed)) + "\n")


if __name__ == "__main__":
    main()
