"""`seqinfer demo`: stream text through a char model on a running server.

The prompt goes to the server one character per step, so the session's GRU
state lives on the server the whole time; then each next character is
sampled here from the logits the server returns and sent back as the next
step. A client-side command: it never imports torch.
"""

from __future__ import annotations

import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import numpy.typing as npt
import typer

from seqinfer.cli.common import AddressOpt
from seqinfer.client.options import DEFAULT_ADDRESS

if TYPE_CHECKING:
    # Imported lazily at run time: every CLI invocation imports this module.
    from seqinfer.service.models.config import CharTokenizer

DEFAULT_PROMPT = "The for statement"


def load_tokenizer(model_dir: Path | None) -> CharTokenizer:
    """The CharTokenizer from a model directory's config, or the built-in model's."""
    from seqinfer.service.models.config import find_config_file, read_config

    if model_dir is None:
        config_path = Path(
            str(files("seqinfer.service.models") / "builtin_data" / "pydoc-chars" / "model.json")
        )
    else:
        found = find_config_file(model_dir)
        if found is None:
            raise ValueError(f"{model_dir}: no model.yaml/model.json")
        config_path = found
    config = read_config(config_path)
    if config.tokenizer is None:
        raise ValueError(f"{config_path}: the model has no character tokenizer")
    return config.tokenizer


def sample_next(
    scores: npt.NDArray[np.floating],
    *,
    temperature: float,
    top_k: int,
    rng: np.random.Generator,
    banned: tuple[int, ...] = (),
    probabilities: bool = False,
) -> int:
    """One id drawn from softmax(scores / temperature) over the top_k scores.

    ``temperature`` <= 0 picks the best id; ``top_k`` <= 0 keeps every id;
    ``probabilities`` says the scores are already softmaxed (log is taken);
    ``banned`` ids (the unknown character) are never drawn.
    """
    logits = np.asarray(scores, dtype=np.float64).copy()
    if probabilities:
        logits = np.log(np.clip(logits, 1e-30, None))
    for i in banned:
        if 0 <= i < logits.size:
            logits[i] = -np.inf
    if temperature <= 0:
        return int(np.argmax(logits))
    if 0 < top_k < logits.size:
        cutoff = np.partition(logits, -top_k)[-top_k]
        logits[logits < cutoff] = -np.inf
    logits = (logits - logits.max()) / temperature
    weights = np.exp(logits)
    return int(rng.choice(logits.size, p=weights / weights.sum()))


def demo(
    address: AddressOpt = DEFAULT_ADDRESS,
    model: Annotated[
        str, typer.Option(help="A token model with a char tokenizer.")
    ] = "pydoc-chars",
    model_version: Annotated[str, typer.Option(help="Version; empty for the newest.")] = "",
    prompt: Annotated[str, typer.Option(help="Text fed to the model first.")] = DEFAULT_PROMPT,
    length: Annotated[int, typer.Option(help="Characters to generate.")] = 400,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")] = 0.7,
    top_k: Annotated[int, typer.Option(help="Sample among the k likeliest; 0 = all.")] = 20,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (repeatable output).")] = None,
    tokenizer_from: Annotated[
        Path | None,
        typer.Option(help="Model directory whose config has the tokenizer [built-in pydoc-chars]."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per call.")] = 10.0,
) -> None:
    """Stream a prompt through the char model on a running server and sample a continuation."""
    from seqinfer.client import Client, SeqinferError
    from seqinfer.service.errors import ModelLoadError

    try:
        tokenizer = load_tokenizer(tokenizer_from)
    except (ValueError, ModelLoadError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    rng = np.random.default_rng(seed)
    ids = tokenizer.encode(prompt) or tokenizer.encode("\n")
    out = sys.stdout
    try:
        with Client(address, timeout=timeout) as client:
            info = client.get_model(model, model_version)
            if info.input_kind != "tokens" or info.input_size != tokenizer.vocab_size:
                typer.echo(
                    f"error: {info.name}:{info.version} takes {info.input_kind} input of "
                    f"{info.input_size}, the tokenizer has {tokenizer.vocab_size} ids",
                    err=True,
                )
                raise typer.Exit(2)
            if info.output_kind not in {"logits", "probabilities"}:
                typer.echo(f"error: {info.name} outputs {info.output_kind}, not scores", err=True)
                raise typer.Exit(2)
            probabilities = info.output_kind == "probabilities"
            started = time.monotonic()
            steps = 0
            with client.session(model, model_version=model_version) as session:
                # The prompt, one character per step: only the last needs outputs.
                scores: npt.NDArray[np.floating] | None = None
                for i, token in enumerate(ids):
                    last = i == len(ids) - 1
                    reply = session.step([token], output_mode="last" if last else "none")
                    steps += 1
                    out.write(tokenizer.decode([token]))
                    out.flush()
                    scores = reply.outputs
                for _ in range(length):
                    assert scores is not None
                    token = sample_next(
                        scores,
                        temperature=temperature,
                        top_k=top_k,
                        rng=rng,
                        banned=(tokenizer.unknown_id,),
                        probabilities=probabilities,
                    )
                    out.write(tokenizer.decode([token]))
                    out.flush()
                    scores = session.step([token]).outputs
                    steps += 1
            elapsed = time.monotonic() - started
    except SeqinferError as exc:
        typer.echo(
            f"\nerror: {exc} (is `seqinfer serve` running at {address}?)",
            err=True,
        )
        raise typer.Exit(1) from exc
    typer.echo(
        f"\n\n[{steps} steps on {info.name}:{info.version} at {address}, "
        f"{1000 * elapsed / max(steps, 1):.1f} ms per step, state held by the server]",
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
