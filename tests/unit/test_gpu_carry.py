"""benchmarks/gpu_carry.py deals wheels into folders small enough to carry to a GPU machine; gpu_check.sh joins
the parts of a cut file. Dealt and joined, every file must come back byte for byte, and no folder may exceed
its budget."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_gpu_carry():
    spec = importlib.util.spec_from_file_location("gpu_carry", ROOT / "benchmarks" / "gpu_carry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dealt_folders_stay_within_budget_and_join_back_to_the_same_files(tmp_path):
    gpu_carry = load_gpu_carry()
    sources = tmp_path / "sources"
    sources.mkdir()
    sizes = {"big.whl": 2500, "exact.whl": 1000, "small.whl": 10, "empty.whl": 0, "data.txt": 700}
    files = []
    for name, size in sizes.items():
        (sources / name).write_bytes(os.urandom(size))
        files.append((sources / name, f"shared-data/{name}" if name.endswith(".txt") else name))

    folders = gpu_carry.deal(files, tmp_path / "carry", budget=1000)

    for folder in folders:
        assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) <= 1000
    assert len(folders) == 5  # 4,210 bytes in folders of 1,000
    joined = tmp_path / "joined"
    joined.mkdir()
    for folder in folders:
        subprocess.run(["cp", "-r", f"{folder}/.", str(joined)], check=True)
    # gpu_check.sh's own joining loop, run as it is written there
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    start = script.index('  for first in "$CARRIED"')
    loop = script[start : script.index("  done\n", start) + len("  done\n")]
    subprocess.run(["bash", "-c", f"set -euo pipefail\nCARRIED={joined}\n{loop}"], check=True)
    assert sorted(p.name for p in joined.glob("*.whl")) == sorted(n for n in sizes if n.endswith(".whl"))
    assert not list(joined.glob("*.part-*"))
    for source, name in files:
        assert (joined / name).read_bytes() == source.read_bytes(), name


def test_no_budget_puts_everything_whole_in_one_folder(tmp_path):
    gpu_carry = load_gpu_carry()
    source = tmp_path / "a.whl"
    source.write_bytes(b"x" * 5000)
    folders = gpu_carry.deal([(source, "a.whl")], tmp_path / "carry", budget=0)
    assert [p.name for p in folders[0].iterdir()] == ["a.whl"]
