"""`seqinfer serve` (no options but ports) serves the built-in char model, and
`seqinfer demo` against it prints text made of real words from the Python docs."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from seqinfer.service.models.chars import pydoc_corpus

CLI = [sys.executable, "-c", "from seqinfer.cli.main import main; main()"]
PROMPT = "The for statement"


def _serve() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*CLI, "serve", "--port", "0", "--metrics-port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("seqinfer: serving on "):
            return process, line.split()[-1]
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("server did not start")


def test_demo_streams_recognisable_text_from_the_default_model() -> None:
    process, address = _serve()
    try:
        result = subprocess.run(
            [*CLI, "demo", "--address", address, "--length", "300", "--seed", "1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(PROMPT)
    assert "pydoc-chars:1" in result.stderr and "state held by the server" in result.stderr
    continuation = result.stdout[len(PROMPT) :]
    assert len(continuation.strip()) > 200
    # Noise would be mostly non-words; the model writes mostly real ones.
    vocabulary = set(re.findall(r"[a-z]+", pydoc_corpus().lower()))
    words = [w for w in re.findall(r"[A-Za-z]+", continuation) if len(w) >= 3]
    known = sum(w.lower() in vocabulary for w in words)
    assert len(words) >= 25
    assert known / len(words) >= 0.6, continuation
