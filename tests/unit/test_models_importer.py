"""Importing checkpoints written by plain PyTorch code into model directories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from seqinfer.cli.main import app
from seqinfer.service.engine import EngineItem, GRUEngine, OutputMode
from seqinfer.service.errors import ModelLoadError
from seqinfer.service.models.format import read_model_dir
from seqinfer.service.models.importer import (
    build_model,
    load_checkpoint,
    plan_import,
)
from seqinfer.service.models.spec import InputKind, OutputKind

runner = CliRunner()


class CharModel(nn.Module):
    """What a user writes: names of their choosing, batch_first, a dropout."""

    def __init__(self, vocab: int = 30, emb: int = 12, hidden: int = 20, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = nn.GRU(emb, hidden, layers, batch_first=True, dropout=0.1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(ids))
        return self.fc(self.drop(out))


def served_outputs(model_dir: Path, inputs: torch.Tensor) -> torch.Tensor:
    """The imported model's outputs for [B, T] inputs from the server's own engine.

    Each row is a session in a state slab, stepped the three ways the engine
    computes: one timestep at a time, short chunks (batched together with
    other sessions) and one long chunk through the full-sequence path. What is
    compared with the user's module is what a client would receive.
    """
    engine = GRUEngine(read_model_dir(model_dir), torch.device("cpu"))
    batch, t = inputs.shape[0], inputs.shape[1]
    assert t >= engine.long_chunk_threshold, "too short to reach the long-chunk path"
    ways = [[1] * t, [3, 3, t - 6], [t]]
    plans = [ways[b % len(ways)] for b in range(batch)]
    slab = engine.new_slab(batch + 1)
    served: list[list[np.ndarray]] = [[] for _ in range(batch)]
    for r in range(max(len(plan) for plan in plans)):
        rows = [b for b in range(batch) if r < len(plans[b])]
        items = []
        for b in rows:
            start = sum(plans[b][:r])
            chunk = inputs[b, start : start + plans[b][r]].numpy()
            # Slot b + 1: a slot-indexing slip shows up as a mismatch.
            items.append(EngineItem(b + 1, chunk, output_mode=OutputMode.ALL))
        for b, result in zip(rows, engine.run(slab, items), strict=True):
            assert result.outputs is not None
            served[b].append(result.outputs.copy())
    return torch.from_numpy(np.stack([np.concatenate(parts) for parts in served]))


def test_module_checkpoint_imports_and_matches_forward(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = CharModel().eval()
    torch.save(module.state_dict(), tmp_path / "ckpt.pt")
    result = runner.invoke(
        app,
        [
            "model",
            "import",
            str(tmp_path / "ckpt.pt"),
            "--out",
            str(tmp_path / "m"),
            "--name",
            "chars",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "embed.weight" in result.output and "-> embedding.weight" in result.output
    assert "self-test ok" in result.output
    spec = read_model_dir(tmp_path / "m").spec
    assert spec.input_kind is InputKind.TOKENS and spec.output_kind is OutputKind.LOGITS
    assert (spec.input_size, spec.embedding_dim, spec.hidden_size, spec.num_layers) == (
        30,
        12,
        20,
        2,
    )
    ids = torch.randint(0, 30, (3, 17))
    with torch.no_grad():
        expected = module(ids)
    torch.testing.assert_close(served_outputs(tmp_path / "m", ids), expected, atol=1e-5, rtol=0)


def test_bare_gru_state_dict_imports_as_dense_hidden(tmp_path: Path) -> None:
    gru = nn.GRU(5, 9, 3)
    torch.save(gru.state_dict(), tmp_path / "gru.pt")
    out = tmp_path / "g"
    result = runner.invoke(
        app, ["model", "import", str(tmp_path / "gru.pt"), "-o", str(out), "--name", "bare"]
    )
    assert result.exit_code == 0, result.output
    spec = read_model_dir(out).spec
    assert spec.input_kind is InputKind.DENSE and spec.output_kind is OutputKind.HIDDEN
    x = torch.randn(3, 17, 5)
    with torch.no_grad():
        expected, _ = gru(x.transpose(0, 1))
    torch.testing.assert_close(served_outputs(out, x), expected.transpose(0, 1), atol=1e-5, rtol=0)


def test_dense_module_with_head_and_wrapped_checkpoint(tmp_path: Path) -> None:
    class Regressor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.GRU(4, 8, 1)
            self.out = nn.Linear(8, 2)

    module = Regressor()
    torch.save({"epoch": 3, "model_state_dict": module.state_dict()}, tmp_path / "c.pt")
    state = load_checkpoint(tmp_path / "c.pt")
    plan = plan_import(state)
    assert plan.gru_prefix == "encoder." and plan.embedding_prefix is None
    assert plan.head_prefix == "out."
    model = build_model(state, plan, name="reg")
    assert model.spec.output_kind is OutputKind.VALUES and model.spec.out_features == 2


def test_ambiguous_heads_need_a_flag(tmp_path: Path) -> None:
    state = {f"core.{k}": v for k, v in nn.GRU(4, 8).state_dict().items()}
    state.update({"a.weight": torch.zeros(3, 8), "a.bias": torch.zeros(3)})
    state.update({"b.weight": torch.zeros(5, 8), "b.bias": torch.zeros(5)})
    with pytest.raises(ModelLoadError, match="--head"):
        plan_import(state)
    plan = plan_import(state, head="b")
    assert plan.head_prefix == "b." and plan.unused == ["a.bias", "a.weight"]
    with pytest.raises(ModelLoadError, match=r"tensors not part of .*a\.bias"):
        build_model(state, plan, name="x")
    assert build_model(state, plan, name="x", allow_unused=True).spec.output_size == 5


def test_name_hints_break_ties(tmp_path: Path) -> None:
    state = {f"gru.{k}": v for k, v in nn.GRU(4, 8).state_dict().items()}
    state.update({"value.weight": torch.zeros(1, 8), "value.bias": torch.zeros(1)})
    state.update({"policy_head.weight": torch.zeros(5, 8), "policy_head.bias": torch.zeros(5)})
    assert plan_import(state).head_prefix == "policy_head."


def test_extra_layers_are_refused_by_default(tmp_path: Path) -> None:
    state = {f"gru.{k}": v for k, v in nn.GRU(4, 8).state_dict().items()}
    state.update({"norm.weight": torch.ones(8), "norm.bias": torch.zeros(8)})
    plan = plan_import(state)
    with pytest.raises(ModelLoadError, match=r"norm\.weight"):
        build_model(state, plan, name="x")


def test_bidirectional_gru_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="bidirectional"):
        plan_import(nn.GRU(4, 8, bidirectional=True).state_dict())


def test_checkpoint_without_gru_lists_keys(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no nn.GRU parameters.*fc.weight"):
        plan_import(nn.Sequential(nn.Linear(3, 4)).state_dict() | {"fc.weight": torch.zeros(2, 2)})


def test_lstm_is_not_mistaken_for_a_gru(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"looks like an nn\.LSTM"):
        plan_import({f"lstm.{k}": v for k, v in nn.LSTM(4, 8).state_dict().items()})


def test_two_grus_need_a_flag(tmp_path: Path) -> None:
    state = {f"enc.{k}": v for k, v in nn.GRU(4, 8).state_dict().items()}
    state |= {f"dec.{k}": v for k, v in nn.GRU(8, 8).state_dict().items()}
    with pytest.raises(ModelLoadError, match="several GRU-like"):
        plan_import(state)
    assert plan_import(state, gru="dec", use_head=False).gru_prefix == "dec."


class NotATensor:
    """A pickled object a weights_only load must refuse."""


def test_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": nn.GRU(2, 3).state_dict(), "obj": NotATensor()}, tmp_path / "x.pt")
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        load_checkpoint(tmp_path / "x.pt")


def test_whole_module_pickle_is_refused(tmp_path: Path) -> None:
    torch.save(CharModel(), tmp_path / "module.pt")
    result = runner.invoke(
        app,
        ["model", "import", str(tmp_path / "module.pt"), "-o", str(tmp_path / "o"), "--name", "x"],
    )
    assert result.exit_code == 1
    assert "save module.state_dict()" in result.output


def test_safetensors_checkpoint_is_accepted(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file(CharModel().state_dict(), str(tmp_path / "c.safetensors"))
    plan = plan_import(load_checkpoint(tmp_path / "c.safetensors"))
    assert plan.embedding_prefix == "embed." and plan.head_prefix == "fc."


def test_import_refuses_non_empty_out_without_force(tmp_path: Path) -> None:
    torch.save(nn.GRU(2, 3).state_dict(), tmp_path / "g.pt")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    args = ["model", "import", str(tmp_path / "g.pt"), "-o", str(tmp_path / "o"), "--name", "g"]
    assert runner.invoke(app, args).exit_code == 2
    assert runner.invoke(app, [*args, "--force", "--no-check"]).exit_code == 0


def test_output_kind_flag_and_dtype(tmp_path: Path) -> None:
    torch.save(CharModel().double().state_dict(), tmp_path / "c.pt")
    out = tmp_path / "p"
    args = ["model", "import", str(tmp_path / "c.pt"), "-o", str(out), "--name", "p"]
    result = runner.invoke(
        app, [*args, "--output-kind", "probabilities", "--config-format", "json"]
    )
    assert result.exit_code == 0, result.output
    spec = read_model_dir(out).spec
    assert spec.output_kind is OutputKind.PROBABILITIES and spec.dtype == "float64"
    assert (out / "model.json").is_file()


def test_check_command_reports_a_broken_directory(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    result = runner.invoke(app, ["model", "check", str(tmp_path / "m")])
    assert result.exit_code == 1 and "no config file" in result.output
