"""A loopback stand-in for the few Hub API endpoints that ``HfApi.create_repo`` and ``create_commit``
call for small files, recording what it receives; and a Hugging Face cache laid out as
huggingface_hub lays it, for reading offline.

The server answers every preupload with ``uploadMode: regular``, so files arrive base64-encoded in
the commit's NDJSON body; the LFS / Xet transfer the real Hub asks for large files is not served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """``with FakeHub() as hub: HfApi(endpoint=hub.url)``; ``hub.repos``, ``hub.files``, ``hub.requests``."""

    def __init__(self, fail_create: int | None = None) -> None:
        self.repos: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.commits: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.fail_create = fail_create
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(f"POST {self.path}")
                status, answer = hub.answer(self.path.split("?")[0], body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str, body: bytes) -> tuple[int, Any]:
        if path == "/api/repos/create":
            if self.fail_create:
                return self.fail_create, {"error": "Invalid credentials in Authorization header"}
            request = json.loads(body)
            self.repos.append(request)
            return 200, {"url": f"{self.url}/{request.get('organization') or 'user'}/{request['name']}"}
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if "/commit/" in path:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            self.commits.append(lines[0]["value"])
            for line in lines[1:]:
                assert line["key"] == "file" and line["value"]["encoding"] == "base64", line
                self.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            return 200, {"commitUrl": f"{self.url}/{path.split('/api/models/')[1].split('/commit/')[0]}/commit/{COMMIT}", "commitOid": COMMIT}
        return 404, {"error": f"not served: {path}"}

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def cache_repo(hub_cache: Path, repo_id: str, files: dict[str, bytes], *, revision: str = "main", commit: str = COMMIT) -> Path:
    """Put ``files`` (path in the repository -> bytes) into the cache ``hub_cache`` as huggingface_hub
    stores a download: ``models--owner--name/blobs/<hash>`` holds each file once,
    ``snapshots/<commit>/<path>`` links to it relatively, and ``refs/<revision>`` holds the commit.
    Returns the snapshot folder."""
    storage = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    for path, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot.joinpath(*path.split("/"))
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (path.count("/") + 2), "blobs", blob.name))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    return snapshot


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` by its '/'-separated path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
