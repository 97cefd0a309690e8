"""A loopback stand-in for the parts of the Mistral API that data_gen uses, for tests, benchmarks and demos.

Speaks, in the JSON shapes the ``mistralai`` SDK sends and expects: chat completions, file upload/download,
batch job create/get/list. It answers in kind for each data_gen stage (it recognises the system prompt), and
injects faults at configurable rates: 429 with ``Retry-After``, 500, answers slower than the client's timeout,
invalid JSON, invalid labels/scores. Every draw is a hash of the seed, the request body and how many times
that body was seen, so a run is reproducible whatever the request order. Binds 127.0.0.1 only.

    python tests/data_gen/fake_api.py --latency-s 0.1 --rate-500 0.05   # prints its URL, serves until Ctrl-C
"""

from __future__ import annotations

import argparse
import dataclasses
import email.parser
import email.policy
import hashlib
import json
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from data_gen import prompts

FAULTS = ("429", "500", "slow", "bad_json", "bad_label")


@dataclass
class FakeConfig:
    """Latency, fault rates (each a probability per request) and batch behaviour."""

    latency_s: float = 0.0
    seed: int = 0
    api_key: str | None = None  # when set, requests without "Bearer <api_key>" get 401
    rate_429: float = 0.0
    retry_after_s: float = 0.05
    rate_500: float = 0.0
    rate_slow: float = 0.0
    slow_s: float = 2.0
    rate_bad_json: float = 0.0
    rate_bad_label: float = 0.0
    batch_polls: int = 1  # job polls before a job finishes
    batch_hold: bool = False  # keep jobs RUNNING until release_batches()
    # Request fields answered with transformers serve's 422 (its body, byte for byte): an OpenAI-style server
    # that does not know Mistral's own fields such as random_seed.
    refuse_fields: tuple[str, ...] = ()


def _h(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def _field(text: str, name: str) -> str:
    m = re.search(rf"^{name}: (.*)$", text, re.MULTILINE)
    return m.group(1) if m else ""


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _thought(label: int, ref: int, revised: bool = False) -> str:
    mark = " (revised)" if revised else ""
    return (
        f"step 1: The premise gives the relevant facts (ref {ref % 1000}){mark}. "
        "step 2: The hypothesis is compared with those facts. "
        f"step 3: {prompts.LABEL_NAMES[label]}, because the facts {'support' if label else 'do not support'} it."
    )


class FakeMistral:
    """The server; use as a context manager. ``counts`` and ``chat_bodies`` record what it was asked."""

    def __init__(self, config: FakeConfig | None = None, port: int = 0) -> None:
        self.config = config or FakeConfig()
        self.counts: Counter[str] = Counter()
        self.chat_bodies: list[dict[str, Any]] = []
        self._seen: Counter[int] = Counter()
        self._files: dict[str, dict[str, Any]] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._server.request_queue_size = 256
        self._server.server_bind()
        self._server.server_activate()
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeMistral:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-mistral", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever, so only after start()
            self._server.shutdown()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeMistral:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def release_batches(self) -> None:
        self.config.batch_hold = False

    # --- behaviour ---

    def _fault(self, kind: str, body: dict[str, Any]) -> str | None:
        """Deterministic fault draw for this body and its n-th occurrence."""
        key = _h(json.dumps(body, sort_keys=True))
        with self._lock:
            self._seen[key] += 1
            n = self._seen[key]
        u = _h(self.config.seed, kind, key, n) / 2**64
        edge = 0.0
        for fault in FAULTS:
            edge += getattr(self.config, f"rate_{fault}")
            if u < edge:
                return fault
        return None

    def answer(self, messages: list[dict[str, Any]], fault: str | None) -> str:
        """The assistant's text for a data_gen stage's messages (or a bad one, if the fault says so)."""
        system = messages[0]["content"] if messages and messages[0].get("role") == "system" else ""
        task = prompts.task_of(system)
        rows = [m["content"] for m in messages if m.get("role") == "user" and not str(m["content"]).startswith(prompts.REPROMPT_PREFIX)]
        text = rows[-1] if rows else ""
        if fault == "bad_json":
            return '{"thought_process": "step 1: the answer stops he'
        ref = _h(self.config.seed, _field(text, "Premise"), _field(text, "Hypothesis"))
        gold = int(_field(text, "Gold label")[:1] or 0)
        bad = fault == "bad_label"
        if task == "generate":
            label = ref % 2
            return json.dumps({"thought_process": _thought(label, ref), "predicted_label": 7 if bad else label})
        if task == "reflect":
            return json.dumps({"flaw_analysis": "The flawed thought compared topics instead of facts.",
                               "thought_process": _thought(gold, ref), "predicted_label": 7 if bad else gold})
        if task == "improve":
            return json.dumps({"thought_process": _thought(gold, ref, revised=True), "predicted_label": 7 if bad else gold})
        if task == "judge":
            good = "(revised)" in _field(text, "Thought")
            scores = {"coherence": 9 if bad else 5 if good else 3 + ref % 3,
                      "correctness": 5 if good else 2 + (ref // 3) % 4, "brevity": 5 if good else 4}
            return json.dumps({**scores, "critique": "Step 2 could name the relation."})
        return "{}"

    def completion(self, body: dict[str, Any], fault: str | None) -> dict[str, Any]:
        content = self.answer(body.get("messages", []), fault)
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4 + 5 * len(body.get("messages", []))
        with self._lock:
            self.counts["completions"] += 1
            n = self.counts["completions"]
        return {
            "id": f"cmpl-{n}", "object": "chat.completion", "model": body.get("model", ""), "created": int(time.time()),
            "usage": {"prompt_tokens": prompt, "completion_tokens": len(content) // 4 + 1,
                      "total_tokens": prompt + len(content) // 4 + 1},
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        }

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    # --- routes: each returns (status, JSON or bytes, extra headers) ---

    def chat(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.chat_bodies.append(body)
            self.counts["chat"] += 1
        unexpected = {k for k in body if k in self.config.refuse_fields}
        if unexpected:
            self._count("chat_422")
            return 422, {"detail": f"Unexpected fields in the request: {unexpected}"}, {}
        fault = self._fault("chat", body)
        if fault:
            self._count(f"chat_{fault}")
        time.sleep(self.config.latency_s)
        if fault == "429":
            return 429, {"message": "Requests rate limit exceeded"}, {"Retry-After": f"{self.config.retry_after_s:g}"}
        if fault == "500":
            return 500, {"message": "Internal server error"}, {}
        if fault == "slow":
            time.sleep(self.config.slow_s)
        return 200, self.completion(body, fault), {}

    def upload(self, content_type: str, data: bytes) -> tuple[int, Any, dict[str, str]]:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + data
        )
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True))
        filename, content = fields.get("file", ("upload.jsonl", b""))
        purpose = (fields.get("purpose", (None, b"batch"))[1] or b"batch").decode()
        return 200, self._store_file(filename or "upload.jsonl", content or b"", purpose, "batch_request"), {}

    def _store_file(self, name: str, content: bytes, purpose: str, sample_type: str) -> dict[str, Any]:
        with self._lock:
            self.counts["files_upload" if sample_type == "batch_request" else "files_result"] += 1
            fid = f"file-{len(self._files) + 1:04d}"
            meta = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()), "filename": name,
                    "purpose": purpose, "sample_type": sample_type, "source": "upload", "num_lines": content.count(b"\n")}
            self._files[fid] = {**meta, "content": content}
        return meta

    def download(self, file_id: str) -> tuple[int, Any, dict[str, str]]:
        self._count("files_download")
        f = self._files.get(file_id)
        return (200, f["content"], {}) if f else (404, {"message": f"no file {file_id}"}, {})

    def create_job(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.counts["jobs_create"] += 1
            jid = f"job-{len(self._jobs) + 1:04d}"
            lines = [json.loads(x) for f in body.get("input_files", []) for x in self._files[f]["content"].splitlines() if x.strip()]
            self._jobs[jid] = {
                "id": jid, "object": "batch", "input_files": body.get("input_files", []), "endpoint": body.get("endpoint"),
                "model": body.get("model"), "metadata": body.get("metadata"), "errors": [], "status": "QUEUED",
                "created_at": int(time.time()), "total_requests": len(lines), "completed_requests": 0,
                "succeeded_requests": 0, "failed_requests": 0, "polls": 0, "lines": lines,
            }
        return 200, self._job_json(jid), {}

    def _job_json(self, jid: str) -> dict[str, Any]:
        return {k: v for k, v in self._jobs[jid].items() if k not in ("polls", "lines")}

    def get_job(self, jid: str) -> tuple[int, Any, dict[str, str]]:
        self._count("jobs_get")
        job = self._jobs.get(jid)
        if job is None:
            return 404, {"message": f"no job {jid}"}, {}
        job["polls"] += 1
        if job["status"] == "QUEUED":
            job["status"] = "RUNNING"
        elif job["status"] == "RUNNING" and job["polls"] > self.config.batch_polls and not self.config.batch_hold:
            self._finish(job)
        return 200, self._job_json(jid), {}

    def _finish(self, job: dict[str, Any]) -> None:
        out, err = [], []
        for i, line in enumerate(job["lines"]):
            body = {"model": job["model"], **line["body"]}
            fault = self._fault("batch", body)
            self._count("batch_lines")
            if fault in ("429", "500", "slow"):
                err.append({"id": f"{job['id']}-{i}", "custom_id": line.get("custom_id"),
                            "response": {"status_code": 500, "body": {"message": "Internal server error"}},
                            "error": {"message": f"request failed ({fault})", "code": 500}})
            else:
                out.append({"id": f"{job['id']}-{i}", "custom_id": line.get("custom_id"),
                            "response": {"status_code": 200, "body": self.completion(body, fault)}, "error": None})
        job["output_file"] = self._store_file(f"{job['id']}-out.jsonl", _jsonl(out), "batch", "batch_result")["id"]
        if err:
            job["error_file"] = self._store_file(f"{job['id']}-err.jsonl", _jsonl(err), "batch", "batch_error")["id"]
        job.update(status="SUCCESS", completed_requests=len(job["lines"]), succeeded_requests=len(out),
                   failed_requests=len(err), started_at=job["created_at"], completed_at=int(time.time()))

    def list_jobs(self) -> tuple[int, Any, dict[str, str]]:
        self._count("jobs_list")
        data = [self._job_json(j) for j in self._jobs]
        return 200, {"object": "list", "total": len(data), "data": data}, {}

    def route(self, method: str, path: str, headers: Any, data: bytes) -> tuple[int, Any, dict[str, str]]:
        if self.config.api_key is not None and headers.get("Authorization") != f"Bearer {self.config.api_key}":
            self._count("unauthorized")
            return 401, {"message": "Unauthorized"}, {}
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/v1/chat/completions":
            return self.chat(json.loads(data))
        if method == "POST" and path == "/v1/files":
            return self.upload(headers.get("Content-Type", ""), data)
        if method == "GET" and len(parts) == 4 and parts[:2] == ["v1", "files"] and parts[3] == "content":
            return self.download(parts[2])
        if method == "POST" and path == "/v1/batch/jobs":
            return self.create_job(json.loads(data))
        if method == "GET" and path == "/v1/batch/jobs":
            return self.list_jobs()
        if method == "GET" and len(parts) == 4 and parts[:3] == ["v1", "batch", "jobs"]:
            return self.get_job(parts[3])
        return 404, {"message": f"no route {method} {path}"}, {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as against the real API
    disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms delayed-ACK stall per answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _serve(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fake: FakeMistral = self.server.fake  # type: ignore[attr-defined]
        status, payload, extra = fake.route(self.command, urlsplit(self.path).path, self.headers, data)
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the answer came

    do_GET = do_POST = do_DELETE = _serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python tests/data_gen/fake_api.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    for f in dataclasses.fields(FakeConfig):
        kind = {"float": float, "int": int, "str | None": str}.get(str(f.type))
        if str(f.type) == "bool":
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action="store_true")
        elif kind:
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default)
    args = vars(parser.parse_args(argv))
    port = args.pop("port")
    with FakeMistral(FakeConfig(**args), port=port) as fake:
        print(fake.url, flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
