"""The UI is a face: it imports no torch/peft/bitsandbytes/transformers and holds no training logic."""

from __future__ import annotations

import ast
from pathlib import Path

UI = Path(__file__).resolve().parents[2] / "src" / "tuneforge" / "ui"
FORBIDDEN = ("torch", "peft", "bitsandbytes", "transformers", "accelerate")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_ui_imports_no_model_library():
    files = sorted(UI.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for module in imported_modules(path):
            assert module.split(".")[0] not in FORBIDDEN, (
                f"{path.name} imports {module}; go through tuneforge.api"
            )


def test_ui_never_touches_parameters_or_training_loops():
    for path in UI.glob("*.py"):
        text = path.read_text()
        for word in (".parameters()", "named_parameters", "requires_grad", "train.loop", "run_training"):
            assert word not in text, f"{path.name} uses {word}; the UI calls tuneforge.api and tuneforge.jobs"
