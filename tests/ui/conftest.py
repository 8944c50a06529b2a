"""UI test fixtures: a project folder holding the tiny model and a raw text file, and a served UI on a free port."""

from __future__ import annotations

import shutil
import socket

import pytest

pytest.importorskip("gradio", reason="the UI needs the ui extra: pip install -e '.[ui]'")

RAW_TEXT = (
    "\n".join(
        f"To be or not to be, line {i}: the cheese sandwich is {'tasty' if i % 2 else 'small'}."
        for i in range(48)
    )
    + "\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def project(tmp_path, tiny_model_dir):
    root = tmp_path / "project"
    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    (root / "datasets").mkdir()
    (root / "datasets" / "data.txt").write_text(RAW_TEXT)
    return root


@pytest.fixture()
def ui(project):
    from tuneforge.ui import serve

    running = serve(port=free_port(), project_dir=project)
    yield running
    running.close()
