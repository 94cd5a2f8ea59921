"""Teacher backends behind one interface: vLLM offline, or any OpenAI-compatible HTTP server.

The sample stage hands a backend its unfinished shards (lists of :class:`Request`) and a callback;
the backend calls it once per shard as soon as every request of that shard has its completions,
so the stage can write the shard to disk while the teacher keeps working. Recorded rationales
(files people already have) are the ``import`` stage, not a backend: nothing is generated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field
from tqdm.auto import tqdm

from mcckd.generation import VllmSettings, open_llm
from mcckd.models import model_fingerprint, resolve_model
from mcckd.rendering import ChatSettings, Renderer, chat_messages
from mcckd.settings import Settings
from mcckd.store import fingerprint, stage_lock

log = logging.getLogger(__name__)


class HttpSettings(Settings):
    """How hard to push an OpenAI-compatible server, and how long to keep trying."""

    max_in_flight: int = Field(32, ge=1, description="concurrent requests")
    timeout_s: float = Field(120.0, gt=0, description="seconds per request")
    max_retries: int = Field(
        6, ge=0, description="after the first attempt, on 429, 5xx, timeouts and broken connections"
    )
    backoff_base_s: float = Field(
        0.5, ge=0, description="delay before retry r is uniform in [0, min(max, base * 2**r)]"
    )
    backoff_max_s: float = Field(30.0, ge=0, description="the longest delay before a retry")


class TeacherSpec(Settings):
    """One teacher. ``model`` is a model source (vllm: a folder, GGUF file or named source; see
    :mod:`mcckd.models`) or the served model name (http)."""

    name: str = Field(description="the teacher's name in the samples and the report")
    backend: Literal["vllm", "http"] = Field(
        "vllm", description="vllm: a local engine; http: an OpenAI-compatible server"
    )
    model: str = Field(description="vllm: a folder, GGUF file or named source; http: the served model name")
    base_url: str | None = Field(None, description="http: e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="http: the variable holding the key (never logged)")
    revision: str | None = Field(
        None, description="http: the model's version, part of its identity (no weights to hash)"
    )
    chat: bool = Field(False, description="instruct models: wrap the prompt in the model's chat template")
    vllm: VllmSettings = Field(VllmSettings(), description="the local engine (backend vllm)")
    http: HttpSettings = Field(HttpSettings(), description="how the server is asked (backend http)")


class Sampling(Settings):
    """The teachers' decoding (also recorded in every sample row)."""

    temperature: float = Field(0.8, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: the smallest set of tokens with this mass")
    max_tokens: int = Field(192, ge=1, description="longest rationale generated; a longer one is cut (truncated)")


@dataclass(frozen=True)
class Request:
    prompt: str
    n: int
    seed: int


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    seed: int


# A teacher's user turn is the filled prompt file (prompts/), with no instruction around it.
TEACHER_CHAT = ChatSettings(use="always", instruction="{question}")

Shard = tuple[int, list[Request]]
ShardDone = Callable[[int, list[list[Completion]]], None]  # shard index, n completions per request


class TeacherError(RuntimeError):
    """The teacher could not produce completions (after retries, for HTTP); finished shards stay."""


def teacher_fingerprint(spec: TeacherSpec) -> str:
    """Identity of what generates: the weights' bytes (local) or server model + revision (HTTP)."""
    if spec.backend == "vllm":
        return model_fingerprint(spec.model)
    return fingerprint("http", spec.model, spec.revision or "unversioned")


def teacher_identity(spec: TeacherSpec) -> str:
    """What a re-distillation compares: the weights' bytes (local), or the model and its revision as
    the server reports them now (HTTP: ``GET /models``, the entry's ``root``, e.g. the checkpoint
    vLLM serves), so a server that swapped its weights counts as a new teacher."""
    if spec.backend == "vllm":
        return teacher_fingerprint(spec)
    import httpx

    key = os.environ.get(spec.api_key_env or "", "")
    url = f"{spec.base_url.rstrip('/')}/models"
    try:
        response = httpx.get(url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)
        response.raise_for_status()
        served = {m["id"]: m for m in response.json()["data"]}
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        raise TeacherError(f"{url}: cannot read the served models of teacher {spec.name!r} ({e})") from e
    if spec.model not in served:
        raise TeacherError(f"{url}: teacher {spec.name!r} wants model {spec.model!r}; served: {sorted(served)}")
    root = served[spec.model].get("root") or ""
    return fingerprint("http", spec.model, root, spec.revision or "unversioned")


def distilled_record(store: Path) -> Path:
    """Each teacher's identity as of its last completed distillation into ``store`` (redistill reads it)."""
    return store / "distilled_teachers.json"


def read_distilled(store: Path) -> dict[str, str]:
    path = distilled_record(store)
    return json.loads(path.read_text()) if path.is_file() else {}


def record_distilled(store: Path, identities: dict[str, str]) -> None:
    """Note these teachers as distilled (the others keep their entries); written atomically, and
    under the record's lock, so runs finishing together on one store both keep their entries."""
    path = distilled_record(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    with stage_lock(path):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(read_distilled(store) | identities, indent=2, sort_keys=True))
        os.replace(tmp, path)


def sample_seed(seed: int, index: int) -> int:
    """HTTP asks one sample per request, so each sample index gets its own seed."""
    return int(fingerprint(seed, index)[:8], 16)


def run_teacher(spec: TeacherSpec, sampling: Sampling, shards: list[Shard], done: ShardDone) -> None:
    if spec.backend == "vllm":
        run_vllm(spec, sampling, shards, done)
    else:
        asyncio.run(run_http(spec, sampling, shards, done))


def run_vllm(spec: TeacherSpec, sampling: Sampling, shards: list[Shard], done: ShardDone) -> None:
    with open_teacher(spec) as teacher:  # shut down on exit: the next teacher gets the memory
        teacher.sample(sampling, shards, done)


@contextlib.contextmanager
def open_teacher(spec: TeacherSpec) -> Iterator[VllmTeacher]:
    """A vLLM teacher whose engine stays up across :meth:`VllmTeacher.sample` calls (a Ray replica
    samples shard after shard with one engine)."""
    with open_llm(resolve_model(spec.model), spec.vllm) as llm:
        yield VllmTeacher(spec, llm)


class VllmTeacher:
    def __init__(self, spec: TeacherSpec, llm) -> None:
        self.spec, self.engine = spec, llm.llm_engine
        self.renderer = Renderer(llm.get_tokenizer(), settings=TEACHER_CHAT, source=spec.model) if spec.chat else None

    def sample(self, sampling: Sampling, shards: list[Shard], done: ShardDone, show_bar: bool = True) -> None:
        """All requests go into the engine, which stays full; a shard is handed back when it completes.

        Driving ``LLMEngine`` directly (rather than one ``LLM.generate`` per shard) avoids the idle
        tail at every shard boundary: shards cost nothing in throughput.
        """
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        engine = self.engine
        requests_of = dict(shards)
        results: dict[int, list[list[Completion] | None]] = {}
        final_only = RequestOutputKind.FINAL_ONLY  # one output per request, when all its n samples are done
        for shard_index, requests in shards:
            results[shard_index] = [None] * len(requests)
            for pos, r in enumerate(requests):
                params = SamplingParams(n=r.n, seed=r.seed, output_kind=final_only, **sampling.model_dump())
                engine.add_request(f"{shard_index}:{pos}", teacher_prompt(self.renderer, r.prompt), params)
        left = {i: len(reqs) for i, reqs in shards}
        desc = f"sample {self.spec.name}"
        with tqdm(total=sum(left.values()), desc=desc, unit="prompt", disable=not show_bar) as bar:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished:
                        continue
                    shard_index, pos = map(int, out.request_id.split(":"))
                    seed = requests_of[shard_index][pos].seed
                    results[shard_index][pos] = [
                        Completion(
                            c.text, c.finish_reason or "unknown", len(out.prompt_token_ids), len(c.token_ids), seed
                        )
                        for c in sorted(out.outputs, key=lambda c: c.index)
                    ]
                    bar.update()
                    left[shard_index] -= 1
                    if left[shard_index] == 0:
                        done(shard_index, results.pop(shard_index))


def teacher_prompt(renderer: Renderer | None, prompt: str) -> str | dict:
    """The filled prompt file as is (base models), or as one user turn of the model's chat template,
    given as token ids (the renderer the students use, so a template's own BOS is not doubled)."""
    if renderer is None:
        return prompt
    return {"prompt_token_ids": renderer.prompt_ids(prompt)}


async def run_http(spec: TeacherSpec, sampling: Sampling, shards: list[Shard], done: ShardDone) -> None:
    """Bounded concurrency over all shards; a shard is handed back as soon as its requests finish.

    A request that still fails after its retries raises :class:`TeacherError` naming the URL; the
    other requests are cancelled and the shards already handed back stay on disk.
    """
    import httpx

    if not spec.base_url:
        raise ValueError(f"teacher {spec.name!r}: the http backend needs base_url")
    endpoint = spec.base_url.rstrip("/") + ("/chat/completions" if spec.chat else "/completions")
    key = os.environ.get(spec.api_key_env or "", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    s = spec.http
    limits = httpx.Limits(max_connections=s.max_in_flight, max_keepalive_connections=s.max_in_flight)
    in_flight = asyncio.Semaphore(s.max_in_flight)
    jitter = random.Random(0)
    bar = tqdm(total=sum(len(r) for _, r in shards), desc=f"sample {spec.name}", unit="prompt")

    async def one(client, prompt: str, seed: int) -> Completion:
        payload = {"model": spec.model, "n": 1, "seed": seed, **sampling.model_dump()}
        payload |= {"messages": chat_messages(prompt, TEACHER_CHAT)} if spec.chat else {"prompt": prompt}
        async with in_flight:
            body = await post_with_retries(client, endpoint, payload, s, jitter)
        try:
            choice, usage = body["choices"][0], body.get("usage") or {}
            text = choice["message"]["content"] if spec.chat else choice["text"]
        except (KeyError, IndexError, TypeError) as e:
            raise TeacherError(f"{endpoint}: a response without {e}: {str(body)[:300]}") from None
        return Completion(
            text,
            choice.get("finish_reason") or "unknown",
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            seed,
        )

    async def request(client, r: Request) -> list[Completion]:
        out = await asyncio.gather(*(one(client, r.prompt, sample_seed(r.seed, i)) for i in range(r.n)))
        bar.update()
        return list(out)

    async def shard(client, window: asyncio.Semaphore, index: int, requests: list[Request]) -> None:
        async with window:
            done(index, list(await asyncio.gather(*(request(client, r) for r in requests))))

    # A few shards at a time: requests start in shard order, so shards finish (and land) in order.
    per_shard = max((len(r) for _, r in shards), default=1)
    window = asyncio.Semaphore(max(2, 2 * s.max_in_flight // per_shard))
    try:
        client = httpx.AsyncClient(headers=headers, timeout=s.timeout_s, limits=limits)
        async with client, asyncio.TaskGroup() as group:
            for index, requests in shards:
                group.create_task(shard(client, window, index, requests))
    except BaseExceptionGroup as failed:  # the first failure, as itself (TaskGroup wraps it)
        raise failed.exceptions[0] from None
    finally:
        bar.close()


async def post_with_retries(client, url: str, payload: dict, s: HttpSettings, jitter: random.Random) -> dict:
    """POST with exponential backoff and full jitter on 429, 5xx, timeouts and connection errors."""
    import httpx

    last = ""
    for attempt in range(s.max_retries + 1):
        wait_at_least = 0.0
        try:
            response = await client.post(url, json=payload)
        except (httpx.TimeoutException, httpx.TransportError) as e:
            last = f"{type(e).__name__} after {s.timeout_s:g} s" if isinstance(e, httpx.TimeoutException) else repr(e)
        else:
            if response.status_code == 200:
                return response.json()
            if response.status_code != 429 and response.status_code < 500:
                raise TeacherError(f"{url} answered HTTP {response.status_code}: {response.text[:300]}")
            last = f"HTTP {response.status_code}"
            retry_after = response.headers.get("retry-after", "")
            wait_at_least = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 0.0
        if attempt == s.max_retries:
            break
        delay = max(wait_at_least, jitter.uniform(0, min(s.backoff_max_s, s.backoff_base_s * 2**attempt)))
        log.warning("%s: %s; retry %d of %d in %.2f s", url, last, attempt + 1, s.max_retries, delay)
        await asyncio.sleep(delay)
    raise TeacherError(f"{url}: no answer after {s.max_retries + 1} attempts (last: {last})")
