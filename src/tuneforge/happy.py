"""HappyTransformer-compatible face (its 3.x API): its scripts run with the import and model name changed.

    from tuneforge.happy import HappyGeneration, GENSettings, GENTrainArgs, GENEvalArgs
    happy_gen = HappyGeneration(model_type="GPT-NEO", model_name="default")
    happy_gen.train("cheese_instructions.txt", args=GENTrainArgs(num_train_epochs=1, eval_ratio=0.1))
    print(happy_gen.eval("heldout.txt", args=GENEvalArgs()).loss)
    print(happy_gen.generate_text("To make a cheese sandwich ", args=GENSettings(max_length=30)).text)
    happy_gen.save("model/")      # later: HappyGeneration(model_name="model/")

Everything here translates names and calls the core (`tuneforge.load`, `LLM.train`, `LLM.perplexity`,
`LLM.save`); no training logic lives in this file. docs/evaluate.md has the table of every GENTrainArgs field
and the tuneforge key it becomes. As in HappyTransformer 3.x: nothing is written unless asked (`save()`,
`save_path`, `save_steps`, `report_to`, an `output_dir` of your own); else the run folder is temporary.
HappyTransformer 2.x's names (adam_*, max_grad_norm, save_/load_preprocessed_data*, preprocessing_processes)
stay accepted; `GENTrainArgsV2`/`GENEvalArgsV2` keep 2.x's defaults (3 epochs, no held-out split).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.errors import ConfigError, DataError
from tuneforge.train.batches import planned_steps

# HappyTransformer 3.x's own messages (happy_transformer.py), so `except ValueError` code keeps working.
DICT_TRAIN_ARGS = (
    "Dictionary training arguments are no longer supported as of Happy Transformer version 3.0.0"
)
DICT_EVAL_ARGS = (
    "Dictionary evaluating arguments are no longer supported as of Happy Transformer version 3.0.0."
)
DICT_SETTINGS = "Dictionary generation settings are not supported"  # tuneforge's words
V3_PROJECT_NAME, V3_RUN_NAME, V3_OUTPUT_DIR = "happy-transformer", "test", "happy_transformer/"


@dataclass
class GENSettings:
    """HappyTransformer's generation settings, with its defaults (greedy unless do_sample=True)."""

    min_length: int = 10  # fewest new tokens
    max_length: int = 50  # most new tokens
    do_sample: bool = False
    early_stopping: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int = 50
    no_repeat_ngram_size: int = 0
    top_p: float = 1.0
    bad_words: list[str] | None = None
    seed: int | None = None  # tuneforge: None draws differently each call, like HappyTransformer


@dataclass
class GENTrainArgs:
    """HappyTransformer 3.x's GENTrainArgs with its defaults, 2.x's names, and tuneforge's LoRA fields."""

    output_dir: str = V3_OUTPUT_DIR  # run folder, kept when chosen or when save_steps/report_to write to it
    learning_rate: float = 5e-5
    num_train_epochs: float = 1.0
    batch_size: int = 1
    weight_decay: float = 0.0
    fp16: bool = False
    eval_ratio: float = 0.1  # held out of input_filepath when no eval_filepath is given (0: train on all)
    save_steps: float = 0.0  # a ratio of all steps when < 1, else a step count; 0: no checkpoints
    eval_steps: float = 0.1  # likewise; 0: evaluate at the end only
    logging_steps: float = 0.1  # likewise; 0: log at the end only
    save_path: str | bool = False  # write the preprocessed data (train + eval split) to this folder
    load_path: str | bool = False  # train on preprocessed data saved by save_path (input_filepath is ignored)
    report_to: tuple | list | str = ()
    deepspeed: str | bool = False  # refused: tuneforge runs DeepSpeed through `accelerate launch`
    project_name: str = V3_PROJECT_NAME
    run_name: str = V3_RUN_NAME
    max_length: int | None = None  # tokens per example (tuneforge's cutoff_len; None: its default, 256)
    # --- HappyTransformer 2.x names, still accepted ---
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    save_preprocessed_data: bool = False
    save_preprocessed_data_path: str = ""
    load_preprocessed_data: bool = False
    load_preprocessed_data_path: str = ""
    preprocessing_processes: int = 1
    # --- tuneforge additions ---
    method: str = "full"  # "full" as in HappyTransformer; "lora" trains a small adapter on a frozen model
    rank: int = 32
    alpha: float = 64
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    max_steps: int | None = None  # stop after this many steps (overrides num_train_epochs)
    seed: int = 42


@dataclass
class GENEvalArgs:
    """HappyTransformer 3.x's GENEvalArgs, plus 2.x's names."""

    batch_size: int = 1
    deepspeed: str | bool = False
    save_path: str | bool = False  # write the preprocessed evaluation data to this folder
    load_path: str | bool = False  # evaluate on preprocessed data (its eval split when it has one)
    max_length: int | None = None
    # --- HappyTransformer 2.x names, still accepted ---
    save_preprocessed_data: bool = False
    save_preprocessed_data_path: str = ""
    load_preprocessed_data: bool = False
    load_preprocessed_data_path: str = ""
    preprocessing_processes: int = 1


@dataclass
class GENTrainArgsV2(GENTrainArgs):
    """HappyTransformer 2.x's defaults (seed 001's table): 3 epochs, every line trained, nothing held out."""

    num_train_epochs: float = 3
    eval_ratio: float = 0.0


@dataclass
class GENEvalArgsV2(GENEvalArgs):
    """HappyTransformer 2.x's evaluation arguments (the same defaults as 3.x's)."""


@dataclass
class GenerationResult:
    text: str


@dataclass
class EvalResult:
    loss: float


@contextmanager
def gen_settings_names() -> Iterator[None]:
    """A refused generation setting named as GENSettings names it (max_length, not max_new_tokens)."""
    import re

    from tuneforge.errors import TuneforgeError

    try:
        yield
    except TuneforgeError as error:
        renamed = re.sub(r"\b(max|min)_new_tokens\b", r"\1_length", str(error))
        raise type(error)(renamed) from None


@contextmanager
def _hub_token(use_auth_token: str | bool | None) -> Iterator[None]:
    """HappyTransformer's `use_auth_token`: a token string is used for this load (as HF_TOKEN, which the hub
    client reads on each request); True or None use the saved login (`hf auth login`) or HF_TOKEN as they are."""
    import os

    if not isinstance(use_auth_token, str) or not use_auth_token:
        yield
        return
    before = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = use_auth_token
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = before


class HappyGeneration:
    """A text-generation model: `model_name="default"` is the embedded SmolLM2-135M-Instruct, or a folder.

    `load_path` (3.x: deprecated for `model_name`) loads a folder saved by `save`: a whole model, or a LoRA
    adapter applied to `model_name`. `model_type` ("GPT-NEO", "GPT2", ...) is accepted for compatibility;
    the model's own config decides.
    """

    def __init__(
        self,
        model_type: str = "GPT2",
        model_name: str = "default",
        load_path: str = "",
        use_auth_token: str | bool | None = None,
        trust_remote_code: bool = False,
    ):
        import tuneforge as tf

        self.model_type = model_type
        self.model_name = model_name
        self.logger = logging.getLogger(
            "happytransformer"
        )  # HappyTransformer's attribute: code sets its level
        with _hub_token(use_auth_token):
            if load_path and (Path(load_path) / "adapter_config.json").is_file():
                self.llm = tf.load(
                    model_name, adapter=load_path, precision="fp32", trust_remote_code=trust_remote_code
                )
            else:
                self.llm = tf.load(
                    load_path or model_name, precision="fp32", trust_remote_code=trust_remote_code
                )

    @property
    def model(self):
        return self.llm.model

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def config(self):
        """The model's transformers config, as HappyTransformer's `.config`."""
        return self.llm.model.config

    @property
    def device(self):
        """The torch device the model is on, as HappyTransformer's `.device`."""
        return self.llm.model.device

    def generate_text(self, text: str, args: GENSettings | None = None) -> GenerationResult:
        """Continue `text` with the settings in `args` (GENSettings; greedy by default): `.text` is the
        continuation only, as in HappyTransformer."""
        if not isinstance(text, str):
            raise ConfigError(f"The text input must be a string, not {type(text).__name__}")
        if not text.strip():
            raise ConfigError("The text input must have at least one character that is not a space")
        args = args_of(args, GENSettings, "generate_text", DICT_SETTINGS)
        with gen_settings_names():
            output = self._generate(text, args)
        return GenerationResult(text=output)

    def _generate(self, text: str, args: GENSettings) -> str:
        return self.llm.generate(
            text,
            max_new_tokens=args.max_length,
            # HappyTransformer passes both to generate, where max wins: GENSettings(max_length=5) keeps the
            # default min_length 10 and stops at 5 (tuneforge's own settings refuse min > max)
            min_new_tokens=min(args.min_length, args.max_length),
            do_sample=args.do_sample,
            early_stopping=args.early_stopping,
            num_beams=args.num_beams,
            temperature=args.temperature,
            top_k=args.top_k,
            no_repeat_ngram_size=args.no_repeat_ngram_size,
            top_p=args.top_p,
            bad_words=list(args.bad_words or []),
            seed=args.seed,
        )

    def train(self, input_filepath: str, args: GENTrainArgs | None = None, eval_filepath: str = ""):
        """Fine-tune on a text or CSV file; returns tuneforge's TrainResult (HappyTransformer returns None).

        Unless output_dir is chosen or save_steps/report_to write files, the run folder is temporary:
        `result.run_dir` is gone afterwards and the trained model lives on in memory (`save()` keeps it).
        """
        from tuneforge.config import load_config
        from tuneforge.data import prepare_examples

        args = args_of(args, GENTrainArgs, "train", DICT_TRAIN_ARGS)
        refuse_deepspeed(args.deepspeed)
        warn_unmapped_tracker_names(args)
        data = self._data_path(input_filepath, args)
        modules = [args.target_modules] if isinstance(args.target_modules, str) else args.target_modules
        if eval_filepath and data != input_filepath:
            warnings.warn(
                f"eval data comes from {data} and not {eval_filepath} (as in HappyTransformer)", stacklevel=2
            )
        settings = dict(
            epochs=args.num_train_epochs,
            batch_size=args.batch_size,
            micro_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            adam_beta1=args.adam_beta1,
            adam_beta2=args.adam_beta2,
            adam_epsilon=args.adam_epsilon,
            max_grad_norm=args.max_grad_norm,
            num_proc=args.preprocessing_processes,
            precision=self._precision(args.fp16),
            method=args.method,
            rank=args.rank,
            alpha=args.alpha,
            lora_dropout=args.lora_dropout,
            target_modules=modules,
            max_steps=args.max_steps,
            seed=args.seed,
            keep_best=False,  # HF Trainer keeps no best copy unless load_best_model_at_end
            recipe="textgen",  # GENTrainArgs gives its values; the rest as before, not chosen from the data
            report_to=trackers(args.report_to),
            data=data,
            model=self.llm.source.spec,
        )
        if args.max_length is not None:
            settings["cutoff_len"] = args.max_length
        if eval_filepath:
            settings["validation_data"] = eval_filepath
        else:
            settings["validation_split"] = args.eval_ratio
        config = load_config(None, settings)
        prepared = prepare_examples(data, self.tokenizer, config)  # cached: the run reads it back, not again
        save_target = data_save_path(args)
        if save_target:
            save_prepared_data(prepared, save_target)
        total = planned_steps(config, len(prepared.train))  # as the loop counts them (one process)
        config = config.replace(
            save_steps=steps_from_ratio(args.save_steps, total),
            eval_steps=steps_from_ratio(args.eval_steps, total),
            logging_steps=steps_from_ratio(args.logging_steps, total) or total,
        )
        if config.save_steps or config.report_to or args.output_dir != V3_OUTPUT_DIR:  # files asked for
            with replacing_checkpoints(args.output_dir):
                return self.llm.train(config=config.replace(output_dir=args.output_dir))
        folder = tempfile.TemporaryDirectory(prefix="happy-run-", dir=temporary_runs_home())
        with folder:
            result = self.llm.train(config=config.replace(output_dir=folder.name))
        result.saved_to = None  # the model stays in memory; save() keeps it
        return result

    def eval(self, input_filepath: str, args: GENEvalArgs | None = None) -> EvalResult:
        """Mean per-token loss on a text file, tokenized as training does (one example per line, or chunks).

        With `load_path`, preprocessed data is scored: its eval split when `save_path` of train() wrote it.
        """
        from tuneforge.config import load_config
        from tuneforge.data import prepare_examples

        args = args_of(args, GENEvalArgs, "eval", DICT_EVAL_ARGS)
        refuse_deepspeed(args.deepspeed)
        data = self._data_path(input_filepath, args)
        settings = {"num_proc": args.preprocessing_processes, "data": data}
        if args.max_length is not None:
            settings["cutoff_len"] = args.max_length
        config = load_config(None, settings)
        prepared = prepare_examples(data, self.tokenizer, config)
        save_target = data_save_path(args)
        if save_target:
            save_prepared_data(prepared, save_target)
        result = self.llm.perplexity(prepared, max_length=config.cutoff_len, stride=config.cutoff_len)
        return EvalResult(loss=result.loss)

    def test(self, *args, **kwargs):
        """Not offered, as in HappyTransformer 3.x (its test() raised NotImplementedError too)."""
        raise NotImplementedError(
            "HappyGeneration has no test(); use generate_text() for outputs, eval() for loss"
        )

    def push(self, repo_name: str, private: bool = True):
        """Not offered: tuneforge does not upload anywhere; `save()` writes a folder the hub's tools take."""
        raise NotImplementedError(
            f"tuneforge does not upload models; save('folder') and then run `hf upload {repo_name} folder`"
        )

    def save(self, path: str) -> None:
        """Save the model and tokenizer (or, after LoRA training, the adapter) to a folder."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.llm.save(path)
        self.tokenizer.save_pretrained(path)

    # ------------------------------------------------------------------ preprocessed data
    def _data_path(self, input_filepath: str, args) -> str:
        """The data to use: preprocessed data from load_path (2.x: load_preprocessed_data), else the file."""
        load_from = args.load_path or (args.load_preprocessed_data and args.load_preprocessed_data_path)
        if args.load_preprocessed_data and not args.load_preprocessed_data_path:
            raise DataError(
                "load_preprocessed_data is on but load_preprocessed_data_path is empty; set it "
                "to the folder save_preprocessed_data wrote"
            )
        if load_from:
            return load_preprocessed(str(load_from))
        return input_filepath

    def _precision(self, fp16: bool) -> str:
        if not fp16:
            return "fp32"
        if self.llm.device != "cuda":
            warnings.warn("fp16 needs a CUDA GPU (as in HappyTransformer); training in fp32", stacklevel=3)
            return "fp32"
        return "fp16"


def args_of(args, kind: type, verb: str, dict_message: str):
    """`args` checked: None gives `kind`'s defaults; a dict or another class is refused, saying what to pass."""
    if args is None:
        return kind()
    if isinstance(args, dict):
        raise ConfigError(f"{dict_message.rstrip('. ;')}; pass {kind.__name__}(...) instead")
    if not isinstance(args, kind):
        hint = ""
        if kind is GENTrainArgs and isinstance(args, str | Path):
            hint = (
                f"; an evaluation file goes to eval_filepath=, e.g. train(file, eval_filepath={str(args)!r})"
            )
        raise ConfigError(f"{verb}() takes args={kind.__name__}(...), not {type(args).__name__}{hint}")
    return args


def refuse_deepspeed(deepspeed: str | bool) -> None:
    if deepspeed:
        raise ConfigError(
            f"deepspeed={deepspeed!r} is not a per-call setting in tuneforge: remove it and "
            "run the script with `accelerate launch --use_deepspeed --zero_stage 2 script.py` "
            "(or choose DeepSpeed in `accelerate config`); the loop then runs under DeepSpeed"
        )


def warn_unmapped_tracker_names(args: GENTrainArgs) -> None:
    if args.project_name != V3_PROJECT_NAME or args.run_name != V3_RUN_NAME:
        warnings.warn(
            "project_name and run_name have no tuneforge key: trackers name the run after its "
            "folder, so set output_dir to name it",
            stacklevel=3,
        )


def trackers(report_to: tuple | list | str) -> list[str]:
    """report_to as tuneforge's list of trackers ("none", HappyTransformer's Trainer value, means none)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    return [name for name in names if name != "none"]


def steps_from_ratio(value: float, total: int) -> int | None:
    """HappyTransformer's (the HF Trainer's) step settings: 0 < value < 1 is a ratio of all steps."""
    if value < 0:
        raise ConfigError(f"save_steps, eval_steps and logging_steps must be 0 or more, got {value}")
    if value == 0:
        return None
    return max(1, math.ceil(total * value)) if value < 1 else int(value)


def temporary_runs_home() -> Path:
    """Temporary run folders sit in tuneforge's cache (same disk as the models), not in a RAM-backed /tmp."""
    from tuneforge.paths import tuneforge_home

    home = tuneforge_home() / "tmp"
    home.mkdir(parents=True, exist_ok=True)
    return home


def data_save_path(args) -> str:
    """Where to keep the preprocessed data: 3.x's save_path, or 2.x's save_preprocessed_data(_path)."""
    if args.save_path:
        return str(args.save_path)
    if args.save_preprocessed_data:
        return args.save_preprocessed_data_path or "preprocessed-data.json"
    return ""


@contextmanager
def replacing_checkpoints(run_dir: str) -> Iterator[None]:
    """HappyTransformer's Trainer writes over an earlier run in the same output_dir, and its API cannot resume
    one: an earlier tuneforge run there (a folder with its config.yaml) is set aside (said so) while this run
    trains, so the two never mix, then removed; if this run fails before a checkpoint of its own, the earlier
    run is put back whole. A folder that is no run of tuneforge's is left alone (a fresh run refuses to replace
    files there)."""
    from tuneforge.train.checkpoint import RUN_OUTPUTS, finished_results, list_checkpoints, remove_run_outputs

    folder = Path(run_dir)
    earlier = list_checkpoints(folder)
    results = finished_results(folder)
    if not (folder / "config.yaml").is_file() or not (earlier or results):
        yield
        return
    names = [name for name in RUN_OUTPUTS if (folder / name).exists()]
    aside = folder / ".replaced"
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for name in names:
        (folder / name).rename(aside / name)
    said = ([f"{len(earlier)} checkpoints"] if earlier else []) + results
    warnings.warn(f"output_dir {run_dir}: replacing the earlier run's {', '.join(said)}", stacklevel=3)
    try:
        yield
    except BaseException:
        if not list_checkpoints(folder):  # this run left nothing to resume: the earlier run comes back whole
            remove_run_outputs(folder)
            for name in names:
                (aside / name).rename(folder / name)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def save_prepared_data(prepared, path: str) -> Path:
    """Keep prepared examples (train and eval split) at `path`, in tuneforge.data's format.

    HappyTransformer overwrites an earlier save at the same path; we replace it only when it is itself
    preprocessed data, never another file or folder.
    """
    from tuneforge.data import save_preprocessed_data

    target = Path(path)
    if target.exists():
        if not (target / "meta.json").is_file():
            raise DataError(f"'{path}' exists and is not preprocessed data; choose another save path")
        shutil.rmtree(target)
    return save_preprocessed_data(prepared, target)


def load_preprocessed(path: str) -> str:
    """Saved preprocessed data is trained on as it is: the core reads a save_path folder directly."""
    from tuneforge.data import load_preprocessed_data

    if not Path(path).exists():
        raise DataError(
            f"preprocessed data '{path}' does not exist; give load_path the folder save_path wrote"
        )
    load_preprocessed_data(path)  # refuses, by name, a folder that is not tuneforge's preprocessed data
    return path
