"""tuneforge: fine-tune a language model on your own text and see what it learned.

import tuneforge as tf
llm = tf.load("default")
run = llm.train("notes.txt", method="lora", epochs=1)
print(llm.generate("My notes say "))
"""

import logging
import warnings

from tuneforge.hardware import bounded_openmp_waits

# before torch loads its OpenMP runtime: idle threads spin a moment before they sleep, neither Intel OpenMP's
# 200 ms nor not at all (hardware.bounded_openmp_waits says what each cost); hardware.RunThreads leaves busy cores
bounded_openmp_waits()

# the public door re-exports the LLM face: the one package file allowed to import a face (test_architecture)
from tuneforge.api import LLM, load  # noqa: E402  (after bounded_openmp_waits, on purpose)
from tuneforge.config import RunConfig, load_config  # noqa: E402
from tuneforge.errors import TuneforgeError  # noqa: E402
from tuneforge.generate import GenerationSettings  # noqa: E402
from tuneforge.train.loop import TrainResult  # noqa: E402

# bitsandbytes warns on every CPU import that an optional hub-downloaded kernel is missing; it is not needed.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# ... and looking for it offline, `kernels` says on every LoRA run that it skipped a hub trust check.
logging.getLogger("kernels._internals.hf_hub").setLevel(logging.ERROR)
# PEFT still calls a transformers API renamed in v5; the warning is about their code, not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

__version__ = "0.1.0"
__all__ = [
    "LLM",
    "GenerationSettings",
    "RunConfig",
    "TrainResult",
    "TuneforgeError",
    "__version__",
    "load",
    "load_config",
]
