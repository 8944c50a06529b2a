"""HappyTransformer-compatible face: seed 001's script runs with only its import line and model name changed.

    from tuneforge.happy import HappyGeneration, GENSettings, GENTrainArgs
    happy_gen = HappyGeneration(model_type="GPT-NEO", model_name="default")
    print(happy_gen.generate_text("To make a cheese sandwich ", args=GENSettings(max_length=30)).text)
    happy_gen.train(input_filepath="cheese_instructions.txt", args=GENTrainArgs(num_train_epochs=1))
    happy_gen.save("model/")

Everything here translates names and calls the core (`tuneforge.load`, `LLM.generate`, `LLM.train`,
`tuneforge.evaluate`); no training logic lives in this file. Mapping of HappyTransformer's names:
num_train_epochs -> epochs, batch_size -> batch_size and micro_batch_size (no accumulation, as in
HappyTransformer), fp16 -> precision fp16 (on a GPU only; elsewhere fp32), preprocessing_processes -> num_proc,
GENSettings.max_length/min_length -> max_new_tokens/min_new_tokens (HappyTransformer counts new tokens too).
As in HappyTransformer, training fine-tunes every weight by default; `method="lora"` trains an adapter instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.errors import DataError


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
    """HappyTransformer's training arguments (seed 001's table, same defaults) plus tuneforge's LoRA fields."""

    learning_rate: float = 5e-5
    num_train_epochs: float = 3
    batch_size: int = 1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    save_preprocessed_data: bool = False
    save_preprocessed_data_path: str = ""
    load_preprocessed_data: bool = False
    load_preprocessed_data_path: str = ""
    preprocessing_processes: int = 1
    fp16: bool = False
    # --- tuneforge additions ---
    method: str = "full"  # "full" as in HappyTransformer; "lora" trains a small adapter on a frozen model
    rank: int = 32
    alpha: float = 64
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    max_steps: int | None = None  # stop after this many steps (overrides num_train_epochs)
    output_dir: str | None = None  # run folder (default: runs/<method>-<date>-<time>)
    seed: int = 42


@dataclass
class GENEvalArgs:
    """HappyTransformer's evaluation arguments."""

    batch_size: int = 1
    save_preprocessed_data: bool = False
    save_preprocessed_data_path: str = ""
    load_preprocessed_data: bool = False
    load_preprocessed_data_path: str = ""
    preprocessing_processes: int = 1


@dataclass
class GenerationResult:
    text: str


@dataclass
class EvalResult:
    loss: float


class HappyGeneration:
    """A text-generation model: `model_name="default"` is the embedded SmolLM2-135M-Instruct.

    `load_path` loads a folder saved by `save`: a whole model, or a LoRA adapter applied to `model_name`.
    `model_type` ("GPT-NEO", "GPT2", ...) is accepted for compatibility; the model's own config decides.
    """

    def __init__(self, model_type: str = "GPT2", model_name: str = "default", load_path: str = "",
                 use_auth_token: str | None = None, trust_remote_code: bool = False):
        import tuneforge as tf

        self.model_type = model_type
        self.model_name = model_name
        if load_path and (Path(load_path) / "adapter_config.json").is_file():
            self.llm = tf.load(model_name, adapter=load_path, trust_remote_code=trust_remote_code)
        else:
            self.llm = tf.load(load_path or model_name, trust_remote_code=trust_remote_code)

    @property
    def model(self):
        return self.llm.model

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    def generate_text(self, text: str, args: GENSettings | None = None) -> GenerationResult:
        args = args or GENSettings()
        output = self.llm.generate(text, max_new_tokens=args.max_length, min_new_tokens=args.min_length,
                                   do_sample=args.do_sample, early_stopping=args.early_stopping,
                                   num_beams=args.num_beams, temperature=args.temperature, top_k=args.top_k,
                                   no_repeat_ngram_size=args.no_repeat_ngram_size, top_p=args.top_p,
                                   bad_words=list(args.bad_words or []), seed=args.seed)
        return GenerationResult(text=output)

    def train(self, input_filepath: str, args: GENTrainArgs | None = None, eval_filepath: str = ""):
        """Fine-tune on a text file; returns tuneforge's TrainResult (HappyTransformer returns None)."""
        args = args or GENTrainArgs()
        data = self._data_path(input_filepath, args)
        settings = dict(epochs=args.num_train_epochs, batch_size=args.batch_size,
                        micro_batch_size=args.batch_size, learning_rate=args.learning_rate,
                        weight_decay=args.weight_decay, adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2,
                        adam_epsilon=args.adam_epsilon, max_grad_norm=args.max_grad_norm,
                        num_proc=args.preprocessing_processes, precision=self._precision(args.fp16),
                        method=args.method, rank=args.rank, alpha=args.alpha, lora_dropout=args.lora_dropout,
                        target_modules=list(args.target_modules), max_steps=args.max_steps,
                        output_dir=args.output_dir, seed=args.seed)
        if eval_filepath:
            settings["validation_data"] = eval_filepath
        return self.llm.train(data, **settings)

    def eval(self, input_filepath: str, args: GENEvalArgs | None = None) -> EvalResult:
        """Mean per-token loss on a text file (one example per line, or chunks of raw text)."""
        from tuneforge.config import RunConfig
        from tuneforge.data.examples import prepare_examples
        from tuneforge.evaluate.perplexity import perplexity

        args = args or GENEvalArgs()
        data = self._data_path(input_filepath, args)
        prepared = prepare_examples(data, self.tokenizer, RunConfig(num_proc=args.preprocessing_processes))
        result = perplexity(self.model, self.tokenizer, prepared.train, max_length=RunConfig().cutoff_len,
                            stride=RunConfig().cutoff_len)
        return EvalResult(loss=result.loss)

    def save(self, path: str) -> None:
        """Save the model and tokenizer (or, after LoRA training, the adapter) to a folder."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.llm.save(path)
        self.tokenizer.save_pretrained(path)

    # ------------------------------------------------------------------ preprocessed data
    def _data_path(self, input_filepath: str, args) -> str:
        """The data to train on: `input_filepath`, or the saved preprocessed data."""
        if args.load_preprocessed_data:
            return load_preprocessed(args.load_preprocessed_data_path)
        if args.save_preprocessed_data:
            save_preprocessed(input_filepath, self.tokenizer, args.save_preprocessed_data_path
                              or "preprocessed-data.json")
        return input_filepath

    def _precision(self, fp16: bool) -> str:
        if not fp16:
            return "fp32"
        if self.llm.device != "cuda":
            warnings.warn("fp16 needs a CUDA GPU (as in HappyTransformer); training in fp32", stacklevel=3)
            return "fp32"
        return "fp16"


def save_preprocessed(input_filepath: str, tokenizer, path: str) -> Path:
    """Tokenize `input_filepath` as training does and keep the examples at `path` (tuneforge.data's format).

    HappyTransformer overwrites an earlier file at the same path; we replace it only when it is itself
    preprocessed data, never another file or folder.
    """
    import shutil

    from tuneforge.config import RunConfig
    from tuneforge.data import prepare_examples, save_preprocessed_data

    target = Path(path)
    if target.exists():
        if not (target / "meta.json").is_file():
            raise DataError(f"'{path}' exists and is not preprocessed data; choose another save path")
        shutil.rmtree(target)
    return save_preprocessed_data(prepare_examples(input_filepath, tokenizer, RunConfig()), target)


def load_preprocessed(path: str) -> str:
    """Saved preprocessed data is trained on as it is: the core reads a save_preprocessed_data folder."""
    if not Path(path).exists():
        raise DataError(f"preprocessed data '{path}' does not exist; set load_preprocessed_data_path")
    return path
