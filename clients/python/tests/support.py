"""Test support: the real Herald binary on a free port with its own
database, HS256 tokens signed here, and reads of the HTTP API to check what
the client did."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import httpx

SECRET = "python-client-test-secret"
ROOT = Path(__file__).resolve().parents[3]
BIN = os.environ.get("HERALD_BIN") or str(ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "debug" / "herald")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign(claims: Dict[str, Any], secret: str = SECRET) -> str:
    """An HS256 JWT over ``claims``."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(sig)}"


def token(
    sub: str = "worker-1", role: str = "worker", tenant: str = "acme", ttl: int = 3600, secret: str = SECRET
) -> str:
    now = int(time.time())
    return sign({"sub": sub, "role": role, "tenant": tenant, "iat": now, "exp": now + ttl}, secret)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Herald:
    """One Herald process. ``restart()`` kills it with SIGKILL and starts it
    again on the same port and database."""

    def __init__(self, extra: Sequence[str] = ()) -> None:
        if not os.access(BIN, os.X_OK):
            raise RuntimeError(f"no server binary at {BIN}: build it (cargo build -p herald) or set HERALD_BIN")
        self.dir = tempfile.mkdtemp(prefix="herald-py-test-")
        self.port = free_port()
        self.extra = list(extra)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._http = httpx.Client(base_url=self.url, timeout=10.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        log = open(os.path.join(self.dir, "server.log"), "ab")
        env = {**os.environ, "HERALD_JWT_SECRET": SECRET, "HERALD_LOG": "warn"}
        args = [BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--db", os.path.join(self.dir, "herald.db")]
        self.proc = subprocess.Popen(args + self.extra, env=env, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"herald exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self._http.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"herald did not become ready:\n{self.log()}")

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def restart(self, pause: float = 1.0) -> None:
        self.kill9()
        time.sleep(pause)
        self.start()

    def stop(self) -> None:
        self.kill9()
        self._http.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return Path(self.dir, "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # The HTTP API, to check what the client did.

    def api(self, method: str, path: str, tok: str, body: Any = None, **params: Any) -> Tuple[int, Any]:
        r = self._http.request(
            method, path, params=params or None, json=body, headers={"Authorization": f"Bearer {tok}"}
        )
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    def job(self, job_id: str, tok: str) -> Dict[str, Any]:
        status, body = self.api("GET", f"/v1/jobs/{job_id}", tok)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    def tasks(self, job_id: str, tok: str) -> List[Dict[str, Any]]:
        status, body = self.api("GET", f"/v1/jobs/{job_id}/tasks", tok)
        assert status == 200, body
        tasks: List[Dict[str, Any]] = body["tasks"]
        return tasks

    def artifacts(self, job_id: str, tok: str) -> List[Dict[str, Any]]:
        status, body = self.api("GET", f"/v1/jobs/{job_id}/artifacts", tok)
        assert status == 200, body
        artifacts: List[Dict[str, Any]] = body["artifacts"]
        return artifacts

    def events(self, topic: str, tok: str, since: int = 0) -> List[Dict[str, Any]]:
        """Every event of ``topic`` after ``since``, from the log."""
        out: List[Dict[str, Any]] = []
        while True:
            status, body = self.api("GET", "/v1/events", tok, topic=topic, since=since, limit=1000)
            assert status == 200, body
            out.extend(body["events"])
            if not body["events"]:
                return out
            since = body["next"]
