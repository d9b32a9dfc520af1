"""The built-in models: the shipped char model and the seeded bench models."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from seqinfer.service.models.builtin import (
    DEFAULT_MODEL_NAME,
    bench_gru,
    bench_gru_large,
    builtin_model_dir,
    builtin_models,
    pydoc_chars,
)
from seqinfer.service.models.chars import pydoc_corpus, pydoc_tokenizer
from seqinfer.service.models.selftest import ReferenceModule
from seqinfer.service.models.spec import InputKind, OutputKind
from seqinfer.service.models.train_demo import TrainConfig


def test_default_model_is_the_shipped_char_model() -> None:
    names = [m.spec.name for m in builtin_models()]
    assert DEFAULT_MODEL_NAME == "pydoc-chars" and names[0] == DEFAULT_MODEL_NAME
    assert set(names) == {"pydoc-chars", "bench-gru", "bench-gru-large"}
    spec = pydoc_chars().spec
    assert spec.input_kind is InputKind.TOKENS and spec.output_kind is OutputKind.LOGITS
    assert spec.input_size == spec.output_size == pydoc_tokenizer().vocab_size
    assert spec.tokenizer == pydoc_tokenizer() and spec.source == "builtin"


def test_shipped_weights_are_under_5_mb_and_match_their_record() -> None:
    directory = builtin_model_dir("pydoc-chars")
    assert (directory / "model.safetensors").stat().st_size < 5_000_000
    record = json.loads((directory / "training.json").read_text())
    # `seqinfer model train-demo` with no options reproduces the shipped run.
    assert record["config"] == dataclasses.asdict(TrainConfig())
    assert len(record["val_loss_per_epoch"]) == TrainConfig().epochs
    assert record["final_val_loss"] < 1.5


@pytest.mark.parametrize("prompt", ["The for statement", "Exceptions are"])
def test_greedy_continuation_is_made_of_real_words(prompt: str) -> None:
    model = pydoc_chars()
    tokenizer = pydoc_tokenizer()
    ref = ReferenceModule(model, torch.float32)
    with torch.no_grad():
        logits, state = ref.gru(ref.embedding(torch.tensor([tokenizer.encode(prompt)])))
        ids = []
        for _ in range(120):
            token = int(ref.head(logits[0, -1]).argmax())
            ids.append(token)
            logits, state = ref.gru(ref.embedding(torch.tensor([[token]])), state)
    text = tokenizer.decode(ids)
    vocabulary = set(re.findall(r"[a-z]+", pydoc_corpus().lower()))
    words = re.findall(r"[a-z]+", text.lower())
    assert len(words) >= 10
    assert sum(w in vocabulary for w in words) / len(words) >= 0.8, text


def test_bench_models_keep_their_seeds() -> None:
    # Values recorded from the seeded draw; a change here changes every benchmark.
    for model, first, total in (
        (bench_gru(), -0.06075723469257355, -15.33865424245596),
        (bench_gru_large(), -0.02548350766301155, -40.53367632627487),
    ):
        assert float(model.tensors["gru.weight_ih_l0"][0, 0]) == first
        assert float(sum(t.double().sum() for t in model.tensors.values())) == pytest.approx(
            total, abs=1e-9
        )
