"""Where a tuneforge training step's time goes: matmuls, attention, the loss head, elementwise ops, casts,
dropout's random masks and the optimizer — the per-op profile behind benchmarks/train_throughput.py's MFU.

    python benchmarks/step_profile.py                         # LoRA q,v on raw text (seq 256 x 4), 3 steps
    python benchmarks/step_profile.py --case lines --steps 4  # any case of train_throughput.py
    python benchmarks/step_profile.py --compile               # the same with torch.compile'd blocks

The run is train_throughput.py's tuneforge run (same model, data and settings, on jemalloc where it is
installed, as `tuneforge train` runs); torch.profiler records the timed steps only (after 2 warm-up steps),
forward, backward and optimizer update included. Each aten op's self time is put in one category; the loss
head's share is the total time of its fused function (its matmuls, softmax and casts, which also appear in their
own categories). The last line says what MFU the step would reach if every non-matmul category took no time, so
the gap between the measured MFU and that bound is the time spent outside matmuls.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput as bench  # noqa: E402  (the cases, examples and machine facts are shared)

# (category, substrings of aten op names), first match wins; anything else is "other"
CATEGORIES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "int4pack_mm")),
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("fused by torch.compile", ("Compiled", "cpp_fused", "Torch-Compiled", "inductor")),
    ("optimizer", ("_fused_adamw", "_foreach_", "aten::_fused_adam")),
    ("dropout masks", ("bernoulli", "native_dropout", "keep_mask", "aten::random_")),
    ("casts and copies", ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous")),
    (
        "elementwise",
        (
            "aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::pow", "aten::exp",
            "aten::rsqrt", "aten::mean", "aten::sum", "aten::neg", "aten::cat", "aten::fill_", "aten::where",
            "aten::amax", "aten::log", "aten::zero_", "aten::cos", "aten::sin", "aten::gather", "aten::index",
            "aten::masked_fill", "aten::embedding", "aten::norm", "aten::clamp", "aten::sqrt", "aten::scatter",
            "aten::mm_backward", "aten::threshold", "aten::gelu", "aten::tanh", "aten::softmax",
            "aten::_softmax", "aten::logsumexp", "aten::native_dropout_backward", "aten::zeros",
            "aten::ones", "aten::arange", "aten::linalg_vector_norm", "aten::_local_scalar_dense",
        ),
    ),
)  # fmt: skip
TOP_OPS = 25  # the ops listed one by one, by self time
HEAD = "LinearCrossEntropy"  # train/loss.py's fused head + cross-entropy (an autograd Function)


def category(name: str) -> str:
    for label, needles in CATEGORIES:
        if any(needle in name for needle in needles):
            return label
    return "other"


def profile_run(case: str, steps: int, extra: dict) -> dict:
    """Seconds by category over `steps` timed steps of tuneforge's run of `case`."""
    import torch

    import tuneforge as tf
    import tuneforge.train.loop as loop
    from tuneforge.hardware import pick_precision

    method = bench.CASES[case][3]
    llm = tf.load("default", precision="auto", device="cpu")
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    original = loop._optimizer_step
    first, last = bench.WARMUP + 1, bench.WARMUP + steps

    def profiled_step(run, data, config, state, step, *args, **kwargs):
        if step == first:
            profiler.__enter__()
        result = original(run, data, config, state, step, *args, **kwargs)
        if step == last:
            profiler.__exit__(None, None, None)
        return result

    loop._optimizer_step = profiled_step  # a benchmark's hook: the loop has no per-step callback to use
    try:
        _, records, _ = bench.train_tuneforge(llm, case, "auto", last, extra)
    finally:
        loop._optimizer_step = original
    seconds: dict[str, float] = {}
    ops: dict[str, float] = {}
    head = 0.0
    for event in profiler.key_averages():
        ops[event.key] = event.self_cpu_time_total / 1e6
        if event.key == HEAD:
            head += event.cpu_time_total / 1e6
        seconds[category(event.key)] = seconds.get(category(event.key), 0.0) + event.self_cpu_time_total / 1e6
    timed = records[first - 1 : last]
    return {
        "seconds": seconds,
        "ops": dict(sorted(ops.items(), key=lambda item: -item[1])[:TOP_OPS]),
        "head_s": head,
        "tokens": sum(r["tokens"] for r in timed),
        # wall time of the profiled steps (the profiler's own cost included)
        "wall_s": records[last - 1]["elapsed_s"] - records[first - 2]["elapsed_s"],
        "params": sum(p.numel() for p in llm.model.parameters()),
        "method": method,
        "precision": pick_precision("auto", "cpu"),  # compute precision (full: fp32 weights, bf16 autocast)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="lora-qv-raw", choices=[c for c in bench.CASES if c != "busy"])
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks (compile: true)")
    args = parser.parse_args()
    from tuneforge.train.host_memory import allocator_in_use, with_jemalloc

    with_jemalloc(sys.orig_argv[1:])  # as `tuneforge train` starts itself: on jemalloc where it is installed
    extra = {"compile": True} if args.compile else {}
    measured = {p: bench.matmul_peak(p, "cpu") for p in ("fp32", "bf16")}
    peaks = {p: rate for p, (rate, _) in measured.items()}
    result = profile_run(args.case, args.steps, extra)
    seconds, total = result["seconds"], sum(result["seconds"].values())
    print(
        f"machine: {bench.machine_name('cpu')}; CPU flags: {bench.cpu_flags()}; matmul peak fp32 "
        f"{peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s (best of {len(bench.CPU_PEAK_SHAPES)} shapes: "
        f"{bench.shape_name(measured['fp32'][1])} and {bench.shape_name(measured['bf16'][1])}); allocator {allocator_in_use()}\ncase {args.case}"
        f"{' (compiled)' if args.compile else ''}, {result['precision']}: {args.steps} steps, "
        f"{total / args.steps:.2f} s of the ops' own time a step, {result['wall_s'] / args.steps:.2f} s of wall "
        "time (the rest falls between ops: Python, the autograd engine; the profiler adds a little)"
    )
    print("| where the time goes | s per step | share |\n|---|---|---|")
    for label, value in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"| {label} | {value / args.steps:.3f} | {value / total:.0%} |")
    print(f"| (of all these: the fused loss head) | {result['head_s'] / args.steps:.3f} | "
          f"{result['head_s'] / total:.0%} |")  # fmt: skip
    print(f"\n| top {TOP_OPS} ops by self time | s per step | category |\n|---|---|---|")
    for name, value in result["ops"].items():
        print(f"| {name} | {value / args.steps:.3f} | {category(name)} |")
    flops = (6 if result["method"] == "full" else 4) * result["params"] * result["tokens"]
    peak = peaks["bf16" if result["precision"] == "bf16" else "fp32"] * 1e9
    mfu = flops / total / peak
    print(
        f"MFU {mfu:.1%} of the {result['precision']} peak over the ops' time "
        f"({flops / result['wall_s'] / peak:.1%} over wall time); with no time outside matmuls it would be "
        f"{flops / seconds.get('matmul', total) / peak:.1%}"
    )
    print("JSON " + json.dumps({"case": args.case, "compile": args.compile, "peaks": peaks, **result}))


if __name__ == "__main__":
    main()
