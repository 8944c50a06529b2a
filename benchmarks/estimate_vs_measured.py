"""The memory estimate (tuneforge.train.estimate) next to the measured peak memory, on this machine.

    python benchmarks/estimate_vs_measured.py            # lora, qlora, full on the default model, micro batch 1 and 4

Each case trains 2 steps in a fresh process (so its peak is its own) on full-length raw-text chunks of
tinyshakespeare (cutoff_len 256) and reports its peak RSS (CPU) or peak allocated memory (CUDA). On a CPU the
process runs on jemalloc where it is installed, as `tuneforge train` does (train/host_memory.py; the Python API
keeps its process's allocator, and on glibc a run's RSS is higher: freed memory is kept for the next step). The
estimate is made before, from the config alone (the model built on the meta device). Every total should be
within 25%.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
CASE = """
import json, resource, sys
import torch
import tuneforge as tf
settings = json.loads(sys.argv[1])
llm = tf.load("default", precision=settings["precision"], device=settings["device"])
llm.train(show_progress=False, **{k: v for k, v in settings.items() if k not in ("device",)})
peak = (torch.cuda.max_memory_allocated() if settings["device"] == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print("PEAK", peak)
"""


def settings(method: str, micro: int, device: str, output: Path) -> dict:
    return dict(
        data=str(DATA),
        format="raw",
        cutoff_len=256,
        overlap_len=0,
        method=method,
        micro_batch_size=micro,
        batch_size=micro,
        max_steps=2,
        precision="fp32",
        device=device,
        num_threads=None,
        output_dir=str(output / f"{method}-{micro}"),
        sample_prompts=[],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--micro", type=int, nargs=2, default=[1, 4])
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "estimate"))
    args = parser.parse_args()
    import os

    from tuneforge.config import RunConfig
    from tuneforge.train.estimate import GIB, estimate_run
    from tuneforge.train.host_memory import find_jemalloc, jemalloc_environment

    # as `tuneforge train` starts itself (cli/train.py): on jemalloc where installed
    environment = jemalloc_environment(os.environ, find_jemalloc()) if args.device == "cpu" else None
    print(f"allocator: {'jemalloc' if environment else 'the default (glibc)'}")
    rows = []
    print(
        f"{'method':6} {'micro':>5} {'estimate GiB':>12} {'measured GiB':>12} {'ratio':>6}  (weights/grad/optim/act)"
    )
    for method in ("lora", "qlora", "full"):
        for micro in args.micro:
            case = settings(method, micro, args.device, Path(args.output))
            config = RunConfig(model="default", **{k: v for k, v in case.items() if k != "data"})
            estimate = estimate_run(config, device=args.device)
            # this benchmark's own run of the case, from before
            shutil.rmtree(case["output_dir"], ignore_errors=True)
            done = subprocess.run(
                [sys.executable, "-c", CASE, json.dumps(case)],
                capture_output=True,
                text=True,
                env=environment,
            )
            if done.returncode != 0:
                print(f"{method:6} {micro:>5} failed: {done.stderr[-400:]}")
                continue
            peak = int(done.stdout.split("PEAK")[-1])
            ratio = estimate.total / peak
            parts = "/".join(
                f"{getattr(estimate, p) / GIB:.2f}"
                for p in ("weights", "gradients", "optimizer", "activations")
            )
            print(
                f"{method:6} {micro:>5} {estimate.total / GIB:>12.2f} {peak / GIB:>12.2f} {ratio:>6.2f}  ({parts})",
                flush=True,
            )
            rows.append(
                {
                    "method": method,
                    "micro_batch_size": micro,
                    "estimate": estimate.total,
                    "peak": peak,
                    "within_25_percent": abs(ratio - 1) <= 0.25,
                }
            )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
