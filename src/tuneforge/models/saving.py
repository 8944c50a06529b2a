"""Writing Hugging Face folders (models, adapters) without importing DeepSpeed.

Accelerate's unwrap_model, which transformers' and PEFT's save_pretrained call, imports DeepSpeed whenever the
package is installed (tuneforge's set-up installs it for the `deepspeed` extra) to ask whether the model is a
DeepSpeedEngine: 1.8 s and a "Setting accelerator to CPU" log line in every command that saves. A model
cannot be one while DeepSpeed was never imported, so then Accelerate is told the package is absent.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def deepspeed_not_imported() -> Iterator[None]:
    """Within: Accelerate does not import DeepSpeed to ask whether a model is a DeepSpeedEngine."""
    from unittest import mock

    import accelerate.utils.other as other

    if "deepspeed" in sys.modules or not hasattr(other, "is_deepspeed_available"):
        yield
        return
    with mock.patch.object(other, "is_deepspeed_available", return_value=False):
        yield


def save_pretrained(model: Any, folder: str | Path, **kwargs: Any) -> None:
    """model.save_pretrained(folder, **kwargs) for a transformers model or a PEFT model, DeepSpeed left alone."""
    with deepspeed_not_imported():
        model.save_pretrained(folder, **kwargs)


def save_active_adapter(model: Any, folder: str | Path, **kwargs: Any) -> None:
    """A PEFT model's active adapter alone, at the root of `folder`, as a run's adapter folder holds it.

    PEFT writes an adapter not named "default" (one loaded from a folder is named after it) into
    folder/<name>/, where nothing that reads a run's adapter looks; it is written beside and moved up.
    """
    name = model.active_adapter
    if name == "default":  # the others loaded beside it would land in folder/<name>/
        save_pretrained(model, folder, selected_adapters=["default"], **kwargs)
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".saving-") as tmp:
        save_pretrained(model, tmp, selected_adapters=[name], **kwargs)
        for item in (Path(tmp) / name).iterdir():
            os.replace(item, folder / item.name)
