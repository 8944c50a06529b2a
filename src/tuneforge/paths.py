"""The ground floor: where tuneforge keeps its files, and how a folder is written so a crash never leaves half.

    from tuneforge.paths import tuneforge_home, write_folder_atomically
    write_folder_atomically(tuneforge_home() / "models" / "x", lambda tmp: (tmp / "config.json").write_text("{}"))

Every layer (data cache, model conversion, checkpoints, evaluation history) imports these from here, so no
layer reaches sideways into another for a helper.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def tuneforge_home() -> Path:
    """The cache folder for converted models, prepared datasets and machine facts ($TUNEFORGE_HOME)."""
    return Path(os.environ.get("TUNEFORGE_HOME", Path.home() / ".cache" / "tuneforge")).expanduser()


def write_folder_atomically(
    target: Path, write: Callable[[Path], object], marker: str = "config.json"
) -> Path:
    """Call write(tmp) on a temporary folder beside `target`, then rename it to `target`.

    A crash or Ctrl-C inside `write` leaves no `target` at all, never a half-written one. If another
    process finished the same folder first, its copy is kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / marker).is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_inside(root: str | Path, name: str, must_exist: bool = True) -> Path:
    """`root/name` as a real path that stays inside `root`, for a file or folder a person (or a web form) named.

    Refused, with one message that never says whether anything exists elsewhere: an empty name, absolute
    paths, `..`, backslashes, NUL bytes, drive letters, and symlinks whose target lies outside `root`.

        resolve_inside("project/datasets", "data.txt")      # -> /abs/project/datasets/data.txt
    """
    from tuneforge.errors import ConfigError

    shown = "".join(c if c.isprintable() else "?" for c in str(name)[:80])
    refused = ConfigError(
        f"'{shown}' is not available in {Path(root).name}/; choose one of the listed "
        "names (plain names inside that folder)"
    )
    if not isinstance(name, str) or not name.strip() or len(name) > 1024:
        raise refused
    parts = name.split("/")
    if (
        "\x00" in name
        or "\\" in name
        or name.startswith(("/", "~"))
        or ":" in parts[0]
        or any(part in ("", "..") for part in parts[:-1])
        or parts[-1] in ("", "..", ".")
    ):
        raise refused
    base = Path(root).resolve()
    target = (base / name).resolve()  # follows symlinks, so a link pointing out is caught below
    if target != base and base not in target.parents:
        raise refused
    if must_exist and not target.exists():
        raise refused
    return target
