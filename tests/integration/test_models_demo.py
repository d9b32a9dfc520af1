"""`seqinfer serve` (no options but loopback ports and the CPU) serves the built-in
char model, and `seqinfer demo` against it prints text made of real words from the
Python docs."""

from __future__ import annotations

import re
import subprocess

from seqinfer.service.models.chars import pydoc_corpus
from tests.serve_process import CLI, ServeProcess, serve_args

PROMPT = "The for statement"


def test_demo_streams_recognisable_text_from_the_default_model() -> None:
    with ServeProcess(serve_args()) as server:
        result = subprocess.run(
            [*CLI, "demo", "--address", server.address(), "--length", "300", "--seed", "1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        # Stopping is part of the check: a server that ignored SIGTERM would fail here.
        server.terminate()
        server.wait(timeout=30)
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
