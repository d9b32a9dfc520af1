"""The committed stubs are exactly what the pinned grpcio-tools generates from the .proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_up_to_date(tmp_path: Path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    subprocess.run(
        ["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)],
        check=True,
        env=env,
        capture_output=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "nothing generated"
    for relative in generated:
        committed = ROOT / "proto" / relative
        assert committed.exists(), f"{relative} is generated but not committed"
        assert committed.read_text() == (tmp_path / relative).read_text(), (
            f"{relative} differs from a fresh generation: run `make proto` and commit"
        )


def test_every_enum_starts_with_unspecified():
    from seqinfer.v1 import seqinfer_pb2

    for enum in seqinfer_pb2.DESCRIPTOR.enum_types_by_name.values():
        assert enum.values[0].number == 0
        assert enum.values[0].name.endswith("_UNSPECIFIED"), enum.name
