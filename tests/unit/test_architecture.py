"""Imports go one way: the faces only call the core, and the core never imports a face.

    python -m pytest tests/unit/test_architecture.py -q

A face (the LLM class, the HappyTransformer face, the demo, the CLI, the web UI) holds no model surgery: it
imports no torch, peft or bitsandbytes, not even inside a function, and never touches parameters. Read from
the source with `ast`, so the check takes well under a second and imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "tuneforge"
FACE_MODULES = ("tuneforge.api", "tuneforge.happy", "tuneforge.demo", "tuneforge.cli", "tuneforge.ui")
HEAVY = ("torch", "peft", "bitsandbytes")
PARAMETER_CALLS = ("parameters", "named_parameters", "requires_grad_", "named_modules", "named_children")
# PEFT's adapter surgery called on a held model (`llm.model.set_adapter(...)`): models/adapters.py owns it
ADAPTER_CALLS = (
    "set_adapter", "add_adapter", "load_adapter", "delete_adapter", "disable_adapter", "merge_and_unload",
    "unload", "get_base_model", "save_pretrained",
)  # fmt: skip
# The package's public door re-exports `load` and `LLM` from tuneforge.api: the one core-side file allowed to.
PUBLIC_DOOR = PACKAGE / "__init__.py"
KNOWN_VIOLATIONS: set[str] = set()  # "path: what" lines; keep it empty


def face_files() -> list[Path]:
    names = [
        "api.py",
        "happy.py",
        "demo.py",
        "__main__.py",
    ]  # __main__: `python -m tuneforge`, the CLI's door
    files = [PACKAGE / name for name in names] + sorted(PACKAGE.glob("cli*.py"))
    for package in ("cli", "ui"):
        files += sorted((PACKAGE / package).rglob("*.py"))
    return [f for f in files if f.is_file()]


def core_files() -> list[Path]:
    faces = set(face_files())
    return [f for f in sorted(PACKAGE.rglob("*.py")) if f not in faces and f != PUBLIC_DOOR]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file, at any depth, relative ones resolved.

    `from a import b` yields `a` and `a.b` (b may be a module; for `from tuneforge import b` only the latter);
    `importlib.import_module("x")` and `__import__("x")` with a literal name count as imports of x.
    """
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if (
                base != "tuneforge"
            ):  # every tuneforge module imports the package; what it names is the question
                found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return sorted(found, key=lambda found_import: found_import[0])


def is_under(module: str, roots: tuple[str, ...]) -> bool:
    return any(
        module == root
        or module.startswith(root + ".")
        or (root.endswith(".cli") and module.startswith(root + "_"))
        for root in roots
    )


def first_per_line(problems: list[tuple[int, str]], where: Path) -> list[str]:
    seen: dict[int, str] = {}
    for line, what in problems:
        seen.setdefault(line, what)
    return [f"{where}:{line}: {what}" for line, what in sorted(seen.items())]


def face_violations(path: Path, root: Path = PACKAGE) -> list[str]:
    problems = [
        (line, f"imports {name}") for line, name in imported_modules(path, root) if is_under(name, HEAVY)
    ]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in PARAMETER_CALLS
        ):
            problems.append((node.lineno, f"calls .{node.func.attr}()"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ADAPTER_CALLS
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "model"
        ):
            problems.append((node.lineno, f"calls .model.{node.func.attr}()"))
        elif isinstance(node, ast.Attribute) and node.attr == "requires_grad":
            problems.append((node.lineno, "touches .requires_grad"))
    return first_per_line(problems, path.relative_to(root.parent))


def core_violations(path: Path, root: Path = PACKAGE) -> list[str]:
    problems = []
    for line, name in imported_modules(path, root):
        # a bare `import tuneforge` (or `from tuneforge import LLM`) uses the public door, i.e. tuneforge.api
        if is_under(name, FACE_MODULES) or name in ("tuneforge", "tuneforge.LLM", "tuneforge.load"):
            problems.append((line, f"imports {name}"))
    return first_per_line(problems, path.relative_to(root.parent))


def test_the_architecture_check_sees_every_face_and_the_core():
    faces = {module_name(f) for f in face_files()}
    assert {"tuneforge.api", "tuneforge.happy", "tuneforge.demo"} <= faces
    core = {module_name(f) for f in core_files()}
    assert {"tuneforge.recipe", "tuneforge.models.preparation", "tuneforge.train.loop"} <= core
    assert not faces & core and "tuneforge" not in core


def test_faces_import_no_torch_peft_or_bitsandbytes_and_touch_no_parameters():
    problems = [p for f in face_files() for p in face_violations(f) if p not in KNOWN_VIOLATIONS]
    assert not problems, (
        "faces only call the core (move this into models/, train/ or the recipe):\n" + "\n".join(problems)
    )


def test_the_core_never_imports_a_face():
    problems = [p for f in core_files() for p in core_violations(f)]
    assert not problems, "the core never imports a face (api, happy, demo, cli, ui):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import torch\n", ["imports torch"]),
        ("def f():\n    from peft import PeftModel\n", ["imports peft"]),
        ("import bitsandbytes.nn as bnb\n", ["imports bitsandbytes.nn"]),
        ("import importlib\nimportlib.import_module('torch')\n", ["imports torch"]),
        ("n = sum(p.numel() for p in model.parameters())\n", ["calls .parameters()"]),
        (
            "for name, p in model.named_parameters():\n    p.requires_grad = False\n",
            ["calls .named_parameters()", "touches .requires_grad"],
        ),
        ("model.requires_grad_(False)\n", ["calls .requires_grad_()"]),
        ("llm.model.set_adapter(name, inference_mode=True)\n", ["calls .model.set_adapter()"]),
        ("base = self.model.get_base_model()\nllm.set_adapter(name)\n", ["calls .model.get_base_model()"]),
        ("import transformers\nfrom tuneforge.recipe import run_training\nllm.model.eval()\n", []),
    ],
)
def test_a_face_with_model_surgery_is_caught(tmp_path, source, expected):
    face = tmp_path / "tuneforge" / "api.py"
    face.parent.mkdir()
    face.write_text(source)
    assert [p.split(": ", 1)[1] for p in face_violations(face, tmp_path / "tuneforge")] == expected


def test_a_core_module_importing_a_face_is_caught(tmp_path):
    module = tmp_path / "tuneforge" / "train" / "report.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from tuneforge.api import LLM\nfrom .. import cli_eval\nimport tuneforge\n"
        "from tuneforge.models import kind\nfrom tuneforge import errors, load\n"
        "from tuneforge.ui.app import build\n"
    )
    found = [p.split(": ", 1)[1] for p in core_violations(module, tmp_path / "tuneforge")]
    assert found == [
        "imports tuneforge.api",
        "imports tuneforge.cli_eval",
        "imports tuneforge",
        "imports tuneforge.load",
        "imports tuneforge.ui.app",
    ]


def test_the_architecture_doc_names_the_owner_of_every_core_module():
    doc = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    unnamed = [
        str(path.relative_to(PACKAGE))
        for path in core_files()
        if path.name != "__init__.py" and f"`{path.relative_to(PACKAGE).as_posix()}`" not in doc
    ]
    assert not unnamed, f"docs/architecture.md does not say which step these modules own: {unnamed}"
