"""Does llama.cpp tokenize an exported GGUF's text exactly as transformers does? (Not run in CI: needs llama.cpp.)

    # llama.cpp's tokenizer, built from the source PyPI ships inside llama-cpp-python (no GitHub needed):
    pip download --no-deps llama-cpp-python==0.3.16 -d /tmp/lcpp && tar xzf /tmp/lcpp/llama_cpp_python-0.3.16.tar.gz -C /tmp/lcpp
    cmake -S /tmp/lcpp/llama_cpp_python-0.3.16/vendor/llama.cpp -B /tmp/lcpp/build -DLLAMA_CURL=OFF \\
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF && cmake --build /tmp/lcpp/build -t llama-tokenize
    python benchmarks/gguf_tokenize_check.py --llama-tokenize /tmp/lcpp/build/bin/llama-tokenize

llama.cpp never runs a tokenizer's own pre-tokenizer: it splits text with the regexes named by the GGUF's
tokenizer.ggml.pre. This exports the default model twice — with the name tuneforge now picks, and with "default"
(what it wrote before) — and counts the texts whose token ids from `llama-tokenize` equal transformers'.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXTS = [
    'Hello, world! It\'s 2024-12-06; the price is $3.14 (approx.) "quoted" -- ok?',
    "  def f(x):\n\treturn x**2 + 12345  # I'M here, you're there",
    "To make a cheese sandwich (the classic way), take 2 slices of bread.",
]


def llama_cpp_ids(binary: Path, gguf: Path, text: str) -> list[int]:
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
    done = subprocess.run(
        [str(binary), "-m", str(gguf), "-p", text, "--ids", "--no-bos", "--no-escape", "--log-disable"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--llama-tokenize", type=Path, required=True, help="llama.cpp's llama-tokenize binary"
    )
    parser.add_argument("--model", default="default")
    args = parser.parse_args()

    import tuneforge as tf
    import tuneforge.models.export as export

    llm = tf.load(args.model, precision="fp32", device="cpu")
    texts = TEXTS + [
        (SHARED / "tinyshakespeare.txt").read_text()[:3000],
        Path(export.__file__).read_text()[:3000],  # code
    ]
    chosen = export.llama_cpp_pre_tokenizer(llm.tokenizer) or "default"
    with tempfile.TemporaryDirectory() as folder:
        for pre in (chosen, "default"):
            real = export.llama_cpp_pre_tokenizer
            export.llama_cpp_pre_tokenizer = lambda tokenizer, name=pre: name
            try:
                gguf = export.export_gguf(llm.model, llm.tokenizer, Path(folder) / f"{pre}.gguf")
            finally:
                export.llama_cpp_pre_tokenizer = real
            same = 0
            for text in texts:
                expected = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
                actual = llama_cpp_ids(args.llama_tokenize, gguf, text)
                same += actual == expected
                if actual != expected:
                    at = next(
                        (i for i, (a, b) in enumerate(zip(actual, expected, strict=False)) if a != b), None
                    )
                    at = min(len(actual), len(expected)) if at is None else at
                    print(
                        f"  {pre}: first difference at token {at}: llama.cpp "
                        f"{llm.tokenizer.convert_ids_to_tokens(actual[at : at + 3])}, transformers "
                        f"{llm.tokenizer.convert_ids_to_tokens(expected[at : at + 3])}"
                    )
            label = "tuneforge's choice" if pre == chosen else "the old 'default'"
            print(
                f"tokenizer.ggml.pre {pre!r} ({label}): {same}/{len(texts)} texts tokenized as transformers does"
            )


if __name__ == "__main__":
    main()
