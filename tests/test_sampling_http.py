"""The sample stage's OpenAI-compatible HTTP backend: against a real vLLM server on 127.0.0.1
(``python -m vllm.entrypoints.openai.api_server``, what ``vllm serve`` runs), and against two small
scripted servers that are test fixtures, not stand-ins for a teacher: one answers 429 and 500
before succeeding (the retries), one stops answering (the error, and finished shards stay).

Its own module: the server holds its share of memory until the module ends, so the offline vLLM
tests (``test_sampling.py``) never run beside it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mcckd.answers import answers_match, extract_answer
from mcckd.demo_world.assets import TEACHER_DIR
from mcckd.stages import execute, output, work_dir_for
from mcckd.stages.sample import SampleSettings
from mcckd.teachers import HttpSettings, TeacherError, TeacherSpec, teacher_identity
from tests.demo_questions import questions_file

SECRET = "sk-test-never-print-me"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_teacher(url: str, **http: object) -> TeacherSpec:
    fast = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_in_flight": 1, **http}
    return TeacherSpec(name="served", backend="http", model="demo-teacher", base_url=url, http=HttpSettings(**fast))


# --- HTTP: a real vLLM server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_server():
    """``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs) on the demo teacher."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(TEACHER_DIR)]
    cmd += ["--served-model-name", "demo-teacher", "--host", "127.0.0.1", "--port", str(port), "--api-key", SECRET]
    cmd += ["--enforce-eager", "--gpu-memory-utilization", "0.3", "--no-enable-chunked-prefill"]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-server-{port}.log"
    server = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    import httpx

    while True:
        assert server.poll() is None, f"vLLM server exited: {log.read_text()[-3000:]}"
        assert time.time() < deadline, "vLLM server did not come up in 300 s"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(1)
    yield f"{url}/v1"
    server.send_signal(signal.SIGINT)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.mark.slow  # the vLLM server
def test_http_backend_samples_from_vllm_server(tmp_path, vllm_server, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    settings = SampleSettings(
        teachers=[http_teacher(vllm_server, max_in_flight=8)], num_samples=2, shard_size=4, seed=1
    )
    q = questions_file(tmp_path / "q.parquet", 10)
    summary = execute("sample", settings, tmp_path / "out", {"questions": q})
    rows = pq.read_table(output("sample", tmp_path / "out", "samples")).to_pylist()
    assert summary["samples"] == len(rows) == 20 and summary["shards"] == 3
    assert all(r["finish_reason"] in ("stop", "length") and r["completion_tokens"] > 0 for r in rows)
    assert len({r["seed"] for r in rows}) == 20  # one seed per (question, sample)
    correct = sum(answers_match(extract_answer(r["rationale"], "number"), r["answer"]) for r in rows)
    assert correct >= 14, f"the demo teacher (98% accurate offline) got {correct}/20 over HTTP"
    assert summary["throughput"][0]["generated_tokens"] == sum(r["completion_tokens"] for r in rows)
    assert SECRET not in caplog.text and SECRET not in json.dumps(summary)


@pytest.mark.slow  # the vLLM server
def test_http_backend_with_a_wrong_api_key_fails_without_retrying(tmp_path, vllm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    settings = SampleSettings(teachers=[http_teacher(vllm_server)], num_samples=1, shard_size=2)
    with pytest.raises(TeacherError, match="HTTP 401") as failed:
        execute("sample", settings, tmp_path / "out", {"questions": questions_file(tmp_path / "q.parquet", 2)})
    assert vllm_server in str(failed.value) and "wrong" not in str(failed.value)


@pytest.mark.slow  # the vLLM server
def test_served_teacher_identity_is_what_the_server_reports(vllm_server, monkeypatch):
    """redistill's view of a served teacher: the model and the checkpoint (``root``) its server names."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    spec = http_teacher(vllm_server)
    identity = teacher_identity(spec)
    assert identity == teacher_identity(spec)  # stable while the server serves the same weights
    assert teacher_identity(spec.model_copy(update={"revision": "v2"})) != identity
    with pytest.raises(TeacherError, match="served: \\['demo-teacher'\\]"):
        teacher_identity(spec.model_copy(update={"model": "another-model"}))
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    with pytest.raises(TeacherError, match="cannot read the served models"):
        teacher_identity(spec)


# --- HTTP: retries and a server that stops answering -------------------------------------------


class ScriptedServer:
    """Answers request k with ``script[k]``: an HTTP status, "ok" (a completion) or "hang"."""

    def __init__(self, script: list[str]) -> None:
        self.script, self.seen, self.paths = script, [], []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                action = outer.script[min(len(outer.seen), len(outer.script) - 1)]
                outer.seen.append((action, body))
                outer.paths.append(self.path)
                if action == "hang":
                    outer.release.wait(60)
                    return
                if action != "ok":
                    self.send_response(int(action))
                    self.end_headers()
                    return
                text = " 2 + 3 = 5. The answer is 5."
                choice = {"message": {"role": "assistant", "content": text}} if "chat" in self.path else {"text": text}
                answer = {
                    "choices": [{"index": 0, "finish_reason": "stop", **choice}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 13},
                }
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def test_http_retries_429_and_500_then_succeeds(tmp_path, caplog):
    server = ScriptedServer(["429", "500", "503", "ok"])
    try:
        settings = SampleSettings(teachers=[http_teacher(server.url)], num_samples=1, shard_size=2)
        summary = execute(
            "sample", settings, tmp_path / "out", {"questions": questions_file(tmp_path / "q.parquet", 3)}
        )
    finally:
        server.close()
    assert summary["samples"] == 3
    assert [a for a, _ in server.seen] == ["429", "500", "503", "ok", "ok", "ok"]
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3 and server.url in retries[0] and "HTTP 429" in retries[0]
    rows = pq.read_table(output("sample", tmp_path / "out", "samples")).to_pylist()
    assert rows[0]["completion_tokens"] == 13 and rows[0]["finish_reason"] == "stop"


def test_server_that_stops_answering_fails_clearly_and_keeps_finished_shards(tmp_path):
    q = questions_file(tmp_path / "q.parquet", 5)
    out = tmp_path / "out"
    settings = SampleSettings(
        teachers=[http_teacher("http://placeholder/v1", timeout_s=0.5, max_retries=2)], num_samples=1, shard_size=1
    )
    server = ScriptedServer(["ok", "ok", "hang"])
    settings.teachers[0].base_url = server.url
    started = time.perf_counter()
    try:
        with pytest.raises(TeacherError) as failed:
            execute("sample", settings, out, {"questions": q})
    finally:
        server.close()
    assert server.url in str(failed.value) and "3 attempts" in str(failed.value)
    assert "ReadTimeout" in str(failed.value)
    assert time.perf_counter() - started < 20
    shards = sorted((work_dir_for(out) / "shards" / "served").glob("*.parquet"))
    assert len(shards) == 2 and not (out / "manifest.json").exists()

    # A working server later: only the 3 missing questions are asked, the 2 finished shards are kept.
    healthy = ScriptedServer(["ok"])
    settings.teachers[0].base_url = healthy.url
    try:
        summary = execute("sample", settings, out, {"questions": q})
    finally:
        healthy.close()
    assert len(healthy.seen) == 3 and summary["shards_resumed"] == 2 and summary["samples"] == 5


def test_chat_teacher_posts_messages_to_chat_completions(tmp_path):
    server = ScriptedServer(["ok"])
    teacher = http_teacher(server.url).model_copy(update={"chat": True})
    try:
        settings = SampleSettings(teachers=[teacher], num_samples=2, shard_size=2)
        execute("sample", settings, tmp_path / "out", {"questions": questions_file(tmp_path / "q.parquet", 2)})
    finally:
        server.close()
    assert server.paths == ["/v1/chat/completions"] * 4
    body = server.seen[0][1]
    assert body["messages"][0]["role"] == "user" and "Question:" in body["messages"][0]["content"]
    assert "prompt" not in body and body["n"] == 1
    rows = pq.read_table(output("sample", tmp_path / "out", "samples")).to_pylist()
    assert [r["rationale"] for r in rows] == ["2 + 3 = 5. The answer is 5."] * 4
