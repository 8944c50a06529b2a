"""The UI's project folder: datasets/, models/, loras/, runs/ — what each lists, and every file choice checked.

    project = Project(".")
    project.datasets()                       # ['data.txt', 'alpaca.json', ...]
    project.dataset("data.txt")              # /abs/datasets/data.txt; '../x', '/etc/passwd', links out: refused

Every name that comes from the browser goes through `tuneforge.paths.resolve_inside`, so nothing outside
these folders is ever read or written, and a refusal never says whether the outside target exists.
"""

from __future__ import annotations

import re
from pathlib import Path

from tuneforge.errors import ConfigError
from tuneforge.models.loading import HUB_PREFIX
from tuneforge.paths import resolve_inside

FOLDERS = ("datasets", "models", "loras", "runs")
DATA_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".html", ".htm", ".sql", ".gz")
SHIPPED_FORMATS = ("alpaca-format", "alpaca-chat-format")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
RUN_NAME = re.compile(r"^[\w][\w.-]{0,99}$")


class Project:
    """One project folder and its four subfolders (created on first use)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        for name in FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def folder(self, name: str) -> Path:
        return self.root / name

    # ------------------------------------------------------------------ listings
    def datasets(self) -> list[str]:
        """Data files under datasets/ (subfolders included, format files excluded), as names relative to it."""
        root = self.folder("datasets")
        names = []
        for path in root.rglob("*"):
            parts = path.relative_to(root).parts
            if (
                path.suffix.lower() in DATA_SUFFIXES
                and "formats" not in parts
                and path.is_file()
                and not any(part.startswith(".") for part in parts)
                and _inside(root, path)
            ):
                names.append("/".join(parts))
        return sorted(names)

    def text_datasets(self) -> list[str]:
        """The datasets that are plain text (what perplexity scores), not files of records."""
        from tuneforge.data.sources import RECORD_SUFFIXES, inner_suffix

        return [name for name in self.datasets() if inner_suffix(Path(name)) not in RECORD_SUFFIXES]

    def format_files(self) -> list[str]:
        """The shipped format files and the JSON files in datasets/formats/."""
        own = (
            sorted(p.name for p in (self.folder("datasets") / "formats").glob("*.json"))
            if (self.folder("datasets") / "formats").is_dir()
            else []
        )
        return list(SHIPPED_FORMATS) + [f"formats/{name}" for name in own]

    def models(self) -> list[str]:
        """'default' and each folder of models/ that holds a config.json and safetensors weights."""
        root = self.folder("models")
        folders = sorted(
            p.name for p in root.iterdir() if p.is_dir() and _inside(root, p) and _safetensors_model(p)
        )
        return ["default"] + [f"models/{name}" for name in folders]

    def loras(self) -> list[str]:
        """Adapters in loras/ and the adapters of finished runs in runs/."""
        loras = self.folder("loras")
        own = [
            f"loras/{p.name}"
            for p in sorted(loras.iterdir())
            if _inside(loras, p) and _safetensors_adapter(p)
        ]
        runs = [
            f"runs/{p.name}"
            for p in sorted(self.folder("runs").iterdir())
            if _safetensors_adapter(p / "adapter")
        ]
        return own + runs

    def runs(self) -> list[str]:
        """Run folders that hold a config.yaml (newest first)."""
        found = [p for p in self.folder("runs").iterdir() if (p / "config.yaml").is_file()]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def checkpoints(self, run: str) -> list[str]:
        """A run's checkpoint adapters, as LoRA choices ('runs/NAME/checkpoints/step-N')."""
        folder = self.run_dir(run) / "checkpoints"
        if not folder.is_dir():
            return []
        steps = sorted(
            (int(p.name.split("-")[1]), p.name)
            for p in folder.iterdir()
            if re.fullmatch(r"step-\d+", p.name) and _safetensors_adapter(p / "adapter")
        )
        return [f"runs/{run}/checkpoints/{name}" for _, name in steps]

    def add_dataset(self, name: str, data: bytes) -> Path:
        """Write an uploaded file as datasets/NAME (a plain name), or NAME-1, NAME-2, ... when a file of other
        content holds NAME (earlier runs trained on it; their reports and resumes read it); the same content
        again is the file already there. Written through a temporary file renamed into place, so a name that
        is a symlink is replaced, never followed to where it points."""
        import os
        import tempfile

        folder = self.folder("datasets")
        if not re.fullmatch(r"[\w-][\w.-]{0,99}", name):  # checked by hand: resolve_inside follows links
            raise ConfigError(f"'{name[:80]}' is not a plain file name for datasets/")
        stem, dot, suffix = name.partition(".")
        target, number = folder / name, 0
        while target.is_file() and not target.is_symlink():
            if target.read_bytes() == data:
                return target
            number += 1
            target = folder / f"{stem}-{number}{dot}{suffix}"
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

    # ------------------------------------------------------------------ choices, checked
    def dataset(self, name: str) -> Path:
        if not name.strip():
            raise ConfigError("choose a data file first: pick one in the list (or add one to datasets/)")
        path = resolve_inside(self.folder("datasets"), name)
        if not path.is_file():
            raise ConfigError(
                f"'{name}' is not a data file in datasets/; pick one from the list (refresh it)"
            )
        return path

    def listed_dataset(self, path: str | None) -> str | None:
        """The datasets() name of a saved run's data path, or None when it is not one of them."""
        if not path:
            return None
        root = self.folder("datasets").resolve()
        try:
            name = "/".join(Path(path).resolve().relative_to(root).parts)
        except ValueError:
            return None
        return name if name in self.datasets() else None

    def listed_format_file(self, value: str | None) -> str | None:
        """The format_files() name of a saved run's format_file, or None when it is not one of them."""
        if not value or value in SHIPPED_FORMATS:
            return value or None
        inside = Path(value).resolve().parent == (self.folder("datasets") / "formats").resolve()
        name = f"formats/{Path(value).name}" if inside else None
        return name if name in self.format_files() else None

    def format_file(self, name: str) -> str:
        """A shipped format name, or the checked path of datasets/formats/NAME.json."""
        if name in SHIPPED_FORMATS:
            return name
        path = resolve_inside(self.folder("datasets"), name)
        if not path.is_file() or path.suffix != ".json":
            raise ConfigError(f"'{name}' is not a format file; pick one from the list")
        return str(path)

    def model(self, name: str) -> str:
        """'default', the checked folder of models/NAME (safetensors only), or a hub id."""
        if name == "default":
            return name
        if name.startswith("models/"):
            path = resolve_inside(self.folder("models"), name.removeprefix("models/"))
            if not (path.is_dir() and _safetensors_model(path)):
                raise ConfigError(f"'{name}' is not a model folder with config.json and .safetensors weights")
            return str(path)
        # Sent as hub:owner/name, which the loader never reads from this disk: the answer is the same
        # whether or not a path of that name exists where the UI runs.
        hub_id = name.removeprefix(HUB_PREFIX)
        if HUB_ID.match(hub_id) and ".." not in hub_id:
            return HUB_PREFIX + hub_id
        raise ConfigError(
            f"'{name[:80]}' is neither 'default', a folder of models/, nor a hub id like owner/model"
        )

    def lora(self, name: str) -> Path:
        """The checked adapter folder of 'loras/NAME', 'runs/NAME' or 'runs/NAME/checkpoints/step-N'."""
        top, _, rest = name.partition("/")
        if top not in ("loras", "runs") or not rest:
            raise ConfigError(f"'{name[:80]}' is not one of the listed LoRAs; refresh the list")
        path = resolve_inside(self.folder(top), rest)
        if top == "runs":
            path = path / "adapter"
        if not _safetensors_adapter(path):
            raise ConfigError(f"'{name[:80]}' is not one of the listed LoRAs; refresh the list")
        return path

    def run_dir(self, name: str, must_exist: bool = True) -> Path:
        """runs/NAME; a new name must be a plain folder name (letters, digits, - _ .)."""
        if not must_exist and not RUN_NAME.match(name or ""):
            raise ConfigError(
                f"run name '{str(name)[:80]}' must be a plain folder name: letters, digits, - _ ."
            )
        path = resolve_inside(self.folder("runs"), name, must_exist=must_exist)
        if path.parent != self.folder("runs"):
            raise ConfigError(f"run name '{name[:80]}' must be a plain folder name inside runs/")
        return path


def _inside(root: Path, path: Path) -> bool:
    """False for a link whose target lies outside `root` (it is not listed, and refused if named)."""
    return root.resolve() in path.resolve().parents


def _safetensors_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _safetensors_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
