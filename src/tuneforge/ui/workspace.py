"""The UI's one loaded model (like text-generation-webui: every tab and browser shares it), behind a lock.

    workspace = Workspace(Project("."))
    workspace.load("default")
    workspace.apply_loras(["runs/my-lora"])
    print(workspace.describe())

All model work goes through `tuneforge.api.LLM`; this module only keeps it and says what is loaded.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tuneforge.errors import ModelError
from tuneforge.models.adapters import base_model
from tuneforge.ui.project import Project

if TYPE_CHECKING:
    from tuneforge.api import LLM


class Workspace:
    def __init__(self, project: Project, trust_remote_code: bool = False):
        self.project = project
        self.trust_remote_code = trust_remote_code
        self.llm: LLM | None = None
        self.model_name: str | None = None
        self.loras: dict[str, str] = {}  # adapter name on the model -> the LoRA choice it came from
        self.lock = threading.Lock()  # one model load or adapter change at a time

    def require(self):
        if self.llm is None:
            raise ModelError("no model is loaded; load one in the Model tab first")
        return self.llm

    def load(self, name: str, device: str = "auto", precision: str = "auto") -> str:
        import tuneforge as tf

        spec = self.project.model(name)
        with self.lock:
            # free the old weights before the new ones arrive; a failed load leaves no model (Start refuses)
            self.llm, self.model_name, self.loras = None, None, {}
            self.llm = tf.load(
                spec, device=device, precision=precision, trust_remote_code=self.trust_remote_code
            )
            self.model_name = name
        return self.describe()

    def unload(self) -> str:
        with self.lock:
            self.llm, self.model_name, self.loras = None, None, {}
        return self.describe()

    def apply_loras(self, choices: list[str]) -> str:
        """Load each chosen LoRA (once) and make the last one active; none chosen: the base model alone
        (as text-generation-webui applies an empty list)."""
        llm = self.require()
        if not choices:
            return self.remove_loras() if self.loras else self.describe()
        with self.lock:
            for choice in choices:
                llm.set_adapter(self._held(llm, choice))
        return self.describe()

    def _held(self, llm, choice: str) -> str:
        """The adapter name of LoRA `choice` on the model, loading it the first time (call under the lock)."""
        path = self.project.lora(choice)  # checked every time: a listed LoRA may have gone
        if choice not in self.loras.values():
            name = adapter_name(choice, taken=set(llm.adapters))
            llm.load_adapter(path, name=name)
            self.loras[name] = choice
        return next(n for n, c in self.loras.items() if c == choice)

    @contextmanager
    def evaluating(self, choices: list[str]):
        """Adapter names for 'base' / LoRA choices, loaded for the block (the Perplexity and Compare tabs);
        afterwards the workspace is as it was: LoRAs loaded only for the block removed, the active one active
        again (they had switched the Model tab's active LoRA, unseen)."""
        llm = self.require()
        with self.lock:
            before, active = dict(self.loras), self.active_adapter
            try:
                yield [choice if choice == "base" else self._held(llm, choice) for choice in choices]
            finally:
                for name in [n for n in self.loras if n not in before]:
                    llm.unload_adapter(name)
                self.loras = before
                if active is not None:
                    llm.set_adapter(active)

    def remove_loras(self) -> str:
        with self.lock:
            self.require().unload_adapter()
            self.loras = {}
        return self.describe()

    @property
    def active_adapter(self) -> str | None:
        """The active adapter's name, or None for the plain base model."""
        if self.llm is None or not self.llm.adapters:
            return None
        return self.llm.active_adapter

    def tokenizer(self):
        return self.require().tokenizer

    def describe(self) -> str:
        """Markdown: which model, its size, dtype, device, and the LoRAs applied."""
        if self.llm is None:
            return "No model loaded."
        llm = self.llm
        base = base_model(llm.model)
        parameters = base.num_parameters()
        lines = [
            f"**Model:** `{self.model_name}` — {parameters / 1e6:,.1f} M parameters, dtype `{base.dtype}`, "
            f"precision `{llm.precision}`, device `{llm.device}`"
        ]
        if self.loras:
            applied = ", ".join(
                f"`{choice}`" + (" (active)" if name == self.active_adapter else "")
                for name, choice in self.loras.items()
            )
            lines.append(f"**LoRAs:** {applied}")
        else:
            lines.append("**LoRAs:** none (base model)")
        return "\n\n".join(lines)


def adapter_name(choice: str, taken: set[str]) -> str:
    """A short adapter name from a LoRA choice: 'runs/my-lora' -> 'my-lora', 'runs/x/checkpoints/step-4' -> 'x-step4'."""
    parts = choice.split("/")
    name = f"{parts[1]}-step{parts[-1].removeprefix('step-')}" if "checkpoints" in parts else parts[-1]
    name = name.replace(".", "_")
    candidate, n = name, 2
    while candidate in taken or candidate == "base":
        candidate, n = f"{name}-{n}", n + 1
    return candidate
