"""The training verbs: train (a YAML config and/or --key value settings), modules, demo.

    tuneforge train examples/cheese_lora.yaml --epochs 1 --learning_rate 1e-3
    tuneforge train --data notes.txt --format lines --cutoff_len 64 --max_steps 1
    tuneforge train examples/cheese_lora.yaml --nproc 2            # the same run on 2 processes (torchrun)
    tuneforge estimate examples/cheese_lora.yaml                   # memory and time before the run
    tuneforge modules default
    tuneforge demo

Every RunConfig key is a flag of `train` (cli/flags.py), and RunConfig.validate checks them all before the
model loads (an axolotl or LLaMA-Factory recipe is read too: its mapping is printed first); the handler then calls `tuneforge.load(...).train(config=...)` and prints where the run went.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from tuneforge.cli.flags import add_setting_flags, add_verb, run_config_from
from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError


def on_jemalloc(args: argparse.Namespace) -> None:
    """A training command run as a program starts again on jemalloc where it is installed: lower peak memory on
    a CPU, as fast or faster (train/host_memory.py). Called from Python, the process keeps its allocator."""
    if getattr(args, "from_program", False):
        from tuneforge.train.host_memory import with_jemalloc

        with_jemalloc(sys.orig_argv[1:])


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise TuneforgeError(f"nproc must be >= 1 (processes to train on); got {args.nproc}")
    on_jemalloc(args)  # first: the processes `--nproc` starts inherit it
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet inside a launcher: become one
        return launch_processes(args.nproc, args.argv)
    import tuneforge as tf
    from tuneforge.data import preflight
    from tuneforge.recipe import check_before_loading, check_data

    config = run_config_from(args, args.config)
    if os.environ.get("RANK", "0") == "0":  # one process of a multi-process run says it
        print_recipe_notes(config)
    check_before_loading(config)  # the device, and the run folder: something to resume, nothing to replace
    preflight(config)  # every data argument checked now, not after loading the model
    check_data(config)  # and every record, with the tokenizer alone
    print(f"loading model '{config.model}' ...", flush=True)
    llm = tf.load(
        config.model,
        device=config.device,
        precision=config.precision,
        trust_remote_code=config.trust_remote_code,
    )
    result = llm.train(config=config)
    if result.saved_to is None:  # not the main process of a multi-process run: rank 0 reports
        return 0
    if result.interrupted:
        print(
            f"interrupted at step {result.steps}/{result.total_steps}; a checkpoint is saved. Resume with:\n"
            f"  tuneforge train {result.run_dir / 'config.yaml'} --resume_from latest"
        )
        return 0
    steps = f"{result.steps} step{'' if result.steps == 1 else 's'}"
    print(
        f"done: {steps} ({result.stopped_because}); loss {result.losses[0]:.4f} -> "
        f"{result.final_loss:.4f}; saved to {result.saved_to}; report: {result.run_dir / 'report.md'}"
    )
    return 0


def print_recipe_notes(config: RunConfig) -> None:
    """An axolotl/LLaMA-Factory recipe: how each of its keys was read, and every key ignored (load_config)."""
    for line in config.recipe_notes:
        print(line, flush=True)


def launch_processes(nproc: int, argv: list[str]) -> int:
    """`train ... --nproc N`: run the same command under torchrun with N processes on this machine."""
    rest, skip = [], False
    for word in argv:  # drop --nproc N / --nproc=N; everything else goes to every process unchanged
        if skip:
            skip = False
        elif word in ("--nproc", "--nproc-per-node"):
            skip = True
        elif not word.startswith(("--nproc=", "--nproc-per-node=")):
            rest.append(word)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "tuneforge",
        *rest,
    ]
    from tuneforge.train.launch import ASKED_ENV

    print(
        f"starting {nproc} processes: torchrun --standalone --nproc_per_node {nproc} -m tuneforge "
        f"{' '.join(rest)}",
        flush=True,
    )
    # torchrun forwards Ctrl-C/SIGTERM to every process, which checkpoint and stop together
    return subprocess.call(command, env={**os.environ, ASKED_ENV: str(nproc)})


def cmd_estimate(args: argparse.Namespace) -> int:
    from tuneforge.train.estimate import estimate_run

    config = run_config_from(args, args.config)
    print_recipe_notes(config)
    model = prepared = llm = None
    if args.measure:  # a short measured warm-up needs the model, prepared for its method, and the data
        import tuneforge as tf
        from tuneforge.data import preflight

        preflight(config)  # refuses a config without data
        llm = tf.load(
            config.model,
            device=config.device,
            precision=config.precision,
            trust_remote_code=config.trust_remote_code,
        )
    if config.data:  # the run `train` would start: recipe auto chooses its values from the data (printed)
        from tuneforge.hardware import pick_device
        from tuneforge.recipe import run_settings

        tokenizer = llm.tokenizer if llm is not None else None
        config, prepared = run_settings(config, pick_device(config.device), tokenizer)
    else:
        print(
            "no data given: the keys as given, where train would choose batch size, rank, packing and "
            "more from the data (recipe auto); pass --data for the run it would start"
        )
    if llm is not None:
        model = llm.prepared_for(config)
    estimate = estimate_run(
        config,
        model,
        world_size=args.world_size,
        sharding=args.sharding,
        device=config.device,
        measure=args.measure,
        data=prepared,
    )
    print(estimate.describe())
    return 0


def cmd_modules(args: argparse.Namespace) -> int:
    import tuneforge as tf
    from tuneforge.models.adapters import embedding_module_names, linear_module_names

    llm = tf.load(args.model, precision="fp32")
    config = llm.model.config
    print(
        f"model: {args.model} ({config.model_type}), hidden size: {config.hidden_size}, "
        f"layers: {getattr(config, 'num_hidden_layers', '?')}"
    )
    print("linear modules (usable as target_modules): " + ", ".join(linear_module_names(llm.model)))
    print(
        "embedding and output modules (usable as modules_to_save): "
        + ", ".join(embedding_module_names(llm.model))
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tuneforge.demo import run_demo

    on_jemalloc(args)
    run_demo(output_dir=args.output_dir, max_steps=args.max_steps)
    return 0


def add_train_commands(subparsers) -> None:
    """Register train, modules and demo on the main parser's sub-parsers."""
    train = add_verb(
        subparsers,
        "train",
        help="Fine-tune a model from a YAML config and/or --key value settings.",
        description="Fine-tune a model. Every config key can be given as --key value and overrides "
        "the YAML file. Where jemalloc is installed the run starts again on it, for lower peak memory on a "
        "CPU (TUNEFORGE_ALLOCATOR=glibc keeps glibc's allocator).",
    )
    train.add_argument("config", nargs="?", help="YAML run config (optional; keys as listed below).")
    train.add_argument(
        "--nproc",
        "--nproc-per-node",
        dest="nproc",
        type=int,
        default=1,
        metavar="N",
        help="Train on N processes of this machine (starts torchrun; DDP over gloo on CPUs, NCCL "
        "on GPUs). The effective batch stays batch_size. Default: 1.",
    )
    add_setting_flags(train, RunConfig)

    estimate = add_verb(
        subparsers,
        "estimate",
        help="Memory (weights, gradients, optimizer, activations) and time of a run, before it starts.",
        description="Estimate a run's memory and, with --measure, measure its time per step and epoch and "
        "its peak memory. Takes the same keys as train.",
    )
    estimate.add_argument("config", nargs="?", help="YAML run config (optional; keys as listed below).")
    estimate.add_argument(
        "--measure",
        action="store_true",
        help="Load the model, time a few forward/backward passes and measure their peak memory (needs data).",
    )
    estimate.add_argument(
        "--world_size",
        "--world-size",
        dest="world_size",
        type=int,
        default=1,
        help="Processes the run will use (default: 1).",
    )
    from tuneforge.train.estimate import SHARDING

    estimate.add_argument(
        "--sharding",
        default="none",
        choices=list(SHARDING),
        help="Sharding strategy of a multi-process run (default: none).",
    )
    add_setting_flags(estimate, RunConfig)

    modules = add_verb(
        subparsers, "modules", help="List a model's module names (for target_modules) and hidden size."
    )
    modules.add_argument("model", nargs="?", default="default", help="Model (default: default).")

    demo = add_verb(
        subparsers, "demo", help="Fine-tune the default model on bundled sample data; show before/after."
    )
    demo.add_argument(
        "--output-dir",
        "--output_dir",
        dest="output_dir",
        default="runs/demo",
        help="Run folder (default: runs/demo).",
    )
    demo.add_argument(
        "--max-steps",
        "--max_steps",
        dest="max_steps",
        type=int,
        default=None,
        help="Training steps (default: the demo's own).",
    )
