"""Models over real gRPC: an imported PyTorch module, a repository with broken and
versioned models, and the built-in char model."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from seqinfer.cli.main import app
from seqinfer.service.errors import ModelLoadError
from seqinfer.service.models.format import write_model_dir
from seqinfer.service.server import SeqinferServer
from seqinfer.v1 import seqinfer_pb2 as pb
from tests.support import (
    error_reason,
    from_tensor,
    make_model,
    running_server,
    stub,
    to_tensor,
)
from tests.support import test_settings as server_settings

VOCAB, EMB, HIDDEN, LAYERS = 40, 12, 24, 2


class TinyLM(nn.Module):
    """A model as a user writes it: their own names, batch_first, dropout between layers."""

    def __init__(self) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(VOCAB, EMB)
        self.rnn = nn.GRU(EMB, HIDDEN, LAYERS, batch_first=True, dropout=0.2)
        self.dropout = nn.Dropout(0.2)
        self.lm_head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.tok_emb(ids))
        return self.lm_head(self.dropout(out))


def test_imported_pytorch_module_over_grpc_matches_its_forward(tmp_path: Path) -> None:
    torch.manual_seed(7)
    module = TinyLM().eval()
    torch.save(module.state_dict(), tmp_path / "tiny_lm.pt")
    repo = tmp_path / "repo"
    out = repo / "tiny-lm" / "1"
    args = ["model", "import", str(tmp_path / "tiny_lm.pt"), "--out", str(out), "--name", "tiny-lm"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    rng = np.random.default_rng(3)
    # Chunk lengths cover batched single steps, short chunks and the long-chunk path.
    chunks = {
        "a": [rng.integers(0, VOCAB, n) for n in (1, 1, 3, 20, 1, 5)],
        "b": [rng.integers(0, VOCAB, n) for n in (2, 1, 1, 17, 4, 1)],
    }
    served: dict[str, list[np.ndarray]] = {sid: [] for sid in chunks}
    with running_server(model_repository=repo) as server, stub(server.address) as s:
        info = s.GetModel(pb.GetModelRequest(name="tiny-lm"))
        assert (info.input_kind, info.input_size) == (pb.INPUT_KIND_TOKENS, VOCAB)
        assert (info.hidden_size, info.num_layers, info.output_size) == (HIDDEN, LAYERS, VOCAB)
        for i in range(len(chunks["a"])):
            for sid, parts in chunks.items():  # two sessions interleaved
                reply = s.Step(
                    pb.StepRequest(
                        session_id=sid,
                        inputs=to_tensor(parts[i].astype(np.int64)),
                        start=i == 0,
                        model="tiny-lm",
                        output_mode=pb.OUTPUT_MODE_ALL,
                    )
                )
                served[sid].append(from_tensor(reply.outputs))
    for sid, parts in chunks.items():
        ids = torch.from_numpy(np.concatenate(parts)).unsqueeze(0)
        with torch.no_grad():
            expected = module(ids)[0].numpy()
        got = np.concatenate(served[sid])
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5


def _broken_repository(root: Path) -> dict[str, Path]:
    """One good model and one of each broken kind; returns the broken dirs by case."""
    write_model_dir(root / "good", make_model(name="good"))
    cases = {}
    for case in ("truncated", "pickle", "wrong-shape", "missing-key", "unknown-kind"):
        d = root / case
        write_model_dir(d, make_model(name=case))
        cases[case] = d
    weights = cases["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    torch.save(make_model().tensors, cases["pickle"] / "model.safetensors")
    bad = make_model(name="wrong-shape", hidden=12)
    write_model_dir(cases["wrong-shape"], bad)
    config = cases["wrong-shape"] / "model.json"
    config.write_text(config.read_text().replace('"hidden_size": 12', '"hidden_size": 16'))
    from safetensors.torch import load_file, save_file

    missing = cases["missing-key"] / "model.safetensors"
    tensors = load_file(str(missing))
    del tensors["gru.weight_hh_l1"]
    save_file(tensors, str(missing))
    config = cases["unknown-kind"] / "model.json"
    config.write_text(config.read_text().replace('"kind": "dense"', '"kind": "audio"'))
    return cases


def test_server_serves_the_good_models_and_skips_broken_ones(tmp_path: Path) -> None:
    _broken_repository(tmp_path)
    with running_server(model_repository=tmp_path) as server, stub(server.address) as s:
        names = {m.name for m in s.ListModels(pb.ListModelsRequest()).models}
        assert {"good", "pydoc-chars", "bench-gru"} <= names
        assert not names & {"truncated", "pickle", "wrong-shape", "missing-key", "unknown-kind"}
        with pytest.raises(grpc.RpcError) as err:
            s.GetModel(pb.GetModelRequest(name="truncated"))
        assert error_reason(err.value)[1] == "MODEL_NOT_FOUND"


async def test_strict_server_refuses_to_start(tmp_path: Path) -> None:
    _broken_repository(tmp_path)
    server = SeqinferServer(server_settings(model_repository=tmp_path, strict_models=True))
    with pytest.raises(ModelLoadError):
        await server.start()
    await server.stop(0)


def test_two_versions_side_by_side_and_sessions_keep_theirs(tmp_path: Path) -> None:
    v1 = make_model(name="alpha", version="1", seed=1)
    v2 = make_model(name="alpha", version="2", seed=2)
    write_model_dir(tmp_path / "alpha" / "1", v1)
    write_model_dir(tmp_path / "alpha" / "2", v2)
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    with running_server(model_repository=tmp_path) as server, stub(server.address) as s:
        assert s.GetModel(pb.GetModelRequest(name="alpha")).version == "2"
        outs = {}
        for sid, version in (("old", "1"), ("new", "")):
            s.OpenSession(
                pb.OpenSessionRequest(model="alpha", model_version=version, session_id=sid)
            )
            reply = s.Step(pb.StepRequest(session_id=sid, inputs=to_tensor(x)))
            outs[sid] = from_tensor(reply.outputs)
        info = s.GetSession(pb.GetSessionRequest(session_id="old"))
        assert info.model_version == "1"
    from tests.support import reference_run

    np.testing.assert_allclose(outs["old"], reference_run(v1, x)[0][-1], atol=1e-5)
    np.testing.assert_allclose(outs["new"], reference_run(v2, x)[0][-1], atol=1e-5)
    assert np.abs(outs["old"] - outs["new"]).max() > 1e-3
