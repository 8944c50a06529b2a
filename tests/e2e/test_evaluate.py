"""End-to-end on the real default model: seed 001's HappyTransformer script, compare after a cheese LoRA,
and the GGUF export round trip (issue 6's acceptance checks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import CHEESE, PROMPT
from tuneforge.cli import main as cli_eval

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def test_seed_001_script_runs_with_only_the_import_and_model_name_changed(tmp_path):
    # 1 step of 4 lines (HappyTransformer evaluates the 200 held-out lines every 10% of the steps: each step)
    env = {**os.environ, "TUNEFORGE_EPOCHS": "0.002", "TUNEFORGE_CHEESE": str(CHEESE)}
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "happy_cheese.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = result.stdout.split("RESULT AFTER TRAINING....")
    assert before.count(PROMPT) >= 3 and after.count(PROMPT) == 3
    assert (tmp_path / "model" / "config.json").is_file() and (
        tmp_path / "model" / "tokenizer.json"
    ).is_file()
    assert (tmp_path / "preprocessed-data.json").exists()


def test_compare_shows_the_cheese_style_and_a_lower_heldout_perplexity(cheese_run, capsys):
    adapter, heldout, root = cheese_run.run.saved_to, cheese_run.heldout, cheese_run.root
    code = cli_eval(
        [
            "compare",
            "--adapter",
            str(adapter),
            "--heldout",
            str(heldout),
            "--seeds",
            "0",
            "1",
            "--max-new-tokens",
            "20",
            "--output",
            str(root / "compare"),
            PROMPT,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    table = out.split("## Perplexity")[1]
    rows = {
        line.split("|")[1].strip(): float(line.split("|")[2])
        for line in table.splitlines()
        if line.startswith("| ") and line.split("|")[2].strip()[:1].isdigit()
    }
    assert rows["run"] < rows["base"] * 0.8, table
    adapter_texts = [
        line.split("|")[4] for line in out.splitlines() if line.startswith(f"| {PROMPT.strip()}")
    ]
    style = {"slice", "slices", "bread", "between", "toast", "inside", "pieces"}
    # words as letters only: "in-between" counts as between, "slice—or two—in-between" as slice and between
    assert all(len(set(re.findall(r"[a-z]+", t.lower())) & style) >= 2 for t in adapter_texts), out
    assert (root / "compare" / "compare.html").is_file()


def test_default_model_exports_to_gguf_and_20_prompts_keep_their_top_1_token(tmp_path):
    import tuneforge as tf
    from tuneforge.models.export import VERIFY_PROMPTS

    llm = tf.load("default", precision="fp32", device="cpu")
    check = llm.export_gguf(tmp_path / "smollm2.gguf")
    assert len(VERIFY_PROMPTS) == 20
    assert check.agreement == 1.0, check.mismatches
    assert check.chat_template_kept and check.eos_kept
