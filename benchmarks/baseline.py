"""A second seqinfer tree, checked out at a git ref, for ``--baseline-ref``.

A regression check compares this tree's server with an earlier commit's.
Figures from two runs on a shared 2-core machine differ by more than the
regressions worth catching, so the earlier commit's server runs in the same
run, its cells interleaved with the current tree's: the check is then a
ratio of neighbours. The commit is checked out with ``git worktree add
--detach`` into a temporary folder (removed afterwards, also when the run
fails) and served with the same interpreter and flags as the current tree,
its own ``proto``, ``service`` and ``client`` folders first on PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# The top-level folders a seqinfer tree's packages live in (pyproject's packages.find).
SOURCE_DIRS = ("proto", "service", "client")
# A module of the server; where the baseline's interpreter finds it shows
# whether PYTHONPATH won over the current tree's (editable) install.
PROBE_MODULE = "seqinfer.service.server"


@dataclass
class BaselineTree:
    ref: str
    commit: str
    subject: str
    path: Path
    # Where the baseline environment imports PROBE_MODULE from.
    module_origin: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


def resolve(repo: Path, ref: str) -> tuple[str, str]:
    """(full commit id, subject line) of `ref`; RuntimeError if it names no commit."""
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    return commit, _git(repo, "log", "-1", "--format=%s", commit)


def pythonpath(root: Path, inherited: str | None = None) -> str:
    """PYTHONPATH that puts `root`'s packages before anything else."""
    parts = [str(root / d) for d in SOURCE_DIRS]
    if inherited:
        parts.append(inherited)
    return os.pathsep.join(parts)


def server_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a `seqinfer serve` of the tree at `root` runs with."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = pythonpath(root, os.environ.get("PYTHONPATH"))
    return env


def module_origin(python: str, root: Path) -> str:
    """The file `python` imports PROBE_MODULE from, in `root`'s server environment."""
    code = f"import importlib.util as u; print(u.find_spec({PROBE_MODULE!r}).origin)"
    done = subprocess.run(
        [python, "-c", code],
        cwd=root,
        env=server_env(root),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"baseline tree at {root}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(repo: Path, ref: str, python: str) -> Iterator[BaselineTree]:
    """Check `ref` out beside `repo` for the block's duration; remove it afterwards.

    Fails (before the block) if the checked-out tree's server module would
    not be imported from that tree.
    """
    commit, subject = resolve(repo, ref)
    path = Path(tempfile.mkdtemp(prefix="seqinfer-baseline-"))
    added = False
    try:
        _git(repo, "worktree", "add", "--detach", str(path), commit)
        added = True
        tree = BaselineTree(ref, commit, subject, path)
        tree.module_origin = module_origin(python, path)
        if not Path(tree.module_origin).resolve().is_relative_to(path.resolve()):
            raise RuntimeError(
                f"the baseline environment imports {PROBE_MODULE} from {tree.module_origin}, "
                f"not from the checkout at {path}"
            )
        yield tree
    finally:
        if added:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _git(repo, "worktree", "remove", "--force", str(path))
        shutil.rmtree(path, ignore_errors=True)
        # Drops the worktree's record if `remove` could not (e.g. a killed git).
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            _git(repo, "worktree", "prune")
