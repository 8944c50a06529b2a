"""Every guide in docs/guides/ runs, block by block, in a reduced form: a guide that drifts from the code fails.

    python -m pytest -q tests/guides                        # all guides (≈ 4 minutes on 2 CPU cores)
    python -m pytest -q tests/guides -k 02                  # one guide

Each guide runs in its own folder laid out like a checkout (`examples/` linked in, the shared data at
`../shared`), with a private TUNEFORGE_HOME that reuses the converted default model. A shell block made only
of `tuneforge ...` lines runs each through the CLI's own `main()` in this process (the same parser and
functions, without importing torch again: ~5 s a command on 2 cores); any other shell block runs in bash with
the venv's `tuneforge` first on PATH. Python blocks run in this process too, one namespace per guide, so later
blocks see what earlier ones defined, as in a reader's session. How CI shrinks
a block (fewer steps, smaller data) is written in the guide itself (`tests/guides/markdown.py`).
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.guides.markdown import Block, GuideError, read_guide

REPO = Path(__file__).resolve().parents[2]
GUIDES = sorted((REPO / "docs" / "guides").glob("[0-9][0-9]-*.md"))
BLOCK_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def guide_home(tmp_path_factory, default_model_dir) -> Path:
    """A TUNEFORGE_HOME of the guides' own (empty data cache), holding the already converted default model."""
    home = tmp_path_factory.mktemp("guide-home")
    (home / "models").mkdir()
    (home / "models" / default_model_dir.name).symlink_to(default_model_dir)
    return home


def checkout(root: Path) -> Path:
    """A folder that looks like the reader's tuneforge checkout: examples/ in it, the data at ../shared."""
    work = root / "tuneforge"
    work.mkdir(parents=True)
    (work / "examples").symlink_to(REPO / "examples")
    (root / "shared").symlink_to(SHARED_DATA.parent)
    return work


def tuneforge_commands(script: str) -> list[list[str]] | None:
    """The block as argv lists when every command in it is a plain `tuneforge ...` line, else None."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        line = line.split(" # ")[0].strip()
        if not line or line.startswith("#"):
            continue
        if any(c in line for c in "|&;<>$`(") or not line.startswith("tuneforge "):
            return None
        commands.append(shlex.split(line))
    return commands


def run_in_process(argv: list[str], where: str) -> str:
    """`tuneforge ARGS` through the CLI's own main(), minus the ~5 s of importing torch for each command."""
    from tuneforge.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(argv[1:])
        except SystemExit as stop:  # argparse's errors and --help
            code = stop.code if isinstance(stop.code, int) else 1
    output = out.getvalue()
    assert code == 0, f"{where} exited {code}:\n{shlex.join(argv)}\n--- output ---\n{output[-4000:]}"
    return output


def run_shell(block: Block, work: Path, env: dict) -> str:
    script = "\n".join([*block.before, block.code_for_ci()])
    commands = tuneforge_commands(block.code_for_ci())
    if commands is not None:
        for line in block.before:
            subprocess.run(["bash", "-e", "-c", line], cwd=work, env=env, check=True)
        return "".join(run_in_process(argv, block.where) for argv in commands)
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, (
        f"{block.where} exited {done.returncode}:\n{script}\n--- output ---\n{output[-4000:]}"
    )
    return output


def run_python(block: Block, work: Path, namespace: dict) -> str:
    for line in block.before:
        subprocess.run(["bash", "-e", "-c", line], cwd=work, check=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.code_for_ci(), block.where, "exec"), namespace)
    return out.getvalue()


def run_guide(guide: Path, root: Path, home: Path) -> list[str]:
    """Run every block of the guide in order; returns each run block's output."""
    work = checkout(root)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TUNEFORGE_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    namespace: dict = {"__name__": "__guide__"}
    outputs = []
    old_cwd, old_home = os.getcwd(), os.environ.get("TUNEFORGE_HOME")
    os.chdir(work)
    os.environ["TUNEFORGE_HOME"] = str(home)
    try:
        for block in read_guide(guide):
            if not block.runs:
                continue
            if block.file:
                target = work / block.file
                assert not target.is_symlink(), f"{block.where}: writes into the repository's {block.file}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block.code_for_ci())
                continue
            if block.language == "python":
                output = run_python(block, work, namespace)
            else:
                output = run_shell(block, work, env)
            for text in block.expects:
                assert text in output, f"{block.where}: expected {text!r} in the output:\n{output[-4000:]}"
            outputs.append(output)
    finally:
        os.chdir(old_cwd)
        if old_home is None:
            os.environ.pop("TUNEFORGE_HOME", None)
        else:
            os.environ["TUNEFORGE_HOME"] = old_home
    return outputs


def test_there_are_guides():
    assert len(GUIDES) >= 4, GUIDES


@pytest.mark.e2e
@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem[:2] for g in GUIDES])
def test_guide_runs_as_written(guide, tmp_path, guide_home):
    assert run_guide(guide, tmp_path, guide_home), f"{guide.name} has no block that CI runs"


def test_a_renamed_flag_in_a_guide_fails_its_run(tmp_path, guide_home):
    """The drift this suite exists for: a guide that still says `--lora_rank` after the key became `rank`."""
    guide = tmp_path / "01-drifted.md"
    guide.write_text(
        "```bash\ntuneforge train --data ../shared/data/cheese_instructions.txt --lora_rank 8\n```\n"
    )
    with pytest.raises(AssertionError, match="exited 2"):
        run_guide(guide, tmp_path / "run", guide_home)


def test_a_ci_replace_that_no_longer_matches_fails(tmp_path):
    guide = tmp_path / "01-stale.md"
    guide.write_text(
        '<!-- ci: replace "--epochs 10" with "--max_steps 1" -->\n```bash\ntuneforge train --epochs 3\n```\n'
    )
    (block,) = read_guide(guide)
    with pytest.raises(GuideError, match="not in the block"):
        block.code_for_ci()


def test_a_ci_comment_must_sit_right_before_its_block(tmp_path):
    guide = tmp_path / "01-loose.md"
    guide.write_text("<!-- ci: skip: later -->\nsome prose\n```bash\ntrue\n```\n")
    with pytest.raises(GuideError, match="right before a code block"):
        read_guide(guide)
