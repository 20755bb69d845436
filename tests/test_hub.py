"""`--model org/name` against a real HTTP server that imitates the Hugging Face Hub.

The server implements what huggingface_hub 2.x's snapshot_download asks of a model repo:

    GET  /api/models/{repo}/revision/{rev}          repo info: commit sha (and siblings)
    GET  /api/models/{repo}/tree/{sha}?recursive=…  file listing: path, size, git blob id
    HEAD /{repo}/resolve/{sha}/{file}               X-Repo-Commit, ETag, Content-Length
    GET  /{repo}/resolve/{sha}/{file}               the bytes

A missing repo answers 401 with X-Error-Code RepoNotFound and a missing revision 404 with
RevisionNotFound, as the Hub does. Any other request is recorded as unknown and fails the
test, so a huggingface_hub upgrade that needs more of the API shows up here.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so the
CLI runs in child processes with those variables set.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

from symdiff_cli.engine.release import save_release
from symdiff_cli.engine.release_config import Guide, GuideNetwork
from symdiff_cli.io.reader import read_molecules
from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.dit import SymmetrisedDenoiser

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Requests huggingface_hub makes on its own account (agent detection); unanswered is fine.
OPTIONAL_PATHS = ("/api/agent-harnesses",)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """A thread-served imitation of the Hub holding model repos {repo_id: {filename: bytes}}."""

    def __init__(self, repos: dict[str, dict[str, bytes]], refs: dict[str, str]):
        self.repos = repos
        self.refs = refs  # branch/tag -> commit, shared by all repos
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                hub.handle(self, send_body=True)

            def do_HEAD(self):
                hub.handle(self, send_body=False)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # HTTP plumbing ----------------------------------------------------------------------

    @staticmethod
    def reply(handler, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              send_body: bool = True) -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if send_body:
            handler.wfile.write(body)

    def reply_json(self, handler, payload, send_body: bool) -> None:
        self.reply(handler, 200, json.dumps(payload).encode(), {"Content-Type": "application/json"}, send_body)

    def error(self, handler, status: int, code: str, message: str, send_body: bool) -> None:
        body = json.dumps({"error": message}).encode()
        self.reply(handler, status, body, {"Content-Type": "application/json", "X-Error-Code": code,
                                           "X-Error-Message": message}, send_body)

    def commit_of(self, revision: str) -> str | None:
        return revision if revision == COMMIT else self.refs.get(revision)

    # The API ----------------------------------------------------------------------------

    def handle(self, handler, send_body: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.requests.append((handler.command, handler.path))
        parts = path.strip("/").split("/")
        if path in OPTIONAL_PATHS:
            return self.reply(handler, 404, send_body=send_body)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            if repo_id not in self.repos:
                return self.error(handler, 401, "RepoNotFound", "Repository not found", send_body)
            if len(rest) in (0, 2) and (not rest or rest[0] == "revision"):
                commit = self.commit_of(rest[1] if rest else "main")
                if commit is None:
                    return self.error(handler, 404, "RevisionNotFound", "Invalid rev id", send_body)
                siblings = [{"rfilename": name} for name in sorted(self.repos[repo_id])]
                return self.reply_json(handler, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                                                 "siblings": siblings}, send_body)
            if len(rest) >= 2 and rest[0] == "tree":
                if self.commit_of(rest[1]) is None:
                    return self.error(handler, 404, "RevisionNotFound", "Invalid rev id", send_body)
                listing = [{"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
                           for name, data in sorted(self.repos[repo_id].items())]
                return self.reply_json(handler, listing, send_body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if repo_id not in self.repos:
                return self.error(handler, 401, "RepoNotFound", "Repository not found", send_body)
            commit = self.commit_of(revision)
            if commit is None:
                return self.error(handler, 404, "RevisionNotFound", "Invalid rev id", send_body)
            data = self.repos[repo_id].get(filename)
            if data is None:
                return self.error(handler, 404, "EntryNotFound", "Entry not found", send_body)
            headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"',
                       "Content-Type": "application/octet-stream"}
            return self.reply(handler, 200, data, headers, send_body)
        self.unknown.append((handler.command, handler.path))
        return self.reply(handler, 404, send_body=send_body)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def tiny_release_files(root: Path, seed: int, guided: bool) -> dict[str, bytes]:
    """The files of a tiny release, as a Hub repo holds them; with a guide of two networks if `guided`."""
    torch.manual_seed(seed)
    cfg = model_config_from_preset("tiny")
    guide = Guide([GuideNetwork(cfg, SymmetrisedDenoiser(cfg).state_dict()) for _ in range(2)], 2.0) if guided else None
    path = save_release(root / "tiny", cfg, SymmetrisedDenoiser(cfg).state_dict(), {4: 1, 5: 1}, "qm9",
                        {"step": 0}, default_steps_cpu=2, guide=guide)
    return {p.name: p.read_bytes() for p in path.iterdir()}


@pytest.fixture(scope="module")
def release_files(tmp_path_factory) -> dict[str, bytes]:
    return tiny_release_files(tmp_path_factory.mktemp("release"), seed=0, guided=False)


@pytest.fixture(scope="module")
def guided_release_files(tmp_path_factory) -> dict[str, bytes]:
    return tiny_release_files(tmp_path_factory.mktemp("guided"), seed=1, guided=True)


@pytest.fixture()
def hub(release_files, guided_release_files):
    repos = {
        "test-org/tiny": {**release_files, ".gitattributes": b"*.safetensors filter=lfs\n"},
        "test-org/tiny-guided": guided_release_files,
        "test-org/not-a-release": {"README.md": b"# nothing here\n"},
    }
    with FakeHub(repos, refs={"main": COMMIT, "v1": COMMIT}) as server:
        yield server


def symdiff(args: list[str], endpoint: str, hf_home: Path, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "SLURM_")) and k != "TRANSFORMERS_OFFLINE"}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), **extra_env)
    return subprocess.run([sys.executable, "-m", "symdiff_cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=180)


def generate_args(model: str, out: str, *more: str) -> list[str]:
    return ["generate", "--n", "3", "--model", model, "--out", out, "--steps", "2", "--batch-size", "2", "-q", *more]


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_download_generate_then_offline_from_cache(hub, tmp_path):
    hf_home = tmp_path / "hf"
    online = symdiff(generate_args("test-org/tiny", "online.sdf"), hub.url, hf_home, tmp_path)
    assert online.returncode == 0, online.stderr
    assert len(read_molecules(str(tmp_path / "online.sdf"))[0]) == 3
    assert hub.unknown == []
    fetched = {path.rsplit("/", 1)[-1] for method, path in hub.requests if method == "GET" and "/resolve/" in path}
    assert fetched == {"model.safetensors", "config.json", "README.md"}  # .gitattributes is not wanted
    snapshot = hf_home / "hub" / "models--test-org--tiny" / "snapshots" / COMMIT
    assert sorted(p.name for p in snapshot.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    # A tag resolves to the same commit.
    tagged = symdiff(generate_args("test-org/tiny@v1", "tagged.sdf"), hub.url, hf_home, tmp_path)
    assert tagged.returncode == 0, tagged.stderr

    # Offline, by environment or by flag: served from the cache without a single request.
    seen = len(hub.requests)
    by_env = symdiff(generate_args("test-org/tiny", "env.sdf"), hub.url, hf_home, tmp_path, HF_HUB_OFFLINE="1")
    by_flag = symdiff(generate_args("test-org/tiny", "flag.sdf", "--offline"), hub.url, hf_home, tmp_path)
    assert by_env.returncode == 0, by_env.stderr
    assert by_flag.returncode == 0, by_flag.stderr
    assert len(hub.requests) == seen
    online_bytes = (tmp_path / "online.sdf").read_bytes()
    assert (tmp_path / "env.sdf").read_bytes() == online_bytes == (tmp_path / "flag.sdf").read_bytes()


@pytest.mark.slow
def test_a_guided_release_downloads_with_its_guide(hub, tmp_path):
    hf_home = tmp_path / "hf"
    guided = symdiff(generate_args("test-org/tiny-guided", "guided.sdf"), hub.url, hf_home, tmp_path)
    assert guided.returncode == 0, guided.stderr
    snapshot = hf_home / "hub" / "models--test-org--tiny-guided" / "snapshots" / COMMIT
    assert sorted(p.name for p in snapshot.iterdir()) == ["README.md", "config.json", "guide-2.safetensors",
                                                          "guide.safetensors", "model.safetensors"]
    unguided = symdiff(generate_args("test-org/tiny-guided", "unguided.sdf", "--guidance", "1", "--offline"),
                       hub.url, hf_home, tmp_path)
    assert unguided.returncode == 0, unguided.stderr
    assert (tmp_path / "guided.sdf").read_bytes() != (tmp_path / "unguided.sdf").read_bytes()


@pytest.mark.slow
def test_missing_repo_revision_and_non_release(hub, tmp_path):
    hf_home = tmp_path / "hf"
    missing = symdiff(generate_args("test-org/missing", "x.sdf"), hub.url, hf_home, tmp_path)
    assert_one_line_error(missing, "Hub model test-org/missing not found")
    bad_revision = symdiff(generate_args("test-org/tiny@nope", "x.sdf"), hub.url, hf_home, tmp_path)
    assert_one_line_error(bad_revision, "revision 'nope' not found")
    not_release = symdiff(generate_args("test-org/not-a-release", "x.sdf"), hub.url, hf_home, tmp_path)
    assert_one_line_error(not_release, "not a symdiff release")
    assert hub.unknown == []
    assert not (tmp_path / "x.sdf").exists()


@pytest.mark.slow
def test_offline_without_cache_fails_cleanly(hub, tmp_path):
    hf_home = tmp_path / "empty-cache"
    by_flag = symdiff(generate_args("test-org/tiny", "x.sdf", "--offline"), hub.url, hf_home, tmp_path)
    assert_one_line_error(by_flag, "not in the local Hugging Face cache")
    assert "--offline" in by_flag.stderr
    by_env = symdiff(generate_args("test-org/tiny", "x.sdf"), hub.url, hf_home, tmp_path, HF_HUB_OFFLINE="1")
    assert_one_line_error(by_env, "HF_HUB_OFFLINE=1")
    assert not any("/api/models" in path or "/resolve/" in path for _, path in hub.requests)
    assert not (tmp_path / "x.sdf").exists()


def test_unreachable_hub_fails_cleanly(tmp_path):
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = symdiff(generate_args("test-org/tiny", "x.sdf"), closed, tmp_path / "hf", tmp_path)
    assert_one_line_error(result, "cannot download Hub model test-org/tiny")
    assert not (tmp_path / "x.sdf").exists()


@pytest.fixture()
def silent_hub():
    """A server that accepts connections and never answers (a hung mirror or proxy)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_a_hub_that_never_answers_fails_after_the_timeout(silent_hub, tmp_path):
    result = symdiff(generate_args("test-org/tiny", "x.sdf"), silent_hub, tmp_path / "hf", tmp_path,
                     HF_HUB_ETAG_TIMEOUT="1")
    assert_one_line_error(result, f"{silent_hub} did not answer within 1 s and the model is not cached")
    assert not (tmp_path / "x.sdf").exists()


@pytest.mark.slow
def test_a_cached_model_is_used_when_the_hub_never_answers(hub, silent_hub, tmp_path):
    hf_home = tmp_path / "hf"
    online = symdiff(generate_args("test-org/tiny", "online.sdf"), hub.url, hf_home, tmp_path)
    assert online.returncode == 0, online.stderr
    cached = symdiff(generate_args("test-org/tiny", "cached.sdf"), silent_hub, hf_home, tmp_path,
                     HF_HUB_ETAG_TIMEOUT="1")
    assert cached.returncode == 0, cached.stderr
    assert (tmp_path / "cached.sdf").read_bytes() == (tmp_path / "online.sdf").read_bytes()
