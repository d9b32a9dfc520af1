"""The README's Python example runs as written against a real server."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import running_server

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no Python example"
    with running_server() as server:
        code = blocks[0].replace("127.0.0.1:50051", server.address)
        namespace: dict[str, object] = {}
        exec(compile(code, "README.md", "exec"), namespace)
    outputs = namespace["outputs"]
    assert isinstance(outputs, list) and len(outputs) == 100
    assert all(o.shape == (64,) for o in outputs)
