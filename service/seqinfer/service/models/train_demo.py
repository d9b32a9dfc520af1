"""Training the built-in ``pydoc-chars`` model (`seqinfer model train-demo`).

A character-level GRU language model on CPython's documentation topics
(``pydoc_data.topics``), so that it trains offline from nothing but the
Python installation. Fixed seed, fixed hyperparameters, fixed thread count:
the same command on the same Python and torch versions reproduces the
shipped weights' loss figures (bit-exactness across CPUs is not promised,
since float reductions may differ).

Training is truncated backpropagation through time over ``batch_size``
contiguous streams of the text with the hidden state carried from one
window to the next, which is how the server uses the model: one long
stream per session, its state kept between steps.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from seqinfer.service.models.chars import pydoc_corpus, pydoc_tokenizer
from seqinfer.service.models.format import write_model_dir
from seqinfer.service.models.spec import InputKind, LoadedModel, ModelSpec, OutputKind

MODEL_NAME = "pydoc-chars"
MODEL_VERSION = "1"


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run; recorded next to the weights."""

    seed: int = 20260206
    embedding_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    batch_size: int = 128
    seq_len: int = 50
    epochs: int = 5
    learning_rate: float = 3e-3
    final_learning_rate: float = 3e-4
    grad_clip: float = 1.0
    val_fraction: float = 0.05
    threads: int = 2
    # Use only the first N characters of the corpus (tests train on a sliver).
    corpus_chars: int | None = None


@dataclass
class TrainResult:
    model: LoadedModel
    config: TrainConfig
    train_losses: list[float] = field(default_factory=list)  # mean per epoch, nats/char
    val_losses: list[float] = field(default_factory=list)  # after each epoch, nats/char
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # summed over threads; steadier than wall time on a busy machine
    corpus_chars: int = 0

    def record(self) -> dict[str, object]:
        """What docs/models.md quotes: config, losses, environment."""
        return {
            "model": f"{MODEL_NAME}:{MODEL_VERSION}",
            "command": "seqinfer model train-demo",
            "config": asdict(self.config),
            "corpus": "pydoc_data.topics.topics, sorted keys, joined by blank lines",
            "corpus_chars": self.corpus_chars,
            "train_loss_per_epoch": [round(x, 4) for x in self.train_losses],
            "val_loss_per_epoch": [round(x, 4) for x in self.val_losses],
            "final_val_loss": round(self.val_losses[-1], 4) if self.val_losses else None,
            "seconds": round(self.seconds, 1),
            "cpu_seconds": round(self.cpu_seconds, 1),
            "python": platform.python_version(),
            "torch": torch.__version__,
        }


class CharGRU(nn.Module):
    """Embedding -> GRU -> Linear, named exactly as the model format expects."""

    def __init__(self, vocab: int, cfg: TrainConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, cfg.embedding_dim)
        self.gru = nn.GRU(cfg.embedding_dim, cfg.hidden_size, cfg.num_layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden_size, vocab)

    def forward(
        self, ids: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        top, state = self.gru(self.embedding(ids), state)
        return self.head(top), state


def _streams(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """[batch, n] contiguous slices of ``ids``; stream b continues where b ended last window."""
    n = ids.numel() // batch
    return ids[: n * batch].view(batch, n)


def _evaluate(model: CharGRU, streams: torch.Tensor, seq_len: int, vocab: int) -> float:
    """Mean next-character cross-entropy over ``streams``, state carried across windows."""
    model.eval()
    total, count = 0.0, 0
    state = None
    with torch.no_grad():
        for start in range(0, streams.shape[1] - 1, seq_len):
            x = streams[:, start : start + seq_len]
            y = streams[:, start + 1 : start + seq_len + 1]
            x = x[:, : y.shape[1]]
            logits, state = model(x, state)
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, vocab), y.reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += y.numel()
    model.train()
    return total / max(count, 1)


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train the char model from ``cfg``; deterministic for a given seed and thread count."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = pydoc_tokenizer()
    vocab = tokenizer.vocab_size
    text = pydoc_corpus()
    if cfg.corpus_chars is not None:
        text = text[: cfg.corpus_chars]
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    split = int(ids.numel() * (1 - cfg.val_fraction))
    train_streams = _streams(ids[:split], cfg.batch_size)
    val_streams = _streams(ids[split:], max(1, min(16, (ids.numel() - split) // (cfg.seq_len + 1))))
    windows = max(1, (train_streams.shape[1] - 1) // cfg.seq_len)
    total_steps = windows * cfg.epochs

    model = CharGRU(vocab, cfg)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    result = TrainResult(model=_to_loaded(model, cfg, vocab), config=cfg, corpus_chars=len(text))
    log(
        f"corpus {len(text)} chars ({split} train, {ids.numel() - split} validation); "
        f"{windows} windows of {cfg.batch_size}x{cfg.seq_len} per epoch, {cfg.epochs} epochs"
    )
    started = time.monotonic()
    cpu_started = time.process_time()
    step = 0
    for epoch in range(cfg.epochs):
        state: torch.Tensor | None = None
        epoch_loss = 0.0
        for w in range(windows):
            start = w * cfg.seq_len
            x = train_streams[:, start : start + cfg.seq_len]
            y = train_streams[:, start + 1 : start + cfg.seq_len + 1]
            x = x[:, : y.shape[1]]  # streams shorter than a window (tiny corpora)
            # Cosine decay from learning_rate to final_learning_rate over the run.
            progress = step / max(total_steps - 1, 1)
            lr = cfg.final_learning_rate + 0.5 * (cfg.learning_rate - cfg.final_learning_rate) * (
                1 + math.cos(math.pi * progress)
            )
            for group in optimiser.param_groups:
                group["lr"] = lr
            logits, state = model(x, state)
            # Truncated BPTT: keep the state's value, drop its history.
            state = state.detach()
            loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimiser.step()
            epoch_loss += loss.item()
            step += 1
        train_loss = epoch_loss / windows
        val_loss = _evaluate(model, val_streams, cfg.seq_len, vocab)
        result.train_losses.append(train_loss)
        result.val_losses.append(val_loss)
        log(
            f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f}, "
            f"val loss {val_loss:.4f} nats/char, {time.monotonic() - started:.0f} s"
        )
    result.seconds = time.monotonic() - started
    result.cpu_seconds = time.process_time() - cpu_started
    result.model = _to_loaded(model, cfg, vocab)
    return result


def _to_loaded(model: CharGRU, cfg: TrainConfig, vocab: int) -> LoadedModel:
    spec = ModelSpec(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        input_kind=InputKind.TOKENS,
        input_size=vocab,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        output_kind=OutputKind.LOGITS,
        output_size=vocab,
        embedding_dim=cfg.embedding_dim,
        description=(
            "character-level GRU language model trained on CPython's documentation "
            "topics (pydoc_data); token ids from the config's tokenizer"
        ),
        tokenizer=pydoc_tokenizer(),
    )
    tensors = {name: t.detach().clone() for name, t in model.state_dict().items()}
    return LoadedModel(spec, tensors)


def save(result: TrainResult, directory: Path) -> Path:
    """Write the trained model directory plus ``training.json`` (the run's record)."""
    record = json.dumps(result.record(), indent=2) + "\n"
    return write_model_dir(directory, result.model, extra_files={"training.json": record})
