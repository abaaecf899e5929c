#!/usr/bin/env python3
"""How many progress reports per second one Python worker sustains against
a local Herald, with coalescing on and off.

    python bench_reporter.py                       # starts a private server (HERALD_BIN or target/debug/herald)
    python bench_reporter.py --url http://127.0.0.1:4000 --token "$(herald token --sub w --tenant t --role worker)"

For each mode the worker calls ``progress(job, succeeded=i, ...)`` in a loop
for ``--seconds``, then waits for everything to be delivered; reports/s is
calls divided by the time until the last one was stored.

- coalescing on (250 ms window): the worker never waits for Herald; its
  calls fold into a few requests, so the figure is the client's own cost
  per call. The requests/s actually sent is printed beside it.
- coalescing off: every call is one request. The worker keeps at most
  ``--window`` reports outstanding (waiting on the oldest), so none fold
  in a full queue: the figure is Herald's round trip for one job's ordered
  requests (with ``--jobs`` > 1, several jobs' lanes run in parallel).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

import httpx

from herald_client import Reporter

HERE = Path(__file__).resolve().parent


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _worker_token(secret: str) -> str:
    now = int(time.time())
    claims = {"sub": "bench-worker", "role": "worker", "tenant": "bench", "iat": now, "exp": now + 3600}
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


class PrivateServer:
    """A Herald of our own on a free port with a temporary database."""

    def __init__(self, binary: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="herald-bench-py-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.secret = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HERALD_JWT_SECRET": self.secret, "HERALD_LOG": "warn"}
        args = [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--db", os.path.join(self.dir, "herald.db")]
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"herald at {binary} did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def run(url: str, token: str, coalesce: float, seconds: float, jobs: int, window: int) -> Dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    ids = [f"bench-{run_id}-{'on' if coalesce else 'off'}-{j}" for j in range(jobs)]
    with Reporter(url, token, coalesce=coalesce) as r:
        for j in ids:
            r.job_started(j, title="bench").result(30)
        before = r.stats()
        outstanding: Deque[Future[Dict[str, Any]]] = deque()
        calls = 0
        start = time.perf_counter()
        stop_at = start + seconds
        while time.perf_counter() < stop_at:
            for _ in range(64):  # read the clock less often than we report
                calls += 1
                fut = r.progress(ids[calls % jobs], succeeded=calls, stage="benchmarking")
                if not coalesce:
                    outstanding.append(fut)
                    if len(outstanding) >= window:
                        outstanding.popleft().result(30)
        calling = time.perf_counter() - start
        r.flush(timeout=60)
        elapsed = time.perf_counter() - start
        after = r.stats()
        for j in ids:
            r.job_completed(j)
    requests = after.sent - before.sent
    return {
        "mode": f"coalescing {'on' if coalesce else 'off'}",
        "calls": calls,
        "requests": requests,
        "reports_per_s": calls / elapsed,
        "requests_per_s": requests / elapsed,
        "calls_per_s_while_calling": calls / calling,
        "elapsed": elapsed,
    }


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running Herald (default: start a private one)")
    p.add_argument("--token", help="a worker token for --url")
    default_bin = os.environ.get("HERALD_BIN") or str(HERE.parents[1] / "target" / "debug" / "herald")
    p.add_argument("--bin", default=default_bin, help="server binary when no --url (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=3.0, help="reporting time per mode (default: 3)")
    p.add_argument("--jobs", type=int, default=1, help="jobs reported at once (default: 1)")
    p.add_argument("--window", type=int, default=256, help="reports outstanding with coalescing off (default: 256)")
    p.add_argument("--mode", choices=["on", "off", "both"], default="both")
    p.add_argument("--json", action="store_true", help="print one JSON object per mode")
    a = p.parse_args(argv)
    if bool(a.url) != bool(a.token):
        p.error("--url and --token go together")

    server = None
    if a.url:
        url, token = a.url, a.token
    else:
        server = PrivateServer(a.bin)
        url, token = server.url, _worker_token(server.secret)
    try:
        modes: List[Tuple[str, float]] = [("on", 0.25), ("off", 0.0)]
        for name, coalesce in modes:
            if a.mode not in (name, "both"):
                continue
            res = run(url, token, coalesce, a.seconds, a.jobs, a.window)
            if a.json:
                print(json.dumps(res))
            else:
                print(
                    f"{res['mode']:<16} {res['reports_per_s']:>10,.0f} reports/s  "
                    f"({res['calls']:,} calls in {res['elapsed']:.2f} s, "
                    f"{res['requests']:,} requests = {res['requests_per_s']:,.0f} requests/s)"
                )
            sys.stdout.flush()
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
