"""Run stepclient processes side by side, sample the server's RSS, and sum up.

The overload and isolation scenarios both need load from outside the
server's process (so the server's event loop is not also the client's) and
one account of what came back. Each client process writes its result to a
JSON file; this module starts them by PID, waits, and merges the files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.procs import rss_bytes
from benchmarks.scenarios.stepclient import ClientSpec

REPO = Path(__file__).resolve().parents[2]


def run_clients(specs: list[ClientSpec], timeout: float) -> list[dict[str, Any]]:
    """Run one stepclient process per spec at once; their results, in order."""
    with tempfile.TemporaryDirectory(prefix="seqinfer-clients-") as tmp:
        procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        try:
            for n, spec in enumerate(specs):
                spec_path, out_path = Path(tmp, f"spec{n}.json"), Path(tmp, f"out{n}.json")
                spec_path.write_text(json.dumps(asdict(spec)))
                argv = [sys.executable, "-m", "benchmarks.scenarios.stepclient"]
                proc = subprocess.Popen([*argv, str(spec_path), str(out_path)], cwd=REPO)
                procs.append((proc, out_path))
            deadline = time.monotonic() + timeout
            for proc, _path in procs:
                rc = proc.wait(max(1.0, deadline - time.monotonic()))
                if rc != 0:
                    raise RuntimeError(f"client process {proc.pid} exited with {rc}")
            return [json.loads(path.read_text()) for _proc, path in procs]
        finally:
            for proc, _path in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)


class RssSampler:
    """Peak VmRSS of one process, read from /proc every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def _ms(ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(ns, dtype=np.float64), q) / 1e6) if ns else 0.0


@dataclass
class Merged:
    """What a set of client processes measured together."""

    seconds: float = 0.0
    client_cpu_s: float = 0.0
    sent: int = 0
    unsent: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    accepted_per_s: float = 0.0
    accepted_p50_ms: float = 0.0
    accepted_p99_ms: float = 0.0
    rejected: int = 0
    rejected_p50_ms: float = 0.0
    rejected_p99_ms: float = 0.0
    # p50 and p99 ms of the failed calls, by status code.
    failed_ms: dict[str, tuple[float, float]] = field(default_factory=dict)
    sessions: int = 0
    # acknowledged - applied, summed over sessions where positive: steps lost.
    steps_lost: int = 0
    # applied - acknowledged where positive: replies lost to deadlines...
    applied_unacknowledged: int = 0
    # ...of which resending the same request caught up, and what is left after.
    recovered: int = 0
    lost_after_recovery: int = 0
    unacknowledged_after_recovery: int = 0
    step_mismatches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gaps(acked: dict[str, int], applied: dict[str, int]) -> tuple[int, int]:
    lost = sum(max(0, acked[s] - applied[s]) for s in acked)
    extra = sum(max(0, applied[s] - acked[s]) for s in acked)
    return lost, extra


def merge(parts: list[dict[str, Any]]) -> Merged:
    accepted = [ns for p in parts for ns in p["accepted_ns"]]
    rejected = [ns for p in parts for ns in p["rejected_ns"]]
    codes: dict[str, int] = {}
    for p in parts:
        for code, n in p["codes"].items():
            codes[code] = codes.get(code, 0) + n
    m = Merged(
        seconds=max(p["seconds"] for p in parts),
        client_cpu_s=sum(p["cpu_s"] for p in parts),
        sent=sum(p["sent"] for p in parts),
        unsent=sum(p["unsent"] for p in parts),
        codes=codes,
        accepted=len(accepted),
        accepted_p50_ms=_ms(accepted, 50),
        accepted_p99_ms=_ms(accepted, 99),
        rejected=len(rejected),
        rejected_p50_ms=_ms(rejected, 50),
        rejected_p99_ms=_ms(rejected, 99),
        sessions=sum(len(p["acked"]) for p in parts),
        recovered=sum(p["recovered"] for p in parts),
        step_mismatches=sum(p["step_mismatches"] for p in parts),
    )
    m.accepted_per_s = m.accepted / m.seconds if m.seconds else 0.0
    failed: dict[str, list[int]] = {}
    for p in parts:
        for code, took in p.get("failed_ns", {}).items():
            failed.setdefault(code, []).extend(took)
    m.failed_ms = {code: (_ms(ns, 50), _ms(ns, 99)) for code, ns in sorted(failed.items())}
    for p in parts:
        lost, extra = _gaps(p["acked"], p["applied"])
        m.steps_lost += lost
        m.applied_unacknowledged += extra
        lost, extra = _gaps(p["acked_after_recovery"], p["applied_after_recovery"])
        m.lost_after_recovery += lost
        m.unacknowledged_after_recovery += extra
    return m
