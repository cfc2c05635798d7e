"""A stand-in Hugging Face Hub on 127.0.0.1 for offline download tests.

It answers what huggingface_hub asks of the real Hub: ``/api/models/<repo>/revision/<rev>`` (commit, siblings
with size, git blob id and LFS SHA-256, the card's licence tag), ``/api/models/<repo>/tree/<rev>`` (what
``snapshot_download`` lists) and ``/<repo>/resolve/<rev>/<path>`` (GET and HEAD with ``X-Repo-Commit``,
``ETag``, ``X-Linked-Etag``, ``X-Linked-Size``, ``Content-Length`` and ``Range`` support). Unknown repositories
get the Hub's 404 with ``X-Error-Code: RepoNotFound``. Faults on demand: a file served with other bytes than its
metadata says (``corrupt``), a connection dropped after some bytes followed by 503s (``drop``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".zip")  # kept in LFS on the Hub; the rest in git


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str
    licence: str | None = None

    def sibling(self, path: str) -> dict:
        data = self.files[path]
        # An LFS file's git blob is its pointer; only a small file's blob id is the git hash of its bytes.
        blob = git_blob_id(b"lfs pointer " + data) if path.endswith(WEIGHT_SUFFIXES) else git_blob_id(data)
        entry = {"rfilename": path, "size": len(data), "blobId": blob}
        if path.endswith(WEIGHT_SUFFIXES):
            entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return entry

    def etag(self, path: str) -> str:
        entry = self.sibling(path)
        return entry["lfs"]["sha256"] if "lfs" in entry else entry["blobId"]


@dataclass
class StandInHub:
    repos: dict[str, Repo]
    corrupt: dict[tuple[str, str], bytes] = field(default_factory=dict)  # served instead of the real bytes
    drop: dict[tuple[str, str], int] = field(default_factory=dict)  # bytes sent before the connection drops
    log: list[tuple[str, str, str | None, int]] = field(default_factory=list)  # method, path, Range, bytes sent
    url: str = ""

    def downloads(self) -> list[str]:
        return [path for method, path, _, _ in self.log if method == "GET" and "/resolve/" in path]

    def start(self) -> ThreadingHTTPServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                hub._answer(self, body=True)

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    # ---- answers ------------------------------------------------------------------------------------
    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = h.path.split("?")[0]
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path)  # recursive listing, one page
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo_id = (api or tree or resolve).group(1) if (api or tree or resolve) else None
        repo = self.repos.get(repo_id or "")
        if repo is None:
            self.log.append((h.command, path, None, 0))
            return _send(h, 404, {"X-Error-Code": "RepoNotFound"}, b'{"error":"Repository not found"}', body)
        if tree:
            listing = [{"type": "file", "path": p, "size": e["size"], "oid": e["blobId"],
                        **({"lfs": {"oid": e["lfs"]["sha256"], "size": e["size"], "pointerSize": 134}}
                           if "lfs" in e else {})}
                       for p in sorted(repo.files) for e in [repo.sibling(p)]]
            self.log.append((h.command, path, None, 0))
            return _send(h, 200, {"Content-Type": "application/json"}, json.dumps(listing).encode(), body)
        if api:
            info = {"id": repo_id, "sha": repo.commit, "siblings": [repo.sibling(p) for p in sorted(repo.files)],
                    "cardData": {"license": repo.licence} if repo.licence else {}}
            self.log.append((h.command, path, None, 0))
            return _send(h, 200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)
        file = resolve.group(3)
        if file not in repo.files:
            self.log.append((h.command, path, None, 0))
            return _send(h, 404, {"X-Error-Code": "EntryNotFound"}, b"{}", body)
        self._serve_file(h, repo, file, path, body)

    def _serve_file(self, h: BaseHTTPRequestHandler, repo: Repo, file: str, path: str, body: bool) -> None:
        key = (next(k for k, v in self.repos.items() if v is repo), file)
        data = self.corrupt.get(key, repo.files[file])
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        etag = repo.etag(file)
        if file.endswith(WEIGHT_SUFFIXES):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data)), "ETag": '"pointer"'})
        else:
            headers["ETag"] = f'"{etag}"'
        wanted = h.headers.get("Range")
        if key in self.drop and self.drop[key] < 0:  # after a drop: the server stays down
            self.log.append((h.command, path, wanted, 0))
            return _send(h, 503, {}, b"", body)
        start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1)) if wanted else 0
        part = data[start:]
        status = 206 if wanted else 200
        if wanted:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if not body:
            self.log.append((h.command, path, wanted, 0))
            return _send(h, status, headers, part, False)
        cut = self.drop.get(key)
        if cut is not None:
            self.drop[key] = -1
            h.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(part))}.items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(part[:cut])
            h.wfile.flush()
            h.close_connection = True
            self.log.append((h.command, path, wanted, cut))
            return None
        self.log.append((h.command, path, wanted, len(part)))
        return _send(h, status, headers, part, True)


def _send(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], data: bytes, body: bool) -> None:
    h.send_response(status)
    for name, value in {**headers, "Content-Length": str(len(data))}.items():
        h.send_header(name, value)
    h.end_headers()
    if body:
        h.wfile.write(data)
