"""docs/architecture.md stays a true map: every server module is in it, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "service/seqinfer/service"


def test_the_module_map_names_every_module_and_only_real_ones():
    text = (ROOT / "docs/architecture.md").read_text()
    named = set(re.findall(r"`([a-z_]+\.py)`", text))
    # Top-level modules, and those of metrics/ (named in its own row).
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    modules |= {p.name for p in PACKAGE.glob("metrics/*.py") if p.name != "__init__.py"}
    assert modules - named == set(), "modules missing from docs/architecture.md"
    assert named - modules == set(), "docs/architecture.md names modules that do not exist"
    for package in ("metrics", "models"):
        assert f"`{package}/`" in text


# A session's counter, replay record and queue: written by the scheduler alone
# (scheduler.py, and its queues in queues.py), as docs/architecture.md says.
SCHEDULER_OWNED = {
    "step",
    "busy",
    "pending",
    "pending_bytes",
    "close_waiter",
    "last_request_id",
    "last_step_before",
    "last_reply",
}
WRITERS = {"scheduler.py", "queues.py"}


def test_only_the_scheduler_writes_a_sessions_counter_replay_record_and_queue():
    import ast

    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in WRITERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                node.targets if isinstance(node, ast.Assign)
                else [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign)
                else []
            )  # fmt: skip
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr in SCHEDULER_OWNED
                    # A protobuf reply's field of the same name is not a session's.
                    and not (isinstance(target.value, ast.Name) and target.value.id == "response")
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
