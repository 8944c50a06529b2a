"""Read a guide's code blocks and the `<!-- ci: ... -->` comments that steer how CI runs them.

    from tests.guides.markdown import read_guide
    for block in read_guide(Path("docs/guides/01-lora-raw-text-webui-cli.md")):
        print(block.language, block.line, block.code_for_ci())

A comment steers the next fenced block (blank lines may sit between them). One directive per comment:

    <!-- ci: replace "--epochs 10" with "--max_steps 1" -->   the text must be in the block, or the test fails
    <!-- ci: skip: needs 2 GPUs -->                           not run; the reason is required
    <!-- ci: file examples/x.yaml -->                         the block is a file to write, not a command
    <!-- ci: expect "micro_batch_size auto" -->               the block's output must contain this text
    <!-- ci: before "head -n 200 x > y" -->                   a shell line CI runs first (smaller data, say)

Blocks in ```bash, ```sh and ```python run; ```yaml/```json only with `file`; others (```text) are output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

RUNNABLE = {"bash", "sh", "python"}
FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*ci:\s*(.*?)\s*-->\s*$")
QUOTED = r'"((?:[^"\\]|\\.)*)"'  # a double-quoted string; \" inside it stands for "


class GuideError(ValueError):
    """A guide's ci comment is malformed or does not match its block: the guide has drifted."""


@dataclass
class Block:
    guide: str
    line: int  # where the block's fence opens, for messages
    language: str
    code: str
    replacements: list[tuple[str, str]] = field(default_factory=list)
    skip: str | None = None
    file: str | None = None
    expects: list[str] = field(default_factory=list)
    before: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.guide}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.skip is None and (self.file is not None or self.language in RUNNABLE)

    def code_for_ci(self) -> str:
        """The block's text with every `replace` applied; a replacement that no longer matches is an error."""
        code = self.code
        for old, new in self.replacements:
            if old not in code:
                raise GuideError(f"{self.where}: ci replace {old!r} is not in the block any more")
            code = code.replace(old, new)
        return code


def _unquote(text: str) -> str:
    return text.replace('\\"', '"').replace("\\n", "\n")


def _apply(directive: str, pending: dict, where: str) -> None:
    if m := re.fullmatch(rf"replace {QUOTED} with {QUOTED}", directive):
        pending["replacements"].append((_unquote(m[1]), _unquote(m[2])))
    elif m := re.fullmatch(r"skip:\s*(\S.*)", directive):
        pending["skip"] = m[1]
    elif m := re.fullmatch(r"file\s+(\S+)", directive):
        pending["file"] = m[1]
    elif m := re.fullmatch(rf"expect {QUOTED}", directive):
        pending["expects"].append(_unquote(m[1]))
    elif m := re.fullmatch(rf"before {QUOTED}", directive):
        pending["before"].append(_unquote(m[1]))
    else:
        raise GuideError(f"{where}: unknown ci directive {directive!r}")


def _fresh() -> dict:
    return {"replacements": [], "skip": None, "file": None, "expects": [], "before": []}


def read_guide(path: Path) -> list[Block]:
    """Every fenced block of the guide, in order, with the ci directives written before it."""
    blocks: list[Block] = []
    pending = _fresh()
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        text = lines[i]
        if m := DIRECTIVE.match(text.strip()):
            _apply(m[1], pending, f"{path.name}:{i + 1}")
        elif m := FENCE.match(text.strip()):
            start, body = i, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise GuideError(f"{path.name}:{start + 1}: code block never closed")
            blocks.append(Block(path.name, start + 1, m[1], "\n".join(body) + "\n", **pending))
            pending = _fresh()
        elif text.strip() and any(pending.values()):
            raise GuideError(f"{path.name}:{i + 1}: a ci comment must come right before a code block")
        i += 1
    if any(pending.values()):
        raise GuideError(f"{path.name}: a ci comment at the end steers no block")
    return blocks
