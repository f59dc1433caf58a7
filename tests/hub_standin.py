"""A local stand-in for the Hugging Face Hub's upload API, on loopback, for the endpoints huggingface_hub's real upload
path calls: repo create, preupload (which files go through LFS), the LFS batch API and its PUT upload, README
metadata validation, and commit. Point the real code at it with HF_ENDPOINT (or HfApi(endpoint=...)).

Like the Hub, it takes binary files (*.safetensors) through LFS and small text files inline. The Hub would hand
LFS files to Xet storage when the `hf_xet` package is installed; that protocol is not stood in for, so the client
runs with HF_HUB_DISABLE_XET=1 (its documented switch) and uses the LFS path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Commit:
    repo_id: str
    message: str
    files: dict[str, bytes]  # path -> content (LFS files resolved from their uploaded objects)


@dataclass
class HubStandIn:
    """The recorded state: repositories (id -> create request), commits in order, LFS objects, auth headers."""

    repos: dict[str, dict] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    objects: dict[str, bytes] = field(default_factory=dict)
    authorizations: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    url: str = ""

    def start(self) -> "HubStandIn":
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, payload) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self._body()
                if self.headers.get("Authorization"):
                    state.authorizations.add(self.headers["Authorization"])
                path = self.path.split("?")[0]
                try:
                    self._send(200, state.post(path, body))
                except KeyError as exc:
                    state.errors.append(f"POST {path}: {exc}")
                    self._send(404, {"error": f"not stood in: {path}"})

            def do_PUT(self):  # noqa: N802
                body = self._body()
                oid = self.path.rsplit("/", 1)[-1]
                if hashlib.sha256(body).hexdigest() != oid:
                    state.errors.append(f"PUT {oid}: content does not match its sha256")
                    self._send(400, {"error": "sha256 mismatch"})
                    return
                state.objects[oid] = body
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def post(self, path: str, body: bytes):
        if path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            self.repos.setdefault(repo_id, request)
            return {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if path == "/api/validate-yaml":
            return {}
        if path.endswith(".git/info/lfs/objects/batch"):
            request = json.loads(body)
            return {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "authenticated": True,
                 "actions": {"upload": {"href": f"{self.url}/lfs-objects/{o['oid']}"}}} for o in request["objects"]]}
        if path.startswith("/api/models/") and "/preupload/" in path:
            files = json.loads(body)["files"]
            return {"files": [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors")
                               else "regular", "shouldIgnore": False, "oid": None} for f in files]}
        if path.startswith("/api/models/") and "/commit/" in path:
            repo_id = path[len("/api/models/"):].split("/commit/")[0]
            if repo_id not in self.repos:
                raise KeyError(f"repository {repo_id} was never created")
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            files = {}
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "lfsFile":
                    files[value["path"]] = self.objects[value["oid"]]
            self.commits.append(Commit(repo_id, lines[0]["value"]["summary"], files))
            oid = hashlib.sha1(str(len(self.commits)).encode()).hexdigest()
            return {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid}
        raise KeyError(path)
