"""Outcomes, not speed: held-out quality and wall time of tuneforge's defaults against the seeds' recipes.

    python benchmarks/outcome.py                  # every shape + the big-file check (~22 min on 2 cores)
    python benchmarks/outcome.py --shapes instructions --recipes seed004 auto --skip-big
    python benchmarks/outcome.py --shapes shakespeare --chars 20000 --prose-recipes seed004 happy auto
    python benchmarks/outcome.py --prose2 path/to/lee_background.cor

One invocation trains, on the same machine and the same training text, side by side:
  seed004   seed 004's script as plain `transformers.Trainer` code (not tuneforge): full fine-tune, 128-token
            blocks of the whole text (TextDataset), batch 4, lr 5e-5, 3 epochs, fp32; timed: trainer.train()
  happy     (instructions only unless --prose-recipes names it) seed 001's HappyTransformer table (GENTrainArgsV2: full, lr 5e-5, batch 1, 3 epochs) through
            tuneforge.happy, given the text file a HappyTransformer user has; timed: happy_gen.train()
  textgen   seed 000's text-generation-webui LoRA recipe, `tuneforge train --recipe textgen`; whole process
  auto      tuneforge's defaults, `tuneforge train --recipe auto`; whole process timed (load, data, train, save)
on three shapes: raw prose (a prefix of tinyshakespeare.txt, last 10% held out), one-sentence-per-line prose of
another style (the Lee news corpus that gensim's PyPI wheel ships, split into sentences; last 10% held out),
and instructions (records of roleplay_alpaca.json; the last `--heldout` records held out). Every model is then
scored by the same code here, in fp32 with plain transformers: held-out perplexity over non-overlapping
256-token windows of the held-out text as written; for instructions the mean loss of the held-out responses
(alpaca prompt, response + end-of-sequence scored) and ROUGE-L of greedy answers (tuneforge.evaluate.tasks).
tuneforge's CLI runs (textgen, auto) train in its default precision (auto: bf16 where this CPU's bf16 matmuls
measured faster, else fp32; printed), as a user gets; seed004 runs as written and happy as HappyTransformer
does, in fp32. Each training run is its own subprocess. Last, the big-file check: the values `recipe: auto` picks for all of
tinyshakespeare.txt, and a whole `tuneforge train --max_steps 3` process on 1,000 Alpaca records, timed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RECIPES = ("seed004", "happy", "textgen", "auto")
SHAPES = ("shakespeare", "sentences", "instructions")
WINDOW = 256  # held-out perplexity: non-overlapping windows of this many tokens
GENSIM_WHEEL_FILE = "gensim/test/test_data/lee_background.cor"


# ------------------------------------------------------------------ data
def alpaca_prompt(record: dict) -> str:
    """tuneforge's alpaca-format template up to the response: what every recipe is scored with."""
    from importlib.resources import files

    templates = json.loads((files("tuneforge") / "resources/formats/alpaca-format.json").read_text())
    key = "instruction,input,output" if record.get("input") else "instruction,output"
    text = templates[key].replace("%instruction%", record["instruction"]).replace("%input%", record["input"])
    return text.split("%output%")[0]


def lee_text(path: str | None, work: Path) -> str:
    """The Lee corpus (news, one document per line) that gensim's wheel ships: a file, a wheel, or pip download."""
    if path and path.endswith(".whl"):
        return zipfile.ZipFile(path).read(GENSIM_WHEEL_FILE).decode()
    if path:
        return Path(path).read_text()
    from importlib.util import find_spec

    spec = find_spec("gensim")
    if spec and spec.origin:
        return (Path(spec.origin).parent / "test/test_data/lee_background.cor").read_text()
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "gensim==4.4.0", "-q", "-d", str(work)],
        check=True,
    )
    return zipfile.ZipFile(next(work.glob("gensim-*.whl"))).read(GENSIM_WHEEL_FILE).decode()


def one_sentence_per_line(text: str) -> str:
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", " ".join(text.split()))
    return "\n".join(s.strip() for s in sentences if s.strip()) + "\n"


def split_text(text: str, chars: int) -> tuple[str, str]:
    """(first 90%, last 10%) of a prefix of `chars` characters, cut at a line end."""
    text = text[:chars]
    cut = text.rfind("\n", 0, int(0.9 * len(text))) + 1
    return text[:cut], text[cut:]


def write_shapes(args, work: Path) -> dict:
    """{shape: {"train": file for tuneforge, "text": plain text file for seed004/happy, "heldout": ...}}."""
    shapes = {}
    if "shakespeare" in args.shapes:
        train, held = split_text((SHARED / "tinyshakespeare.txt").read_text(), args.chars)
        (work / "shakespeare.txt").write_text(train)
        shapes["shakespeare"] = {"train": work / "shakespeare.txt", "text": work / "shakespeare.txt"}
        shapes["shakespeare"]["heldout"] = held
    if "sentences" in args.shapes:
        train, held = split_text(one_sentence_per_line(lee_text(args.prose2, work)), args.prose2_chars)
        (work / "sentences.txt").write_text(train)
        shapes["sentences"] = {
            "train": work / "sentences.txt",
            "text": work / "sentences.txt",
            "heldout": held,
        }
    if "instructions" in args.shapes:
        records = json.loads((SHARED / "roleplay_alpaca.json").read_text())
        train, held = records[: args.records], records[-args.heldout :]  # held out: never trained on
        (work / "instructions.json").write_text(json.dumps(train))
        # what a seed 004 / HappyTransformer user feeds: the same records rendered to one text file
        text = "\n\n".join(alpaca_prompt(r) + r["output"] for r in train) + "\n"
        (work / "instructions.txt").write_text(text)
        shapes["instructions"] = {
            "train": work / "instructions.json",
            "text": work / "instructions.txt",
            "heldout": held,
        }
    return shapes


# ------------------------------------------------------------------ training (one subprocess each)
def worker_seed004(text_file: str, out: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from tuneforge.models.loading import default_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(default_checkpoint())
    model = AutoModelForCausalLM.from_pretrained(default_checkpoint(), dtype=torch.float32)
    ids = tokenizer(Path(text_file).read_text())["input_ids"]  # TextDataset: the whole file, 128-token blocks
    blocks = [ids[i : i + 128] for i in range(0, len(ids) - 127, 128)]
    args = TrainingArguments(
        output_dir=out + "/trainer",
        num_train_epochs=3,
        per_device_train_batch_size=4,
        learning_rate=5e-5,
        logging_steps=100,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False),
        train_dataset=Dataset.from_dict({"input_ids": blocks}),
    )
    start = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - start
    trainer.save_model(out + "/model")
    return {"wall_s": wall, "model": out + "/model", "steps": output.global_step, "blocks": len(blocks)}


def worker_happy(text_file: str, out: str) -> dict:
    from tuneforge.happy import GENTrainArgsV2, HappyGeneration

    happy_gen = HappyGeneration(model_type="GPT-NEO", model_name="default")
    start = time.perf_counter()
    result = happy_gen.train(text_file, args=GENTrainArgsV2())
    wall = time.perf_counter() - start
    happy_gen.save(out + "/model")
    return {"wall_s": wall, "model": out + "/model", "steps": result.steps}


def run_worker(recipe: str, files: dict, out: Path, extra: list[str], threads: int | None = None) -> dict:
    """Train one recipe in a fresh process; tuneforge's CLI recipes are timed as the whole process."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    load_before = os.getloadavg()[0]
    if recipe in ("seed004", "happy"):
        command = [sys.executable, __file__, "--worker", recipe, "--worker-data", str(files["text"])]
        command += ["--worker-out", str(out)]
    else:
        command = [sys.executable, "-m", "tuneforge", "train", "--data", str(files["train"])]
        # tuneforge's own precision default (auto: bf16 where this CPU measured bf16 matmuls faster, else
        # fp32; printed); the seeds' recipes run as written (fp32). Scoring is fp32 for every recipe.
        command += ["--recipe", recipe, "--device", "cpu", "--output_dir", str(out)]
        command += extra
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    with log.open("w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, text=True, env=env)
    process_s = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{recipe} failed ({done.returncode}); last lines:\n" + log.read_text()[-3000:])
    if recipe in ("seed004", "happy"):
        line = [x for x in log.read_text().splitlines() if x.startswith("RESULT ")][-1]
        result = json.loads(line[len("RESULT ") :])
    else:
        saved = out / "adapter" if (out / "adapter").is_dir() else out / "model"
        metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        steps = max((m.get("step", 0) for m in metrics), default=0)
        chosen = [x for x in log.read_text().splitlines() if x.startswith("default chosen:")]
        result = {"wall_s": process_s, "model": str(saved), "steps": steps, "chosen": chosen}
    result.update(process_s=process_s, load_before=load_before)
    return result


# ------------------------------------------------------------------ shared scoring (fp32, plain transformers)
def load_trained(path: str | None):
    import torch
    from transformers import AutoModelForCausalLM

    from tuneforge.models.loading import default_checkpoint

    if path and Path(path, "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(default_checkpoint(), dtype=torch.float32)
        return PeftModel.from_pretrained(base, path).merge_and_unload().eval()
    return AutoModelForCausalLM.from_pretrained(path or default_checkpoint(), dtype=torch.float32).eval()


def heldout_perplexity(model, tokenizer, text: str) -> float:
    """exp(mean loss) over non-overlapping WINDOW-token windows of the text as written (each window alone)."""
    import torch

    ids = tokenizer(text)["input_ids"]
    total, count = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(ids) - 1, WINDOW):
            window = torch.tensor([ids[begin : begin + WINDOW]])
            if window.shape[1] < 2:
                break
            n = window.shape[1] - 1
            total += float(model(input_ids=window, labels=window).loss) * n
            count += n
    return math.exp(total / count)


def response_loss(model, tokenizer, records: list[dict]) -> float:
    """Mean loss per token of the held-out responses (and their end-of-sequence token) after the prompt."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for record in records:
            prompt = tokenizer(alpaca_prompt(record))["input_ids"]
            answer = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
            ids = (prompt + answer + [tokenizer.eos_token_id])[:512]
            labels = [-100] * len(prompt) + ids[len(prompt) :]
            n = sum(label != -100 for label in labels[1:])
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
            total, count = total + float(loss) * n, count + n
    return total / count


def rouge_l(model, tokenizer, records: list[dict], new_tokens: int) -> float:
    """Mean ROUGE-L of greedy answers (cut where a next alpaca record would start) via tuneforge's task scores."""
    import torch

    from tuneforge.evaluate.tasks import score_task

    def answer(prompt: str) -> str:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        return re.split(r"\n\s*(?:### |Below is an instruction)", text)[0]

    pairs = [(alpaca_prompt(r), r["output"]) for r in records]
    return score_task(answer, pairs, metrics=("rouge_l",)).means["rouge_l"]


def score(path: str | None, tokenizer, shape: str, files: dict, new_tokens: int) -> dict:
    model = load_trained(path)
    if shape != "instructions":
        return {"ppl": heldout_perplexity(model, tokenizer, files["heldout"])}
    return {
        "response_loss": response_loss(model, tokenizer, files["heldout"]),
        "rouge_l": rouge_l(model, tokenizer, files["heldout"], new_tokens),
    }


# ------------------------------------------------------------------ report
def machine() -> str:
    import platform

    import torch

    cpu = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in x
        ),
        platform.processor(),
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores, {memory:.0f} GiB; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average now {os.getloadavg()[0]:.2f}"
    )


def shape_table(shape: str, before: dict, runs: dict) -> list[str]:
    instructions = shape == "instructions"
    head = (
        "| recipe | response loss before → after | ROUGE-L before → after |"
        if instructions
        else ("| recipe | held-out ppl before → after |")
    )
    lines = [head + " steps | wall s (timed part) | process s | load avg at start |", "|---" * 6 + "|"]
    if instructions:
        lines[1] += "---|"
    for recipe, run in runs.items():
        if instructions:
            quality = (
                f"{before['response_loss']:.4f} → {run['response_loss']:.4f} | "
                f"{before['rouge_l']:.4f} → {run['rouge_l']:.4f} |"
            )
        else:
            quality = f"{before['ppl']:.2f} → {run['ppl']:.2f} |"
        lines.append(
            f"| {recipe} | {quality} {run['steps']} | {run['wall_s']:.0f} | {run['process_s']:.0f} | "
            f"{run['load_before']:.2f} |"
        )
    return lines


def verdicts(shape: str, runs: dict) -> list[str]:
    auto, seed = runs.get("auto"), runs.get("seed004")
    if not auto or not seed:
        return []
    time_ok = auto["wall_s"] <= seed["wall_s"]
    time_note = (
        f"auto {auto['wall_s']:.0f} s (whole process) vs seed004 {seed['wall_s']:.0f} s (trainer.train())"
    )
    if shape != "instructions":
        ratio = auto["ppl"] / seed["ppl"]
        met = ratio <= 0.9 and time_ok
        return [
            f"{shape}: auto ppl / seed004 ppl = {ratio:.3f} (bar ≤ 0.900); {time_note} → "
            f"{'MET' if met else 'MISSED'}"
        ]
    lines = []
    for other in ("seed004", "happy"):
        if other not in runs:
            continue
        run = runs[other]
        better = auto["response_loss"] < run["response_loss"] and auto["rouge_l"] > run["rouge_l"]
        in_time = auto["wall_s"] <= run["wall_s"]
        lines.append(
            f"instructions vs {other}: response loss {auto['response_loss']:.4f} vs {run['response_loss']:.4f}, "
            f"ROUGE-L {auto['rouge_l']:.4f} vs {run['rouge_l']:.4f}, wall {auto['wall_s']:.0f} vs "
            f"{run['wall_s']:.0f} s → {'MET' if better and in_time else 'MISSED'}"
        )
    return lines


def big_file_check(work: Path) -> list[str]:
    """The values recipe auto picks for all of tinyshakespeare.txt, and a timed 3-step trial on 1,000 records."""
    from transformers import AutoTokenizer

    from tuneforge.config import RunConfig
    from tuneforge.data.examples import prepare_examples
    from tuneforge.defaults import DataStats, Machine, choose_defaults
    from tuneforge.models.loading import default_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(default_checkpoint())
    data = str(SHARED / "tinyshakespeare.txt")
    prepared = prepare_examples(data, tokenizer, RunConfig(data=data))
    stats = DataStats.of(prepared)
    _, choices = choose_defaults(RunConfig(data=data, recipe="auto"), stats, Machine.detect("cpu"))
    lines = [f"all of tinyshakespeare.txt: {stats}; recipe auto picks:"]
    lines += [f"  {c.describe()}" for c in choices]
    records = json.loads((SHARED / "roleplay_alpaca.json").read_text())[:1000]
    (work / "alpaca1000.json").write_text(json.dumps(records))
    out = work / "trial"
    command = [sys.executable, "-m", "tuneforge", "train", "--data", str(work / "alpaca1000.json")]
    # as a user runs it: every default, precision included (auto: bf16 where this CPU runs it faster)
    command += ["--recipe", "auto", "--max_steps", "3", "--output_dir", str(out)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    chosen = [x for x in done.stdout.splitlines() if x.startswith("default chosen:")]
    precision = re.search(r"precision: (\w+)", done.stdout)
    lines.append(
        f"3-step trial, 1,000 Alpaca records, whole process: {wall:.1f} s (precision "
        f"{precision.group(1) if precision else '?'}, rc {done.returncode}, load avg at "
        f"start {load:.2f}) → {'MET' if wall < 60 and not done.returncode else 'MISSED'} (bar < 60 s)"
    )
    lines += [f"  {x}" for x in chosen]
    if done.returncode:
        lines.append(done.stdout[-1500:] + done.stderr[-1500:])
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument(
        "--prose-recipes",
        nargs="+",
        choices=RECIPES,
        default=["seed004", "textgen", "auto"],
        help="recipes on the prose shapes (the prose bars compare auto with seed004; happy costs ~3 min more)",
    )
    parser.add_argument("--chars", type=int, default=9_000, help="prefix of tinyshakespeare.txt to use")
    parser.add_argument(
        "--prose2", help="lee_background.cor or gensim's wheel (default: found or downloaded)"
    )
    parser.add_argument(
        "--prose2-chars", type=int, default=30_000, help="prefix of the sentence text (678 held-out tokens)"
    )
    parser.add_argument("--records", type=int, default=40, help="instruction records trained on")
    parser.add_argument(
        "--heldout", type=int, default=24, help="instruction records held out (the file's last)"
    )
    parser.add_argument("--new-tokens", type=int, default=48, help="greedy tokens per answer for ROUGE-L")
    parser.add_argument("--skip-big", action="store_true", help="skip the big-file check")
    parser.add_argument(
        "--auto-flags", default="", help="extra `tuneforge train` flags for auto (to measure why)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads of every run (OMP_NUM_THREADS; default: each run's own choice)",
    )
    parser.add_argument("--worker", choices=("seed004", "happy"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-data", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = worker_seed004 if args.worker == "seed004" else worker_happy
        print("RESULT " + json.dumps(work(args.worker_data, args.worker_out)), flush=True)
        return

    from transformers import AutoTokenizer

    from tuneforge.models.loading import default_checkpoint

    started = time.perf_counter()
    print(f"machine: {machine()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"slices: tinyshakespeare first {args.chars:,} chars, Lee sentences first {args.prose2_chars:,} chars "
        f"(90% trained / last 10% held out); instructions: first {args.records} records trained, last "
        f"{args.heldout} held out; ROUGE-L over {args.new_tokens} greedy tokens; scored in fp32",
        flush=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(default_checkpoint())
    report, summary = [], {}
    with tempfile.TemporaryDirectory(prefix="outcome-") as folder:
        work = Path(folder)
        for shape, files in write_shapes(args, work).items():
            held_tokens = (
                len(tokenizer(files["heldout"])["input_ids"])
                if shape != "instructions"
                else len(files["heldout"])
            )
            print(
                f"\n== {shape}: train {files['train'].stat().st_size:,} bytes, held out {held_tokens:,} "
                f"{'records' if shape == 'instructions' else 'tokens'}",
                flush=True,
            )
            before = score(None, tokenizer, shape, files, args.new_tokens)
            runs = {}
            recipes = (
                args.recipes
                if shape == "instructions"
                else [r for r in args.prose_recipes if r in args.recipes]
            )
            for recipe in recipes:
                extra = args.auto_flags.split() if recipe == "auto" else []
                run = run_worker(recipe, files, work / shape / recipe, extra, args.threads)
                run.update(score(run["model"], tokenizer, shape, files, args.new_tokens))
                runs[recipe] = run
                shown = {
                    k: round(v, 4) if isinstance(v, float) else v for k, v in run.items() if k != "chosen"
                }
                print(f"{recipe}: {json.dumps(shown)}", flush=True)
                for line in run.get("chosen", []):
                    print(f"    {line}")
            table = shape_table(shape, before, runs) + [""] + verdicts(shape, runs)
            print("\n" + "\n".join(table), flush=True)
            report += [f"### {shape}", *table, ""]
            summary[shape] = {
                "before": before,
                **{r: {k: v for k, v in x.items() if k != "chosen"} for r, x in runs.items()},
            }
        if not args.skip_big:
            big = big_file_check(work)
            print("\n" + "\n".join(big), flush=True)
            report += ["### big file", *big]
    print(f"\n==== summary (whole benchmark {time.perf_counter() - started:.0f} s)\n" + "\n".join(report))
    print("JSON " + json.dumps(summary))


if __name__ == "__main__":
    main()
