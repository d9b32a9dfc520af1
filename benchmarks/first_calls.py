"""Where a fresh ``Client(addresses=...)`` sends its first calls, with and without its wait.

python -m benchmarks.first_calls --trials 10 --calls 8

One `serve --frontends 2`; each trial makes a new client over both front
ends' own ports and opens ``--calls`` sessions, alternating between a client
that sends at once (``ready_timeout=0``: gRPC round_robin over whatever is
connected) and one that first waits until both addresses answered (the
default). Each front end's OpenSession count comes from the engine's scrape
(the front ends' own call counters), so nothing on the client side guesses
which front end answered. Prints, per kind, each trial's split and how many
trials were exactly even.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.procs import ServerProcess, free_port, load_average, running
from seqinfer.client import Client

FRONT = re.compile(r"seqinfer: front end (\d+) on port (\d+)")


def _counts(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        s.labels["frontend"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "seqinfer_grpc_requests_total"
        and s.labels.get("method") == "OpenSession"
        and s.labels.get("code") == "OK"
    }


def _settled(url: str, total: float, timeout: float = 30) -> dict[str, float]:
    """The scrape once it shows ``total`` calls (front ends push about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = _counts(url)
        if sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_calls", description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--calls", type=int, default=8)
    args = parser.parse_args()
    metrics = free_port()
    argv = [sys.executable, "-c", "from seqinfer.cli.main import main; main()", "serve"]
    argv += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", str(metrics)]
    argv += ["--device", "cpu", "--frontends", "2"]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp, "serve.log")
        with running(ServerProcess("serve", argv, log, env=dict(os.environ))) as server:
            # The log appears once the output pump has opened it.
            server.wait_ready(
                lambda: log.exists() and len(dict(FRONT.findall(log.read_text()))) == 2, 120
            )
            ports = dict(FRONT.findall(log.read_text()))
            addresses = [f"127.0.0.1:{ports[i]}" for i in ("0", "1")]
            url = f"http://127.0.0.1:{metrics}/metrics"
            print(f"load average before: {load_average()}")
            splits: dict[str, list[tuple[int, int]]] = {"no wait": [], "wait (default)": []}
            total, before = 0.0, {"0": 0.0, "1": 0.0}
            for _ in range(args.trials):
                for kind, ready_timeout in (("no wait", 0.0), ("wait (default)", 5.0)):
                    with Client(addresses=addresses, timeout=30, ready_timeout=ready_timeout) as c:
                        for _ in range(args.calls):
                            c.open_session("bench-gru")
                    total += args.calls
                    now = _settled(url, total)
                    got = tuple(int(now.get(i, 0) - before.get(i, 0)) for i in ("0", "1"))
                    splits[kind].append((got[0], got[1]))
                    before = {i: now.get(i, 0.0) for i in ("0", "1")}
            print(f"load average after: {load_average()}")
    even = (args.calls // 2, args.calls - args.calls // 2)
    for kind, runs in splits.items():
        hits = sum(1 for r in runs if r == even or r[::-1] == even)
        print(f"{kind}: {hits}/{len(runs)} trials even; splits {runs}")


if __name__ == "__main__":
    main()
