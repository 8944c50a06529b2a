"""Training throughput: the seeds' Hugging Face recipe and tuneforge side by side, same model/data/settings.

    python benchmarks/train_throughput.py                    # every case (~25 min on 2 CPUs); or: make bench
    python benchmarks/train_throughput.py --cases lora-qv-raw --steps 6
    python benchmarks/train_throughput.py --device cuda      # on a GPU (benchmarks/gpu_check.sh)
    python benchmarks/train_throughput.py --cases busy --steps 4   # step time idle vs a second process busy
    python benchmarks/train_throughput.py --cases full --repeats 2  # each run twice, interleaved; best of each

Baseline = `transformers.Trainer` + PEFT `get_peft_model` + `DataCollatorForLanguageModeling(mlm=False)`, once with
`bf16=True` and once in fp32 (the seeds' default), and for full fine-tuning also with `optim="adamw_torch_fused"`;
each tuneforge run is compared with the FASTEST of these on this machine (on a CPU without AMX that is fp32).
For QLoRA the base is loaded with a bitsandbytes 4-bit config.
Every run trains on the same examples in the same order (the Trainer is given tuneforge's seeded step order) and
each is a fresh subprocess, so its peak memory is its own. Reported per run: tokens/s over all tokens (padding
included) and over useful (loss-carrying) tokens, peak RSS of loading and training (and peak GPU memory on
CUDA; taken before the held-out loss, which scores every model in fp32 and so copies a bf16 one), model FLOPs
utilisation against the matmul peak of the precision the run computed in (the best rate of a few matmul shapes,
measured again in its process right after it; 4 x parameters a token for adapters, 6 x for a full fine-tune, and for raw text also with PaLM's
attention FLOPs), loss of the last step, and held-out loss (fp32, the same 16 held-out examples and the same evaluation
code for every run). The `busy` case times tuneforge's step idle and with a second process burning every core: with the
threads hardware.choose_threads() picks (the default) and with one per core, each also with OpenMP's passive
waits (`--passive-waits` adds that A/B to the other cases).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# ../shared/data beside the repository; TUNEFORGE_SHARED_DATA where it lies elsewhere (a GPU machine: gpu_check.sh)
SHARED = Path(
    os.environ.get("TUNEFORGE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
CASES = {
    # name: (data file, format, LoRA target modules or None for full fine-tuning, method)
    "lora-qv-raw": ("tinyshakespeare.txt", "raw", ["q_proj", "v_proj"], "lora"),
    "lora-all-linear": ("tinyshakespeare.txt", "raw", ["all-linear"], "lora"),
    "lines": ("cheese_instructions.txt", "lines", ["q_proj", "v_proj"], "lora"),
    "full": ("tinyshakespeare.txt", "raw", None, "full"),
    "qlora-4bit": ("tinyshakespeare.txt", "raw", ["q_proj", "v_proj"], "qlora"),
    "full-lines": (
        "cheese_instructions.txt",
        "lines",
        None,
        "full",
    ),  # short rows: fixed per-step costs dominate
    "busy": (
        "cheese_instructions.txt",
        "lines",
        ["q_proj", "v_proj"],
        "lora",
    ),  # timed idle, then beside a burner
}
BURNER = (
    "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"  # another torch job on every core
)
SEQ, BATCH, RANK, WARMUP, HELD_OUT = 256, 4, 8, 2, 16
PASSIVE_WAITS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}  # idle OpenMP threads sleep at once
SLOW_PRECISION = 0.5  # a CPU whose bf16 matmul peak is below this share of fp32's skips the HF bf16 recipe


def examples_for(case: str, tokenizer):
    """The same tokenized examples for every implementation: tuneforge's data preparation, no packing."""
    from tuneforge.config import RunConfig
    from tuneforge.data.examples import prepare_examples

    file, shape, _, _ = CASES[case]
    config = RunConfig(
        data=str(SHARED / file), format=shape, cutoff_len=SEQ, overlap_len=32, validation_split=0
    )
    examples = list(prepare_examples(config.data, tokenizer, config).train)
    return examples[HELD_OUT:], examples[:HELD_OUT]


def step_order(n_examples: int) -> list[int]:
    """tuneforge's seeded order of training examples (seed 42), which the Trainer is made to follow too."""
    from tuneforge.train.batches import StepOrder

    return [i for step in StepOrder(n_examples, BATCH, seed=42).epoch(0) for i in step]


def device_name(device: str) -> str:
    import torch

    return (
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )


def peak_memory_mb() -> dict:
    import torch

    peaks = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


# (m, k, n) shapes a CPU's matmul peak is the best of. One square is not enough: on 2 cores with AMX, oneDNN's
# bf16 matmul ran 1024x1024x1024 at 1.1-1.2 TFLOP/s but 1536^3, 2048x1024x1536 and SmolLM2's own 1024x576x1536
# at 2.0-2.4 in the same minute (fp32 held 255-304 GFLOP/s on all of them), so the 1024^3 peak this benchmark
# used until 2026-12-07 was half the machine's and every MFU it printed was twice the true one.
CPU_PEAK_SHAPES = (
    (1024, 1024, 1024),
    (1536, 1536, 1536),
    (2048, 1024, 1536),
    (1024, 576, 1536),
    (2048, 2048, 2048),
)
GPU_PEAK_SHAPES = ((8192, 8192, 8192),)


def peak_shapes(device: str) -> tuple[tuple[int, int, int], ...]:
    return CPU_PEAK_SHAPES if device == "cpu" else GPU_PEAK_SHAPES


def matmul_peak(dtype_name: str, device: str) -> tuple[float, tuple[int, int, int]]:
    """The best GFLOP/s a matmul of this precision reached here (the median of 10 timed calls, best over the
    shapes), and the shape that reached it."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = (0.0, (0, 0, 0))
    for m, k, n in peak_shapes(device):
        a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(10):
            sync()
            start = time.perf_counter()
            a @ b
            sync()
            times.append(time.perf_counter() - start)
        best = max(best, (2 * m * k * n / sorted(times)[len(times) // 2] / 1e9, (m, k, n)))
    return best


def shape_name(shape: tuple[int, int, int]) -> str:
    return "x".join(map(str, shape))


def held_out_loss(model, held_out, pad_id) -> float:
    import torch

    from tuneforge.models.kind import is_quantized
    from tuneforge.train.loss import evaluate_loss

    if not is_quantized(model):
        model.float()
    else:  # a 4-bit base stays 4-bit; every other weight is scored in fp32 (tuneforge keeps them in bf16)
        for param in model.parameters():
            if param.dtype in (torch.bfloat16, torch.float16) and type(param).__name__ != "Params4bit":
                param.data = param.data.float()
    return evaluate_loss(model, held_out, 4, pad_id, next(model.parameters()).device)


def attention_flops_per_token(model, case: str) -> int | None:
    """The attention's matmuls (query x key scores, probabilities x values), forward and backward, per token:
    PaLM's 12 x layers x heads x head dim x sequence (its appendix B, as nanoGPT's estimate_mfu; the full
    sequence, masked half included). Only for cases whose every sequence is SEQ tokens long (raw text)."""
    if CASES[case][1] != "raw":
        return None
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 12 * config.num_hidden_layers * heads * head_dim * SEQ


def worker_hf(case: str, precision: str, steps: int, device: str, optim: str = "adamw_torch") -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from tuneforge.models.loading import default_checkpoint

    path = default_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, held_out = examples_for(case, tokenizer)
    _, _, targets, method = CASES[case]
    if method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if precision == "bf16" else torch.float32
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, quantization_config=quantization, device_map={"": device}
        )
        # the seeds' QLoRA recipe; gradient checkpointing off as in every other run here (it costs ~23%)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if method != "full":
        model = get_peft_model(
            model,
            LoraConfig(
                r=RANK,
                lora_alpha=2 * RANK,
                lora_dropout=0.05,
                target_modules="all-linear" if targets == ["all-linear"] else targets,
                task_type="CAUSAL_LM",
            ),
        )
    dataset = Dataset.from_list([{"input_ids": train[i]["input_ids"]} for i in step_order(len(train))])
    times: list[float] = []

    class StepTimer(TrainerCallback):  # wall clock at each step's end: data loading and logging included
        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    class SameOrderTrainer(Trainer):  # the dataset is already in tuneforge's shuffled order
        def _get_train_sampler(self, train_dataset=None):
            from torch.utils.data import SequentialSampler

            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            max_steps=steps + WARMUP,
            learning_rate=2e-4,
            bf16=precision == "bf16",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=42,
            use_cpu=device == "cpu",
            dataloader_num_workers=0,
            disable_tqdm=True,
            optim=optim,
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        trainer = SameOrderTrainer(
            model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[StepTimer()]
        )
        # count what each step sees: the same sampler order the Trainer uses
        batches = list(trainer.get_train_dataloader())[: steps + WARMUP]
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    all_tokens = sum(int(b["input_ids"].numel()) for b in batches[WARMUP:])
    useful = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches[WARMUP:])
    seconds = times[-1] - times[WARMUP - 1]  # the same window as tuneforge's: end of warm-up to end of run
    # loading and training; held_out_loss's fp32 copy is the benchmark's, not the run's
    peaks = peak_memory_mb()
    return {
        **peaks,
        "tokens_per_s": all_tokens / seconds,
        "useful_tokens_per_s": useful / seconds,
        "final_loss": losses[-1],
        "step_s": seconds / steps,
        "precision": precision,
        "held_out_loss": held_out_loss(model, held_out, tokenizer.pad_token_id),
        "params": sum(p.numel() for p in model.parameters()),
        "attention_flops_per_token": attention_flops_per_token(model, case),
    }


def train_tuneforge(llm, case: str, precision: str, max_steps: int, extra: dict) -> tuple:
    """tuneforge's run of `case` with the Trainer's settings: (result, metrics.jsonl records, held-out examples).
    `extra`: settings on top (compile, num_threads, ...); packing: true packs the same examples first."""
    from tuneforge.data import save_preprocessed_data
    from tuneforge.data.examples import PreparedData
    from tuneforge.data.packing import pack_examples

    file, shape, targets, method = CASES[case]
    extra = dict(extra)
    train, held_out = examples_for(case, llm.tokenizer)
    if extra.pop("packing", False):  # pack the same training examples into blocks of SEQ tokens
        train = pack_examples(train, SEQ)
    with tempfile.TemporaryDirectory() as out:
        data = save_preprocessed_data(PreparedData(shape, train), Path(out) / "train.prepared")
        settings = dict(
            method=method,
            rank=RANK,
            alpha=2 * RANK,
            lora_dropout=0.05,
            target_modules=targets or ["q_proj"],
            learning_rate=2e-4,
            batch_size=BATCH,
            micro_batch_size=BATCH,
            max_steps=max_steps,
            logging_steps=1,
            precision=precision,
            lr_scheduler="linear",
            warmup_ratio=0.0,  # the Trainer's default: the same learning rates at every step
            validation_split=0,  # train on every example, as the Trainer does; no evaluation inside the timing
            seed=42,
            output_dir=str(Path(out) / "run"),
        )
        settings.update(extra)
        run = llm.train(str(data), show_progress=False, **settings)
        records = [json.loads(line) for line in Path(out, "run", "metrics.jsonl").read_text().splitlines()]
    return run, records, held_out


def worker_tuneforge(case: str, precision: str, steps: int, extra: dict, device: str) -> dict:
    import torch

    import tuneforge as tf
    from tuneforge.hardware import pick_precision

    extra = dict(extra)
    extra.pop("allocator", None)  # launch() set it up
    if not extra.pop("recast", True):  # the A/B of --without-recast: autocast keeps its bf16 weight copies
        import tuneforge.train.recast

        tuneforge.train.recast.RECAST = False
    if not extra.pop("lean_norms", True):  # the A/B of --without-lean-norms: autograd's own RMSNorm graph
        import tuneforge.train.norms

        tuneforge.train.norms.LEAN_NORMS = False
    if extra.pop("keep_probabilities", False):  # the A/B of --keep-probabilities
        import tuneforge.train.attention

        tuneforge.train.attention.KEEP_PROBABILITIES = True
    llm = tf.load("default", precision=precision, device=device)
    run, records, held_out = train_tuneforge(llm, case, precision, steps + WARMUP, extra)
    timed = records[WARMUP:]
    seconds = records[-1]["elapsed_s"] - records[WARMUP - 1]["elapsed_s"]
    useful = sum(r["tokens"] for r in timed)
    # loading and training; held_out_loss's fp32 copy is the benchmark's, not the run's
    peaks = peak_memory_mb()
    return {
        **peaks,
        "tokens_per_s": useful / seconds,
        "useful_tokens_per_s": useful / seconds,
        "step_s": seconds / steps,
        "threads": torch.get_num_threads(),
        "final_loss": run.final_loss,
        "held_out_loss": held_out_loss(llm.model, held_out, llm.tokenizer.pad_token_id),
        "params": sum(p.numel() for p in llm.model.parameters()),
        "attention_flops_per_token": attention_flops_per_token(llm.model, case),
        # the compute precision (a full fine-tune keeps fp32 weights under bf16 autocast: llm.precision is theirs)
        "precision": pick_precision(precision, llm.device),
    }


def run_worker(args) -> None:
    if args.impl == "hf":
        result = worker_hf(args.case, args.precision, args.steps, args.device, **json.loads(args.extra))
    else:
        result = worker_tuneforge(args.case, args.precision, args.steps, json.loads(args.extra), args.device)
    # this precision's matmul peak again, in the run's own process right after it: a shared machine's speed moves
    # by 20% between runs (1255 at a benchmark's start, 1033-1077 GFLOP/s bf16 minutes later), so each row's MFU
    # is against the peak of its own time
    result["peak_gflops"] = matmul_peak(result["precision"], args.device)[0]
    print("RESULT " + json.dumps(result))


def allocator_env(impl: str, extra: dict | None) -> dict:
    """tuneforge's runs on jemalloc where it is installed, as `tuneforge train` starts itself
    (train/host_memory.py); extra {"allocator": "glibc"} (--without-jemalloc) and the HF recipes keep glibc's."""
    from tuneforge.train.host_memory import find_jemalloc, jemalloc_environment

    if impl != "tuneforge" or (extra or {}).get("allocator") == "glibc":
        return {}
    env = jemalloc_environment(os.environ, find_jemalloc())
    return {"LD_PRELOAD": env["LD_PRELOAD"]} if env else {}


def launch(
    case: str,
    impl: str,
    precision: str,
    steps: int,
    device: str,
    extra: dict | None = None,
    env: dict | None = None,
) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--case",
        case,
        "--impl",
        impl,
        "--precision",
        precision,
        "--steps",
        str(steps),
        "--device",
        device,
        "--extra",
        json.dumps(extra or {}),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1", **allocator_env(impl, extra), **(env or {})},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument(
        "--steps", type=int, default=10, help="timed optimizer steps per run (after 2 warm-up)"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-compile", action="store_true", help="skip the compile: true run (saves ~2 min)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="make every run N times, interleaved, and keep each one's fastest",
    )
    parser.add_argument(
        "--without-recast",
        action="store_true",
        help="also run the full fine-tunes with autocast's bf16 weight copies kept (train/recast.py off)",
    )
    parser.add_argument(
        "--without-lean-norms",
        action="store_true",
        help="also run tuneforge (and its packed rows) with autograd's own RMSNorm (train/norms.py off)",
    )
    parser.add_argument(
        "--keep-probabilities",
        action="store_true",
        help="also run tuneforge (and its packed rows) keeping the attention probabilities for the backward "
        "pass (train/attention.py's KEEP_PROBABILITIES)",
    )
    parser.add_argument(
        "--passive-waits",
        action="store_true",
        help="also run tuneforge's rows with OpenMP's passive waits (OMP_WAIT_POLICY=PASSIVE, the old default)",
    )
    parser.add_argument(
        "--without-jemalloc",
        action="store_true",
        help="also run tuneforge (and its packed rows) on glibc's allocator, where jemalloc is installed",
    )
    parser.add_argument(
        "--packed-micro-batch",
        type=int,
        metavar="N",
        help="also run the packed rows with micro_batch_size N (blocks per forward pass; default 4)",
    )
    parser.add_argument(
        "--keep-bf16",
        action="store_true",
        help="run the HF bf16 recipe even where bf16 matmuls are measured far slower than fp32",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [case for case in args.cases.split(",") if case not in CASES]
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)}; choose from {', '.join(CASES)}")
    args.device = device_name(args.device)
    if args.worker:
        return run_worker(args)

    measured = {p: matmul_peak(p, args.device) for p in ("fp32", "bf16")}
    peaks = {p: rate for p, (rate, _) in measured.items()}
    print(
        f"machine: {machine_name(args.device)}; CPU flags: {cpu_flags()}; matmul peak fp32 {peaks['fp32']:.0f} "
        f"GFLOP/s ({shape_name(measured['fp32'][1])}), bf16 {peaks['bf16']:.0f} GFLOP/s "
        f"({shape_name(measured['bf16'][1])}; the best of {len(peak_shapes(args.device))} "
        f"shapes); seq {SEQ}, batch {BATCH}, LoRA r{RANK}, {args.steps} timed "
        f"steps, best of {args.repeats}; load average now {os.getloadavg()[0]:.1f} (other work on this machine skews every time); "
        f"tuneforge's runs on {'jemalloc' if allocator_env('tuneforge', None) else 'glibc'}, as `tuneforge train` here, HF's on glibc"
    )
    args.skip_bf16 = args.device == "cpu" and peaks["bf16"] < SLOW_PRECISION * peaks["fp32"]
    # on a CPU without bf16 instructions a bf16 step takes minutes and can never be the fastest
    if args.skip_bf16:
        print(
            f"HF bf16 recipe skipped: bf16 matmuls run at {peaks['bf16'] / peaks['fp32']:.1%} of fp32's here, "
            f"so the fp32 recipe is the faster one (--keep-bf16 runs it anyway)"
        )
    rows = []
    for case in args.cases.split(","):
        runs = busy_runs(args) if case == "busy" else case_runs(case, args)
        fastest = max(
            (r for n, r in runs.items() if n.startswith("hf") and "error" not in r),
            key=lambda r: r["useful_tokens_per_s"],
            default=None,
        )
        for name, result in runs.items():
            row = {"case": case, "run": name, **result}
            if "error" not in result:
                method = CASES[case][3]
                flops_per_token = (6 if method == "full" else 4) * result["params"]  # LoRA: no weight grads
                peak = (
                    result.get("peak_gflops")
                    or peaks["bf16" if result.get("precision") == "bf16" else "fp32"]
                )
                # a 4-bit base counts its packed bytes as parameters, so no utilisation for QLoRA
                row["mfu"] = (
                    None if method == "qlora" else result["tokens_per_s"] * flops_per_token / (peak * 1e9)
                )
                attention = result.get("attention_flops_per_token")
                if row["mfu"] is not None and attention:  # the same with the attention's matmuls counted
                    row["mfu_with_attention"] = row["mfu"] * (flops_per_token + attention) / flops_per_token
                if fastest is not None and name.startswith("tuneforge"):
                    row["x_fastest_hf"] = result["useful_tokens_per_s"] / fastest["useful_tokens_per_s"]
                if case == "busy" and "error" not in runs["tuneforge-idle"]:
                    row["x_idle_step"] = result["step_s"] / runs["tuneforge-idle"]["step_s"]
            rows.append(row)
            print(format_row(row), flush=True)
    print(
        "JSON "
        + json.dumps(
            {
                "machine": machine_name(args.device),
                "cpu_flags": cpu_flags(),
                "peaks_gflops": peaks,
                "steps": args.steps,
                "repeats": args.repeats,
                "rows": rows,
            }
        )
    )


def case_runs(case: str, args) -> dict:
    """The HF recipes (fp32, bf16, and fused AdamW for full fine-tuning) and tuneforge's runs of one case.

    With --repeats N every run is made N times, interleaved (all runs once, then again), and each keeps its
    fastest: a shared machine's slow spells then land on no recipe in particular."""
    plan = {"hf-fp32": ("hf", "fp32", None)}
    if not args.skip_bf16 or args.keep_bf16:
        plan["hf-bf16"] = ("hf", "bf16", None)
    if CASES[case][3] == "full":
        plan["hf-fp32-fused-adamw"] = ("hf", "fp32", {"optim": "adamw_torch_fused"})
    plan["tuneforge"] = ("tuneforge", "auto", None)
    if CASES[case][3] == "full" and args.without_recast:  # the lever's A/B, interleaved with --repeats
        plan["tuneforge-without-recast"] = ("tuneforge", "auto", {"recast": False})
    if case in ("lora-qv-raw", "lora-all-linear", "full", "qlora-4bit") and not args.no_compile:
        plan["tuneforge-compile"] = ("tuneforge", "auto", {"compile": True})
    if case in ("lines", "full-lines"):
        plan["tuneforge-packed"] = ("tuneforge", "auto", {"packing": True})
        if not args.no_compile:  # what a long default run compiles to (recipe auto)
            plan["tuneforge-packed-compile"] = ("tuneforge", "auto", {"packing": True, "compile": True})
        if args.packed_micro_batch:  # fewer blocks per forward pass: less activation memory, more passes
            micro = {"packing": True, "micro_batch_size": args.packed_micro_batch}
            plan[f"tuneforge-packed-micro{args.packed_micro_batch}"] = ("tuneforge", "auto", micro)
    if args.without_lean_norms:  # the lever's A/B, interleaved with --repeats
        for name in [n for n in plan if n in ("tuneforge", "tuneforge-packed")]:
            impl, precision, extra = plan[name]
            plan[f"{name}-without-lean-norms"] = (impl, precision, {**(extra or {}), "lean_norms": False})
    # the A/B of making the attention probabilities again (train/attention.py), interleaved with --repeats
    if args.keep_probabilities:
        for name in [n for n in plan if n in ("tuneforge", "tuneforge-packed")]:
            impl, precision, extra = plan[name]
            plan[f"{name}-keep-probabilities"] = (
                impl,
                precision,
                {**(extra or {}), "keep_probabilities": True},
            )
    if args.without_jemalloc:  # the allocator's A/B (train/host_memory.py), interleaved with --repeats
        for name in [n for n in plan if n in ("tuneforge", "tuneforge-packed")]:
            impl, precision, extra = plan[name]
            plan[f"{name}-glibc"] = (impl, precision, {**(extra or {}), "allocator": "glibc"})
    envs = {}
    if args.passive_waits:  # the OpenMP wait policy's A/B (hardware.bounded_openmp_waits), with --repeats
        for name in [n for n in plan if n.startswith("tuneforge")]:
            plan[f"{name}-passive-waits"] = plan[name]
            envs[f"{name}-passive-waits"] = PASSIVE_WAITS
    runs: dict = {}
    for _ in range(max(1, args.repeats)):
        for name, (impl, precision, extra) in plan.items():
            result = launch(case, impl, precision, args.steps, args.device, extra, env=envs.get(name))
            done = result.get("error") or f"{result['step_s']:.2f} s a step"
            print(f"  ({case} {name}: {done})", file=sys.stderr, flush=True)
            kept = runs.get(name)
            if kept is None or (
                "error" not in result and ("error" in kept or result["step_s"] < kept["step_s"])
            ):
                runs[name] = result
    return runs


def busy_runs(args) -> dict:
    """tuneforge's step idle, then beside a process burning every core: threads chosen from the free cores
    (the default), every core's thread kept (as when the load comes after the run chose), and both with the
    passive OpenMP waits tuneforge set before (hardware.bounded_openmp_waits)."""
    from tuneforge.hardware import choose_threads, usable_cores

    every = {"num_threads": len(usable_cores())}
    runs = {
        "tuneforge-idle": launch("busy", "tuneforge", "auto", args.steps, args.device),
        "tuneforge-idle-passive-waits": launch(
            "busy", "tuneforge", "auto", args.steps, args.device, env=PASSIVE_WAITS
        ),
    }
    burner = subprocess.Popen([sys.executable, "-c", BURNER])
    try:
        time.sleep(3)  # let it take the cores
        _, why = choose_threads()
        print(f"busy: {why}", flush=True)
        runs["tuneforge-busy"] = launch("busy", "tuneforge", "auto", args.steps, args.device)
        runs["tuneforge-busy-every-core"] = launch(
            "busy", "tuneforge", "auto", args.steps, args.device, every
        )
        runs["tuneforge-busy-passive-waits"] = launch(
            "busy", "tuneforge", "auto", args.steps, args.device, env=PASSIVE_WAITS
        )
        runs["tuneforge-busy-every-core-passive-waits"] = launch(
            "busy", "tuneforge", "auto", args.steps, args.device, every, env=PASSIVE_WAITS
        )
    finally:
        burner.kill()
        burner.wait()
    return runs


def cpu_flags() -> str:
    """The CPU features that decide bf16 speed: AMX (fast bf16 matmuls), AVX512-BF16, AVX512."""
    try:
        flags = next(
            (
                line.split(":", 1)[1].split()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    except OSError:
        return "unknown"
    shown = [flag for flag in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2") if flag in flags]
    return " ".join(shown) + ("" if "amx_bf16" in flags else " (no AMX)")


def machine_name(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    return f"{os.cpu_count()} x {model or platform.machine()} (torch {torch.__version__})"


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['case']:16} {row['run']:17} error: {row['error'][:90]}"
    ratios = "  ".join(f"{k[2:]} {v:.2f}x" for k, v in row.items() if k.startswith("x_"))
    gpu = f"  gpu {row['peak_gpu_mb']:6.0f} MB" if "peak_gpu_mb" in row else ""
    return (
        f"{row['case']:11} {row['run']:22} {row['step_s']:6.2f} s/step  {row['tokens_per_s']:6.0f} tok/s  "
        f"useful {row['useful_tokens_per_s']:6.0f} {row['precision']}"
        f"  rss {row['peak_rss_mb']:6.0f} MB{gpu}  mfu {format(row['mfu'], '5.1%') if row['mfu'] is not None else '  n/a'}"
        f" (peak {row.get('peak_gflops', 0):4.0f}"
        + (f"; {row['mfu_with_attention']:.1%} with attention" if row.get("mfu_with_attention") else "")
        + f")  loss {row['final_loss']:.3f}  held-out "
        f"{row['held_out_loss']:.4f}  {ratios}"
    )


if __name__ == "__main__":
    main()
