"""train-demo on a tiny budget: learns, is reproducible, writes a loadable model with a record."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from seqinfer.cli.main import app
from seqinfer.service.models.chars import ALPHABET, UNKNOWN_ID, pydoc_corpus, pydoc_tokenizer
from seqinfer.service.models.format import read_model_dir
from seqinfer.service.models.selftest import self_test
from seqinfer.service.models.train_demo import TrainConfig, save, train

TINY = TrainConfig(
    embedding_dim=8,
    hidden_size=24,
    num_layers=2,
    batch_size=8,
    seq_len=20,
    epochs=3,
    learning_rate=1e-2,
    corpus_chars=6000,
    threads=1,
)


def test_corpus_is_the_python_docs_and_encodes_without_unknowns() -> None:
    text = pydoc_corpus()
    assert len(text) > 100_000
    assert 'The "for" statement' in text
    ids = pydoc_tokenizer().encode(text)
    # Curly quotes and dashes are normalised to ASCII; almost nothing is unknown.
    assert ids.count(UNKNOWN_ID) < 10
    assert len(ALPHABET) == 96 and pydoc_tokenizer().vocab_size == 97


def test_tiny_training_learns_and_is_reproducible(tmp_path: Path) -> None:
    first = train(TINY, log=lambda _: None)
    second = train(TINY, log=lambda _: None)
    assert first.train_losses == second.train_losses
    assert first.val_losses == second.val_losses
    # Uniform guessing over 97 ids costs ln(97) = 4.57 nats/char.
    assert first.train_losses[-1] < first.train_losses[0] < 4.7
    assert first.val_losses[-1] < 4.0
    save(first, tmp_path / "m")
    loaded = read_model_dir(tmp_path / "m")
    assert loaded.spec.key == "pydoc-chars:1" and loaded.spec.tokenizer == pydoc_tokenizer()
    assert self_test(loaded, sessions=2).passed
    record = json.loads((tmp_path / "m" / "training.json").read_text())
    assert record["config"]["seed"] == TINY.seed
    assert record["val_loss_per_epoch"] == [round(x, 4) for x in first.val_losses]


def test_cli_train_demo_writes_where_told(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "model",
            "train-demo",
            "--out",
            str(tmp_path / "m"),
            "--epochs",
            "1",
            "--corpus-chars",
            "3000",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output and "bytes of weights" in result.output
    assert (tmp_path / "m" / "model.safetensors").is_file()
