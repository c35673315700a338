"""A small OpenAI-compatible embeddings server on 127.0.0.1, backed by the default model,
so that tests run the real langchain-openai / openai client code over real HTTP."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


class FakeOpenAI:
    """``with FakeOpenAI() as server:`` serves POST /v1/embeddings at ``server.base_url``.

    ``fail_next`` is a list of (status, headers) answers given before normal service
    resumes (e.g. ``(429, {"Retry-After": "1"})``). ``fail_texts``: a predicate; a request
    holding a text it accepts is answered with HTTP 500 (a text the service cannot take).
    ``hang``: seconds to wait before answering (a slow service). ``requests`` records each call.
    """

    def __init__(self, embedder=None):
        if embedder is None:
            from pgvz_nb.embedders import default_embedder

            embedder = default_embedder()
        self.embedder = embedder
        self.requests: list[dict] = []
        self.fail_next: list[tuple[int, dict]] = []
        self.fail_texts = None
        self.hang = 0.0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")


                with outer._lock:
                    outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                           "body": body, "at": time.monotonic()})
                    failure = outer.fail_next.pop(0) if outer.fail_next else None
                if failure is not None:
                    status, headers = failure
                    self._reply(status, {"error": {"message": "injected failure", "type": "test"}}, headers)
                    return
                deadline = time.monotonic() + outer.hang
                while time.monotonic() < deadline and outer.hang:
                    time.sleep(0.05)
                if not self.path.rstrip("/").endswith("/embeddings"):
                    self._reply(404, {"error": {"message": f"no route {self.path}"}})
                    return
                inputs = body.get("input")
                if isinstance(inputs, str):
                    inputs = [inputs]
                if inputs and not isinstance(inputs[0], str):
                    self._reply(400, {"error": {"message": "token arrays are not supported here"}})
                    return
                if outer.fail_texts is not None and any(outer.fail_texts(t) for t in inputs):
                    self._reply(500, {"error": {"message": "the model failed on this input", "type": "server_error"}})
                    return
                model = outer.embedder
                vectors = np.asarray(model.encode(list(inputs)) if hasattr(model, "encode")
                                     else model.embed_documents(list(inputs)), dtype=np.float32)
                data = []
                for i, vec in enumerate(vectors):
                    if body.get("encoding_format") == "base64":
                        emb = base64.b64encode(vec.astype("<f4").tobytes()).decode()
                    else:
                        emb = vec.tolist()
                    data.append({"object": "embedding", "index": i, "embedding": emb})
                tokens = sum(len(t.split()) for t in inputs)
                self._reply(200, {"object": "list", "data": data, "model": body.get("model"),
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

            def _reply(self, status, payload, headers=None):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
