"""A whole fine-tuning run from a config: data → method → loop → save → report. The faces all call this.

    from tuneforge.train.run import run_training
    model, result = run_training(model, tokenizer, config, device="cpu", precision="bf16")
"""

from __future__ import annotations

import time
from pathlib import Path

from tuneforge.data.examples import prepare_examples
from tuneforge.errors import ConfigError
from tuneforge.generate import GenerationSettings, generate
from tuneforge.models.methods import prepare_for_training
from tuneforge.train.loop import save_trained, train
from tuneforge.train.report import write_report

SAMPLE_SETTINGS = GenerationSettings(max_new_tokens=40, do_sample=True, temperature=0.7, seed=0)


def default_run_dir(config) -> Path:
    return Path("runs") / f"{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_training(model, tokenizer, config, *, device: str, precision: str, show_progress: bool = True,
                 log=print):
    """Train `model` as `config` says; returns (trained model, TrainResult). Writes the run folder."""
    from transformers import set_seed

    if not config.data:
        raise ConfigError("no training data given; set data: path/to/file.txt (or pass --data)")
    prepared = prepare_examples(config.data, tokenizer, config)  # bad data fails before anything slow
    log(f"data: {prepared.describe()}")

    run_dir = Path(config.output_dir) if config.output_dir else default_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = config.replace(output_dir=str(run_dir))
    config.save(run_dir / "config.yaml")

    samples_before = {p: generate(model, tokenizer, p, SAMPLE_SETTINGS) for p in config.sample_prompts}
    set_seed(config.seed)  # LoRA initialisation and dropout draw from this
    model = prepare_for_training(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"method: {config.method}, precision: {precision}, device: {device}, trainable parameters: "
        f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%), run folder: {run_dir}")

    model, result = train(model, tokenizer, prepared, config, run_dir, precision=precision, device=device,
                          show_progress=show_progress)
    result.saved_to = save_trained(model, tokenizer, run_dir)
    samples_after = {p: generate(model, tokenizer, p, SAMPLE_SETTINGS) for p in config.sample_prompts}
    write_report(run_dir, config, result, prepared.describe(), samples_before, samples_after)
    return model, result
