"""`seqinfer model ...`: import a PyTorch checkpoint, check a model, train the demo model.

torch is imported inside the commands, so that `seqinfer --help` and the
client commands start without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from seqinfer.cli.common import TYPER_SETTINGS

if TYPE_CHECKING:
    from seqinfer.service.models.spec import LoadedModel

model_app = typer.Typer(
    name="model",
    help="Model directories: import from PyTorch, validate, train the demo model.",
    no_args_is_help=True,
    **TYPER_SETTINGS,
)

_OUTPUT_KINDS = ("logits", "probabilities", "values", "hidden")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@model_app.command("import")
def import_cmd(
    checkpoint: Annotated[
        Path, typer.Argument(help="state_dict saved with torch.save, or a .safetensors file.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    name: Annotated[str, typer.Option(help="Model name clients ask for.")],
    version: Annotated[str, typer.Option(help="Model version label.")] = "1",
    gru: Annotated[
        str | None, typer.Option(help="Prefix of the nn.GRU's parameters, e.g. 'rnn' [detected].")
    ] = None,
    embedding: Annotated[
        str | None, typer.Option(help="Prefix of the nn.Embedding, e.g. 'embed' [detected].")
    ] = None,
    head: Annotated[
        str | None, typer.Option(help="Prefix of the nn.Linear head, e.g. 'fc' [detected].")
    ] = None,
    input_kind: Annotated[
        str | None,
        typer.Option(help="tokens | dense [tokens if an embedding is found, else dense]."),
    ] = None,
    no_head: Annotated[bool, typer.Option("--no-head", help="Serve the top hidden state.")] = False,
    output_kind: Annotated[
        str | None,
        typer.Option(help="logits | probabilities | values | hidden [by input kind and head]."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32 | float64 | float16 | bfloat16 [checkpoint's].")
    ] = None,
    description: Annotated[str, typer.Option(help="Shown by GetModel.")] = "",
    allow_unused: Annotated[
        bool,
        typer.Option(help="Import even if the checkpoint has tensors outside embedding/GRU/head."),
    ] = False,
    config_format: Annotated[str, typer.Option(help="yaml | json.")] = "yaml",
    check: Annotated[bool, typer.Option(help="Run the self-test on the result.")] = True,
    force: Annotated[bool, typer.Option(help="Write into a non-empty --out.")] = False,
) -> None:
    """Convert a PyTorch checkpoint of a module with an nn.GRU into a model directory.

    The checkpoint is read with torch.load(weights_only=True): plain tensors
    only, nothing is unpickled. Parameter roles are found by name and shape;
    name them with --gru/--embedding/--head when that is ambiguous.
    """
    from seqinfer.service.errors import ModelLoadError
    from seqinfer.service.models.format import read_model_dir, write_model_dir
    from seqinfer.service.models.importer import build_model, load_checkpoint, plan_import
    from seqinfer.service.models.spec import InputKind, OutputKind

    if config_format not in {"yaml", "json"}:
        raise _fail("--config-format must be yaml or json", 2)
    if input_kind is not None and input_kind not in {"tokens", "dense"}:
        raise _fail(f"--input-kind must be tokens or dense, not {input_kind!r}", 2)
    if output_kind is not None and output_kind not in _OUTPUT_KINDS:
        raise _fail(f"--output-kind must be one of {', '.join(_OUTPUT_KINDS)}", 2)
    if out.exists() and any(out.iterdir()) and not force:
        raise _fail(f"{out} is not empty (use --force to overwrite)", 2)
    try:
        state = load_checkpoint(checkpoint)
        plan = plan_import(
            state,
            gru=gru,
            embedding=embedding,
            head=head,
            input_kind=InputKind(input_kind) if input_kind else None,
            use_head=False if no_head or output_kind == "hidden" else None,
        )
        model = build_model(
            state,
            plan,
            name=name,
            version=version,
            output_kind=OutputKind(output_kind) if output_kind else None,
            dtype=dtype,
            description=description,
            allow_unused=allow_unused,
            origin=str(checkpoint),
        )
        for canonical, key in plan.mapping.items():
            typer.echo(f"  {key:<40} -> {canonical}")
        for note in plan.notes:
            typer.echo(f"  note: {note}")
        if plan.unused:
            typer.echo(f"  ignored (--allow-unused): {', '.join(plan.unused)}")
        write_model_dir(out, model, config_filename=f"model.{config_format}")
        # Reload what was written, so the check covers the files, not memory.
        written = read_model_dir(out)
    except (ModelLoadError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    spec = written.spec
    typer.echo(
        f"wrote {out}: {spec.key}, {spec.input_kind.value} input {spec.input_size}, "
        f"GRU {spec.hidden_size}x{spec.num_layers}, {spec.output_kind.value} {spec.out_features}"
    )
    if check:
        _run_self_test(written)


def _run_self_test(model: LoadedModel) -> None:
    from seqinfer.service.models.selftest import self_test

    result = self_test(model)
    verdict = "ok" if result.passed else "FAILED"
    typer.echo(
        f"self-test {verdict}: served step path vs torch.nn.GRU over {result.sessions} sessions "
        f"x {result.timesteps} steps; max relative error outputs {result.max_output_error:.2e}, "
        f"states {result.max_state_error:.2e} (tolerance {result.tolerance:.0e})"
    )
    if not result.passed:
        raise typer.Exit(1)


@model_app.command("check")
def check_cmd(
    directory: Annotated[Path, typer.Argument(help="Model directory (with model.yaml/json).")],
) -> None:
    """Validate a model directory and check the served step path against torch.nn.GRU."""
    from seqinfer.service.errors import ModelLoadError
    from seqinfer.service.models.format import read_model_dir

    try:
        model = read_model_dir(directory)
    except ModelLoadError as exc:
        raise _fail(str(exc)) from exc
    spec = model.spec
    size = sum(t.numel() for t in model.tensors.values())
    typer.echo(
        f"{spec.key}: {spec.input_kind.value} input {spec.input_size}, "
        f"GRU {spec.hidden_size}x{spec.num_layers}, {spec.output_kind.value} "
        f"{spec.out_features}, {spec.dtype}, {size} parameters"
    )
    _run_self_test(model)


@model_app.command("train-demo")
def train_demo_cmd(
    out: Annotated[
        Path | None,
        typer.Option(help="Model directory to write [the package's built-in pydoc-chars]."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the recorded epoch count.")] = None,
    corpus_chars: Annotated[
        int | None, typer.Option(help="Train on the first N characters only (smoke runs).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Override the recorded seed.")] = None,
) -> None:
    """Train the built-in char model on CPython's docs (pydoc_data), offline, on CPU.

    With no options this reproduces the shipped model; its record
    (training.json) is written next to the weights.
    """
    import dataclasses

    from seqinfer.service.models.builtin import builtin_model_dir
    from seqinfer.service.models.train_demo import MODEL_NAME, TrainConfig, save, train

    overrides: dict[str, int] = {}
    if epochs is not None:
        overrides["epochs"] = epochs
    if corpus_chars is not None:
        overrides["corpus_chars"] = corpus_chars
    if seed is not None:
        overrides["seed"] = seed
    cfg = dataclasses.replace(TrainConfig(), **overrides)  # type: ignore[arg-type]
    target = out if out is not None else builtin_model_dir(MODEL_NAME)
    result = train(cfg, log=typer.echo)
    save(result, target)
    weights = target / "model.safetensors"
    typer.echo(
        f"wrote {target} ({weights.stat().st_size} bytes of weights); "
        f"final validation loss {result.val_losses[-1]:.4f} nats/char"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(model_app)
