"""The self-test passes for a correct engine and catches one that computes something else."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from seqinfer.service import engine as engine_module
from seqinfer.service.models.builtin import bench_gru
from seqinfer.service.models.selftest import self_test
from seqinfer.service.models.spec import LoadedModel
from tests.support import make_model


@pytest.mark.parametrize(
    ("kind", "output_kind"),
    [("tokens", "logits"), ("tokens", "probabilities"), ("dense", "values"), ("dense", "hidden")],
)
def test_passes_for_every_model_shape(kind: str, output_kind: str) -> None:
    result = self_test(make_model(kind, output_kind=output_kind, layers=3))
    assert result.passed, result
    assert result.timesteps >= 6 + 2 + 16  # single steps, a short chunk and a long chunk


def test_passes_for_float64_with_a_tight_tolerance() -> None:
    model = make_model("dense")
    model64 = LoadedModel(dataclasses.replace(model.spec, dtype="float64"), dict(model.tensors))
    result = self_test(model64)
    assert result.passed and result.tolerance == 1e-9


def test_passes_for_the_bench_model() -> None:
    assert self_test(bench_gru(), sessions=2).passed


def test_catches_an_engine_with_the_other_update_gate_convention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """h' = z*n + (1-z)*h is a GRU too, just not torch's: the test must tell them apart."""

    def swapped_cell(x, h, w_ih, w_hh, b_ih, b_hh):  # type: ignore[no-untyped-def]
        gi = torch.nn.functional.linear(x, w_ih, b_ih)
        gh = torch.nn.functional.linear(h, w_hh, b_hh)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return z * n + (1 - z) * h

    monkeypatch.setattr(engine_module.torch, "gru_cell", swapped_cell)
    result = self_test(make_model("dense"))
    assert not result.passed
    assert result.max_output_error > 1e-3
