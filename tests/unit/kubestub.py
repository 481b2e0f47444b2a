"""A tiny stand-in for the Kubernetes API server, for the CLI's unit tests: it answers the
paths it is given (status, body) and records every request, so a test can say what the CLI
asked for and check what the CLI printed for each kind of answer (403, 404, a watch stream,
a log). Plain HTTP on localhost; no cluster needed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

Answer = tuple[int, Any]
"""(HTTP status, body): a dict/list is sent as JSON, str/bytes as they are."""


@dataclass
class Stub:
    """Answers by path; `watch` answers (a list, one per watch request in turn) take over the
    watch requests of their path, each a list of events sent as JSON lines, or an Answer."""

    url: str = ""
    answers: dict[str, Answer] = field(default_factory=dict)
    watches: dict[str, list[list[dict[str, Any]] | Answer]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)

    def kubeconfig(self, directory: Path, namespace: str = "team-a") -> Path:
        path = directory / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "stub", "cluster": {"server": self.url}}],
                    "users": [{"name": "me", "user": {"token": "t"}}],
                    "contexts": [
                        {
                            "name": "stub",
                            "context": {"cluster": "stub", "user": "me", "namespace": namespace},
                        },
                        {"name": "other", "context": {"cluster": "stub", "user": "me"}},
                    ],
                    "current-context": "stub",
                }
            )
        )
        return path

    def asked(self, path: str) -> list[dict[str, list[str]]]:
        """The query of every request made for `path`."""
        return [query for p, query in self.requests if p == path]


def status(code: int, reason: str, message: str) -> Answer:
    """A metav1.Status answer, as the API server sends errors."""
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
    return code, {**body, "reason": reason, "code": code}


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            stub.requests.append((parts.path, query))
            if query.get("watch") and stub.watches.get(parts.path):
                answer = stub.watches[parts.path].pop(0)
                if isinstance(answer, list):
                    lines = "".join(json.dumps(event) + "\n" for event in answer)
                    self._send(200, lines, "application/json")
                    return
            else:
                answer = stub.answers.get(parts.path) or status(
                    404, "NotFound", "the server could not find the requested resource"
                )
            code, body = answer
            if isinstance(body, dict | list):
                self._send(code, json.dumps(body), "application/json")
            else:
                self._send(code, body, "text/plain")

        def _send(self, code: int, body: str | bytes, content_type: str) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextmanager
def serving() -> Iterator[Stub]:
    stub = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
