"""Client commands: `seqinfer models`, `seqinfer session ...`, `seqinfer step`.

They talk to a running server through :mod:`seqinfer.client`. `models` prints
a table (``--output json`` for scripts); the others print JSON on stdout. On
failure they print ``error: REASON: message`` on stderr and exit non-zero
(1: the server refused, 2: the command line or the inputs are wrong).
Nothing here imports torch, so these commands start fast and work from a
client-only install.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import numpy as np
import typer

from seqinfer.cli.common import (
    TYPER_SETTINGS,
    AddressOpt,
    OutputFormat,
    OutputOpt,
    TimeoutOpt,
    format_table,
    print_json,
    security_options,
)
from seqinfer.client import Client, ModelInfo, SeqinferError, TensorError
from seqinfer.client.messages import OutputMode
from seqinfer.client.options import DEFAULT_ADDRESS
from seqinfer.client.tensors import prepare_inputs

EXIT_SERVER = 1
EXIT_USAGE = 2

session_app = typer.Typer(
    name="session",
    help=(
        "Open, inspect, fork and close sessions. A session keeps one sequence's GRU "
        "state on the server between steps.\n\n"
        "Example:\n\n"
        "  seqinfer session open bench-gru --id demo\n\n"
        "  seqinfer step demo --random 3\n\n"
        "  seqinfer session close demo"
    ),
    no_args_is_help=True,
    **TYPER_SETTINGS,
)


# -- output -----------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Dataclasses, numpy arrays and datetimes as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _print(value: Any) -> None:
    print_json(_jsonable(value))


def _fail(reason: str, message: str, code: int) -> NoReturn:
    typer.echo(f"error: {reason}: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _connect(address: str, timeout: float, security: dict[str, Any]) -> Iterator[Client]:
    """A client whose server errors become ``error: REASON: message`` and exit 1."""
    # --address always has a value (its default), so it yields to --addresses
    # unless set to something else, which is a contradiction to report.
    given: str | None = address
    if security.get("addresses") is not None and address == DEFAULT_ADDRESS:
        given = None
    try:
        client = Client(given, timeout=timeout, **security)
    except ValueError as exc:  # e.g. --cert without --key
        _fail("USAGE", str(exc), EXIT_USAGE)
    try:
        with client:
            yield client
    except SeqinferError as err:
        _fail(err.reason or err.code.name, err.message, EXIT_SERVER)


# -- models ---------------------------------------------------------------------


MODEL_COLUMNS = ("name", "version", "input", "gru", "output", "dtype", "device", "sessions")


def model_row(m: ModelInfo) -> tuple[str, ...]:
    """One `seqinfer models` table row; `--output json` has every field."""
    return (
        m.name,
        m.version,
        f"{m.input_kind} {m.input_size}",
        f"{m.hidden_size}x{m.num_layers}",
        f"{m.output_kind} {m.output_size}",
        m.dtype,
        m.device,
        f"{m.open_sessions}/{m.max_sessions}",
    )


@security_options
def models(
    address: AddressOpt = DEFAULT_ADDRESS,
    timeout: TimeoutOpt = 10.0,
    output: OutputOpt = OutputFormat.table,
    security: dict[str, Any] | None = None,
) -> None:
    """List the models the server serves, as a table or as JSON.

    Table columns: input kind and size, GRU hidden size x layers, output kind
    and size, dtype, device, open/max sessions. `--output json` prints every
    field of each model (max_timesteps, state_bytes_per_session, ...).
    """
    with _connect(address, timeout, security or {}) as client:
        listed = client.list_models()
    if output is OutputFormat.json:
        _print(listed)
    else:
        typer.echo(format_table(MODEL_COLUMNS, [model_row(m) for m in listed]))


# -- sessions -------------------------------------------------------------------


@session_app.command("open")
@security_options
def session_open(
    model: Annotated[str, typer.Argument(help="Model name, as `seqinfer models` lists it.")],
    session_id: Annotated[
        str | None, typer.Option("--id", help="Your id for the session (default: a random one).")
    ] = None,
    ttl: Annotated[
        float | None,
        typer.Option(
            "--ttl", help="Idle seconds before it expires; 0 = never (default: the server's)."
        ),
    ] = None,
    version: Annotated[
        str, typer.Option("--version", help="Model version (default: the newest).")
    ] = "",
    address: AddressOpt = DEFAULT_ADDRESS,
    timeout: TimeoutOpt = 10.0,
    security: dict[str, Any] | None = None,
) -> None:
    """Open a session on MODEL; prints its info, including the session_id to step with."""
    with _connect(address, timeout, security or {}) as client:
        sess = client.open_session(model, session_id, model_version=version, idle_ttl=ttl)
        _print(sess.info)


@session_app.command("get")
@security_options
def session_get(
    session_id: Annotated[str, typer.Argument(help="Session id.")],
    address: AddressOpt = DEFAULT_ADDRESS,
    timeout: TimeoutOpt = 10.0,
    security: dict[str, Any] | None = None,
) -> None:
    """Show a session: model, step counter (timesteps applied), state tier, TTL."""
    with _connect(address, timeout, security or {}) as client:
        _print(client.get_session(session_id))


@session_app.command("close")
@security_options
def session_close(
    session_id: Annotated[str, typer.Argument(help="Session id.")],
    address: AddressOpt = DEFAULT_ADDRESS,
    timeout: TimeoutOpt = 10.0,
    security: dict[str, Any] | None = None,
) -> None:
    """Close a session and free its state; prints its final step counter."""
    with _connect(address, timeout, security or {}) as client:
        _print({"session_id": session_id, "final_step": client.close_session(session_id)})


@session_app.command("fork")
@security_options
def session_fork(
    session_id: Annotated[str, typer.Argument(help="Session to copy.")],
    new_id: Annotated[
        str | None, typer.Option("--new-id", help="Id for the copy (default: a random one).")
    ] = None,
    ttl: Annotated[
        float | None, typer.Option("--ttl", help="Idle TTL of the copy (default: the source's).")
    ] = None,
    address: AddressOpt = DEFAULT_ADDRESS,
    timeout: TimeoutOpt = 10.0,
    security: dict[str, Any] | None = None,
) -> None:
    """Copy a session's state and step counter into a new session; prints the copy's info."""
    with _connect(address, timeout, security or {}) as client:
        _print(client.fork_session(session_id, new_id, idle_ttl=ttl).info)


@session_app.command("export")
@security_options
def session_export(
    session_id: Annotated[str, typer.Argument(help="Session id.")],
    npy: Annotated[
        Path | None,
        typer.Option("--npy", help="Write the state to this .npy file instead of printing it."),
    ] = None,
    address: AddressOpt = DEFAULT_ADDRESS,
    timeout: TimeoutOpt = 10.0,
    security: dict[str, Any] | None = None,
) -> None:
    """Print (or save) a session's hidden state (num_layers x hidden_size) and info."""
    with _connect(address, timeout, security or {}) as client:
        state, info = client.export_state(session_id)
    if npy is not None:
        np.save(npy, state)
        _print({"session": info, "state_file": str(npy), "shape": list(state.shape)})
    else:
        _print({"session": info, "state": state})


# -- step -------------------------------------------------------------------------


def _read_inputs(json_text: str | None, json_file: Path | None, npy: Path | None) -> Any:
    given = [x for x in (json_text, json_file, npy) if x is not None]
    if len(given) != 1:
        _fail("USAGE", "give exactly one of --json, --json-file, --npy or --random", EXIT_USAGE)
    try:
        if json_text is not None:
            return json.loads(json_text)
        if json_file is not None:
            text = sys.stdin.read() if str(json_file) == "-" else json_file.read_text()
            return json.loads(text)
        assert npy is not None
        return np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as exc:
        _fail("INVALID_INPUT", f"cannot read inputs: {exc}", EXIT_USAGE)


def _random_inputs(client: Client, model: str, timesteps: int, seed: int) -> np.ndarray:
    info = client.get_model(model)
    rng = np.random.default_rng(seed)
    if info.input_kind == "tokens":
        return rng.integers(0, info.input_size, size=timesteps, dtype=np.int64)
    return rng.standard_normal((timesteps, info.input_size), dtype=np.float32)


@security_options
def step(
    session_id: Annotated[str, typer.Argument(help="Session id (see `seqinfer session open`).")],
    json_text: Annotated[
        str | None,
        typer.Option(
            "--json",
            help="Inputs as JSON: [[f, ...], ...] (T rows of features) or [f, ...] "
            "(one row) for dense models; [id, ...] or id for token models.",
        ),
    ] = None,
    json_file: Annotated[
        Path | None,
        typer.Option("--json-file", help="Read the --json text from a file; - = stdin."),
    ] = None,
    npy: Annotated[
        Path | None, typer.Option("--npy", help="Read the inputs from a .npy file.")
    ] = None,
    random_steps: Annotated[
        int | None,
        typer.Option("--random", help="Send T random timesteps of the model's input shape.", min=1),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --random.")] = 0,
    start: Annotated[
        bool,
        typer.Option("--start", help="Create the session if it does not exist (needs --model)."),
    ] = False,
    model: Annotated[str, typer.Option("--model", help="Model for --start.")] = "",
    all_outputs: Annotated[
        bool, typer.Option("--all", help="Return every timestep's outputs, not only the last.")
    ] = False,
    no_outputs: Annotated[
        bool, typer.Option("--no-outputs", help="Return no outputs (still advances the state).")
    ] = False,
    return_state: Annotated[
        bool, typer.Option("--return-state", help="Also return the new hidden state.")
    ] = False,
    expected_step: Annotated[
        int | None,
        typer.Option(
            "--expected-step",
            help="Apply only if the session has this step counter (else STEP_GAP). Also makes "
            "the step safe to retry.",
        ),
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Zero the state and counter before stepping.")
    ] = False,
    end: Annotated[bool, typer.Option("--end", help="Close the session after stepping.")] = False,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="Wire dtype of the inputs (default: float32 for features, int64 for ids).",
        ),
    ] = None,
    address: AddressOpt = DEFAULT_ADDRESS,
    timeout: TimeoutOpt = 10.0,
    security: dict[str, Any] | None = None,
) -> None:
    """Apply timesteps to a session; prints outputs and the new step counter as JSON.

    Give the inputs with exactly one of --json, --json-file, --npy or --random.

    Examples (bench-gru takes 64 features per timestep):

      seqinfer step demo --random 5 --all

      seqinfer step demo --npy frames.npy --return-state

      seqinfer step new-id --start --model bench-gru --random 1
    """
    if all_outputs and no_outputs:
        _fail("USAGE", "--all and --no-outputs exclude each other", EXIT_USAGE)
    if start and not model:
        _fail("USAGE", "--start needs --model", EXIT_USAGE)
    with _connect(address, timeout, security or {}) as client:
        model_name = model
        if random_steps is not None:
            if any(x is not None for x in (json_text, json_file, npy)):
                _fail("USAGE", "--random excludes --json, --json-file and --npy", EXIT_USAGE)
            model_name = model_name or client.get_session(session_id).model
            raw = _random_inputs(client, model_name, random_steps, seed)
        else:
            raw = _read_inputs(json_text, json_file, npy)
        kind = None
        if np.ndim(raw) < 2:
            # [F] vs [T] is ambiguous from the array alone: ask the model.
            model_name = model_name or _session_model(client, session_id)
            kind = _model_kind(client.get_model, model_name) if model_name else None
        try:
            tensor = prepare_inputs(raw, dtype=dtype, kind=kind)
        except (TensorError, TypeError, ValueError) as exc:
            _fail("INVALID_INPUT", str(exc), EXIT_USAGE)
        mode: OutputMode = "all" if all_outputs else "none" if no_outputs else "last"
        out = client.step(
            session_id,
            tensor,
            expected_step=expected_step,
            start=start,
            model=model,
            reset=reset,
            end=end,
            output_mode=mode,
            return_state=return_state,
        )
        _print(out)


def _session_model(client: Client, session_id: str) -> str:
    try:
        return client.get_session(session_id).model
    except SeqinferError:
        return ""  # the step itself will report what is wrong


def _model_kind(get_model: Callable[[str], Any], model: str) -> Any:
    try:
        kind = get_model(model).input_kind
    except SeqinferError:
        return None
    return kind if kind in ("dense", "tokens") else None


def register(app: typer.Typer) -> None:
    """Adds `models`, `session ...` and `step` to the `seqinfer` app."""
    app.command("models")(models)
    app.command("step")(step)
    app.add_typer(session_app, name="session")
