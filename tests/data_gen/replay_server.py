"""A loopback chat-completions server that answers with recorded-style replies from a fixture, not in our format.

Unlike ``fake_api`` (which answers each stage in the exact form its checker wants), this double replays what a
model wrote for a pair: ``fixtures/replies.yaml`` holds one reply per pair, in the styles real Mistral models use.
It finds the pair in the conversation (the latest user turn naming a known premise), answers with the case's
``reply`` the first time, and with its ``retry`` once the conversation already holds that reply (the client
re-prompted). It counts both, so a test can tell first-try acceptance from re-prompts.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

FIXTURE = Path(__file__).parent / "fixtures" / "replies.yaml"


def load_cases(path: Path = FIXTURE) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))["cases"]


def _premise_in(content: str) -> str | None:
    m = re.search(r"^Premise: (.*)$", content, re.MULTILINE)
    return " ".join(m.group(1).split()) if m else None


class ReplayServer:
    """``with ReplayServer(cases) as server: … server.first[case_id], server.retries[case_id]``."""

    def __init__(self, cases: list[dict[str, Any]]) -> None:
        self.cases = {" ".join(c["premise"].split()): c for c in cases}
        self.first: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.unknown = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.replay = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reply_for(self, messages: list[dict[str, Any]]) -> tuple[str, str]:
        """(text, finish_reason) for a conversation."""
        case = None
        for m in reversed(messages):
            if m.get("role") == "user" and (premise := _premise_in(str(m.get("content", "")))) in self.cases:
                case = self.cases[premise]
                break
        if case is None:  # a pair the fixture does not know: answer like a model that ignored the format
            with self._lock:
                self.unknown += 1
            return "I am not sure what you are asking.", "stop"
        answered = any(m.get("role") == "assistant" and m.get("content") == case["reply"] for m in messages)
        with self._lock:
            (self.retries if answered else self.first)[case["id"]] += 1
        text = case.get("retry", case["reply"]) if answered else case["reply"]
        truncated = text.count("{") > text.count("}")  # the way a reply cut off by max_tokens looks
        return text, "length" if truncated else "stop"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path != "/v1/chat/completions":
            self._send(404, {"object": "error", "message": f"no route {self.path}", "type": "invalid_request_error"})
            return
        text, finish = self.server.replay.reply_for(body.get("messages", []))  # type: ignore[attr-defined]
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
        completion = max(1, len(text) // 4)
        self._send(200, {
            "id": f"cmpl-{time.monotonic_ns():x}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": None},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        })

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
