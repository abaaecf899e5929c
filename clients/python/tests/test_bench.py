"""bench_reporter.py works: a short run of both modes against the module's server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import Herald

BENCH = Path(__file__).resolve().parents[1] / "bench_reporter.py"


def test_bench_smoke(herald: Herald, worker: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--url", herald.url, "--token", worker, "--seconds", "0.5", "--json"],
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
    ).stdout
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["mode"] for r in results] == ["coalescing on", "coalescing off"]
    on, off = results
    assert on["reports_per_s"] > 0 and off["reports_per_s"] > 0
    # Folded calls: far fewer requests than calls with coalescing, one each without.
    assert on["requests"] < on["calls"]
    assert off["requests"] == off["calls"]
