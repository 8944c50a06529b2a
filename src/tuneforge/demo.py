"""The main job: fine-tune the embedded default model on bundled sample data and show before/after.

    tuneforge demo            # ~2 minutes on 2 CPU cores

Seed 001's workflow: generate before training, LoRA-train on one-example-per-line text, generate after,
save the adapter in PEFT's format.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any, cast

from tuneforge.train.checkpoint import refuse_earlier_run, remove_run_outputs

PROMPTS = ["To make a cheese sandwich ", "The best cheese sandwich "]
SEEDS = [0, 1]
DEMO_SETTINGS = dict(
    method="lora",
    format="lines",
    rank=16,
    alpha=32,
    target_modules=["all-linear"],
    learning_rate=2e-3,
    lr_scheduler="linear",
    warmup_steps=2,
    batch_size=16,
    micro_batch_size=16,
    max_steps=30,
    logging_steps=5,
    validation_split=0.02,
    seed=42,
)


def sample_data_path() -> Path:
    """The bundled sample data: 1,500 cheese-sandwich instructions generated from our own spintax."""
    return Path(str(resources.files("tuneforge") / "resources" / "cheese_sandwiches.txt"))


def _show(llm, title: str) -> dict[tuple[str, int], str]:
    print(f"\n--- {title} ---")
    outputs = {}
    for prompt in PROMPTS:
        for seed in SEEDS:
            text = llm.generate(
                prompt, max_new_tokens=30, temperature=0.7, top_k=50, seed=seed, no_repeat_ngram_size=3
            )
            outputs[(prompt, seed)] = text
            print(f"  {prompt}{' '.join(text.split())}")
    return outputs


def _earlier_demo(folder: Path, data: Path) -> bool:
    """Whether `folder` holds a run of the demo (its config trained on the demo's sample data), not another."""
    import yaml

    try:
        config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    # by the file's place in the package, not its absolute path: a new virtual environment moves it
    return isinstance(config, dict) and Path(str(config.get("data", ""))).parts[-3:] == data.parts[-3:]


def run_demo(output_dir: str = "runs/demo", max_steps: int | None = None) -> Path:
    import tuneforge as tf

    start = time.perf_counter()
    data = sample_data_path()
    print(f"tuneforge demo: LoRA fine-tune of the default model (SmolLM2-135M-Instruct) on {data.name}")
    settings: dict[str, Any] = dict(DEMO_SETTINGS, output_dir=output_dir, sample_prompts=PROMPTS)
    if max_steps is not None:
        settings["max_steps"] = max_steps
    # a bad setting stops the demo now: before an earlier demo's run makes way, and before the model loads
    tf.load_config(None, {"data": str(data), **settings})
    folder = Path(output_dir)
    if _earlier_demo(folder, data):  # an earlier (finished or interrupted) demo's run makes way for this one
        print(f"replacing the earlier demo's run in {folder}")
        remove_run_outputs(folder)
    else:
        refuse_earlier_run(folder)  # another run's folder: refused now, not after loading the model
    print("loading the default model (the first run converts its GGUF file once, ~20 s) ...", flush=True)
    llm = tf.load("default")
    print(f"loaded {llm}")
    before = _show(llm, "before training")
    print("\n--- training ---", flush=True)
    run = llm.train(str(data), **settings)
    after = _show(llm, "after training")
    changed = sum(before[k] != after[k] for k in before)
    print(
        f"\nloss {run.losses[0]:.3f} -> {run.final_loss:.3f} in {run.steps} steps; "
        f"{changed}/{len(before)} generations changed; total time {time.perf_counter() - start:.0f} s"
    )
    print(f"adapter saved to: {run.saved_to}")
    print(f"run folder (config.yaml, metrics.jsonl, report.md): {run.run_dir}")
    print(f'try it: tuneforge generate --adapter {run.saved_to} "To make a cheese sandwich "')
    return cast(Path, run.saved_to)  # set: the demo trains in one (main) process
