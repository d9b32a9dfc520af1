"""Turning a PyTorch checkpoint into a model directory (`seqinfer model import`).

Accepted input: a ``state_dict`` saved with ``torch.save`` (read with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects),
possibly wrapped as ``{"state_dict": ...}`` / ``{"model_state_dict": ...}``,
or a safetensors file. The state_dict is of a module that contains one
``nn.GRU`` and optionally an ``nn.Embedding`` before it and an ``nn.Linear``
head after it; a bare ``nn.GRU``'s own state_dict works too.

Which parameters are which is detected from names and shapes, or given:
``gru_prefix="rnn."`` etc. Anything else with parameters in the checkpoint
(a LayerNorm, a second Linear) would make the served model compute
something other than the module, so leftover tensors are an error unless
explicitly allowed.
"""

from __future__ import annotations

import pickle
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seqinfer.service.errors import ModelLoadError
from seqinfer.service.models.format import read_weights
from seqinfer.service.models.spec import (
    DTYPES,
    InputKind,
    LoadedModel,
    ModelSpec,
    OutputKind,
)

# Keys under which training scripts commonly nest the state_dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
_GRU_KEY = re.compile(r"^(?P<prefix>.*?)weight_ih_l(?P<layer>\d+)$")
# Names that suggest a module's role, used only to break ties between shapes.
_EMBEDDING_HINT = re.compile(r"emb", re.IGNORECASE)
_HEAD_HINT = re.compile(r"head|fc|out|linear|decoder|proj|classifier|logit", re.IGNORECASE)


@dataclass
class ImportPlan:
    """Which checkpoint tensors become which canonical tensors, and what is left over."""

    gru_prefix: str
    num_layers: int
    embedding_prefix: str | None
    head_prefix: str | None
    mapping: dict[str, str] = field(default_factory=dict)  # canonical name -> checkpoint key
    unused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The flat name -> tensor mapping of a checkpoint, never unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        return read_weights(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(str(path), "no such file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            str(path),
            "not a loadable state_dict checkpoint (torch.load with weights_only=True refuses "
            f"anything but tensors and plain containers; save module.state_dict()): {first_line}",
        ) from None
    return _flatten_state_dict(obj, str(path))


def _flatten_state_dict(obj: object, origin: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ModelLoadError(
        origin,
        f"expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}"
        + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else ""),
    )


def _normalise_prefix(prefix: str) -> str:
    """``"rnn"`` and ``"rnn."`` both mean the module named rnn; ``""`` is the top level."""
    return prefix if prefix == "" or prefix.endswith(".") else prefix + "."


def _modules(state: Mapping[str, torch.Tensor]) -> dict[str, set[str]]:
    """Module prefix ("fc." or "") -> its parameter names ("weight", "bias")."""
    modules: dict[str, set[str]] = defaultdict(set)
    for key in state:
        prefix, _, leaf = key.rpartition(".")
        modules[prefix + "." if prefix else ""].add(leaf)
    return modules


def _find_gru(state: Mapping[str, torch.Tensor], given: str | None) -> tuple[str, int]:
    prefixes = sorted(
        {m["prefix"] for key in state if (m := _GRU_KEY.match(key)) and m["layer"] == "0"}
    )
    if given is not None:
        prefix = _normalise_prefix(given)
        if prefix not in prefixes:
            raise ModelLoadError(
                "--gru",
                f"no {prefix}weight_ih_l0 in the checkpoint; GRU prefixes found: {prefixes}",
            )
    elif len(prefixes) == 1:
        prefix = prefixes[0]
    elif not prefixes:
        sample = ", ".join(sorted(state)[:12])
        raise ModelLoadError(
            "checkpoint", f"no nn.GRU parameters (…weight_ih_l0) found; keys include: {sample}"
        )
    else:
        raise ModelLoadError(
            "--gru", f"several GRU-like modules {prefixes}; name the one to serve with --gru"
        )
    if f"{prefix}weight_ih_l0_reverse" in state:
        raise ModelLoadError(prefix + "weight_ih_l0_reverse", "bidirectional GRUs cannot stream")
    if f"{prefix}weight_hh_l0" not in state:
        raise ModelLoadError(prefix + "weight_hh_l0", "missing: is this an nn.GRU?")
    rows, hidden = state[f"{prefix}weight_hh_l0"].shape
    if rows != 3 * hidden:
        gates = f"{rows / hidden:g}" if hidden else "?"
        raise ModelLoadError(
            prefix + "weight_hh_l0",
            f"has {gates}x hidden rows, a GRU has 3x"
            + (" (this looks like an nn.LSTM)" if rows == 4 * hidden else ""),
        )
    num_layers = 0
    while f"{prefix}weight_ih_l{num_layers}" in state:
        num_layers += 1
    return prefix, num_layers


def _linear_like(
    state: Mapping[str, torch.Tensor], modules: dict[str, set[str]], taken: set[str]
) -> dict[str, torch.Tensor]:
    """Modules whose only parameters are a 2-D weight (and maybe a bias): prefix -> weight."""
    found = {}
    for prefix, leaves in modules.items():
        if prefix in taken or "weight" not in leaves or not leaves <= {"weight", "bias"}:
            continue
        weight = state[prefix + "weight"]
        if weight.dim() == 2:
            found[prefix] = weight
    return found


def _pick(candidates: list[str], hint: re.Pattern[str], role: str, flag: str) -> str | None:
    """One candidate prefix, or None; ties broken by name hints, else an error."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    hinted = [c for c in candidates if hint.search(c)]
    if len(hinted) == 1:
        return hinted[0]
    raise ModelLoadError(
        flag, f"several tensors could be the {role}: {candidates}; name one with {flag}"
    )


def plan_import(
    state: Mapping[str, torch.Tensor],
    *,
    gru: str | None = None,
    embedding: str | None = None,
    head: str | None = None,
    input_kind: InputKind | None = None,
    use_head: bool | None = None,
) -> ImportPlan:
    """Decide the mapping from checkpoint keys to canonical names.

    ``embedding``/``head`` name modules (prefixes) explicitly; ``input_kind``
    DENSE means "no embedding" and ``use_head=False`` means "no head".
    """
    gru_prefix, num_layers = _find_gru(state, gru)
    in0 = state[f"{gru_prefix}weight_ih_l0"].shape[1]
    hidden = state[f"{gru_prefix}weight_hh_l0"].shape[1]
    modules = _modules(state)
    gru_module = gru_prefix
    taken = {gru_module}
    notes: list[str] = []

    emb_prefix: str | None = None
    if input_kind is not InputKind.DENSE:
        if embedding is not None:
            emb_prefix = _normalise_prefix(embedding)
            if emb_prefix + "weight" not in state:
                raise ModelLoadError("--embedding", f"no tensor {emb_prefix}weight in checkpoint")
        else:
            options = [
                p
                for p, w in _linear_like(state, modules, taken).items()
                if w.shape[1] == in0 and "bias" not in modules[p]
            ]
            emb_prefix = _pick(options, _EMBEDDING_HINT, "embedding", "--embedding")
        if emb_prefix is None and input_kind is InputKind.TOKENS:
            raise ModelLoadError(
                "--embedding",
                f"input kind tokens needs an embedding [vocab, {in0}]; none found, name it",
            )
        if emb_prefix is not None:
            taken.add(emb_prefix)

    head_prefix: str | None = None
    if use_head is not False:
        if head is not None:
            head_prefix = _normalise_prefix(head)
            if head_prefix + "weight" not in state:
                raise ModelLoadError("--head", f"no tensor {head_prefix}weight in checkpoint")
        else:
            options = [
                p for p, w in _linear_like(state, modules, taken).items() if w.shape[1] == hidden
            ]
            head_prefix = _pick(options, _HEAD_HINT, "linear head", "--head")
        if head_prefix is None and use_head:
            raise ModelLoadError("--head", f"no linear head [N, {hidden}] found; name it")
        if head_prefix is not None:
            taken.add(head_prefix)

    mapping: dict[str, str] = {}
    if emb_prefix is not None:
        mapping["embedding.weight"] = emb_prefix + "weight"
    for k in range(num_layers):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            key = f"{gru_prefix}{kind}_l{k}"
            if key in state:
                mapping[f"gru.{kind}_l{k}"] = key
    if head_prefix is not None:
        mapping["head.weight"] = head_prefix + "weight"
        if head_prefix + "bias" in state:
            mapping["head.bias"] = head_prefix + "bias"
    used = set(mapping.values())
    unused = sorted(k for k in state if k not in used)
    if emb_prefix is None:
        notes.append(f"no embedding: dense input of {in0} features")
    if head_prefix is None:
        notes.append("no head: outputs are the top layer's hidden state")
    return ImportPlan(gru_prefix, num_layers, emb_prefix, head_prefix, mapping, unused, notes)


def build_model(
    state: Mapping[str, torch.Tensor],
    plan: ImportPlan,
    *,
    name: str,
    version: str = "1",
    output_kind: OutputKind | None = None,
    dtype: str | None = None,
    description: str = "",
    allow_unused: bool = False,
    origin: str = "checkpoint",
) -> LoadedModel:
    """The LoadedModel the plan describes; raises if tensors are left over (unless allowed)."""
    if plan.unused and not allow_unused:
        raise ModelLoadError(
            origin,
            f"tensors not part of embedding -> GRU -> head: {plan.unused}. Serving without them "
            "would compute something else; pass --allow-unused if they are not used in forward",
        )
    weight_ih0 = state[plan.mapping["gru.weight_ih_l0"]]
    hidden = state[plan.mapping["gru.weight_hh_l0"]].shape[1]
    if plan.embedding_prefix is not None:
        vocab, emb_dim = state[plan.mapping["embedding.weight"]].shape
        input_kind, input_size, embedding_dim = InputKind.TOKENS, int(vocab), int(emb_dim)
    else:
        input_kind, input_size, embedding_dim = InputKind.DENSE, int(weight_ih0.shape[1]), 0
    if output_kind is None:
        if plan.head_prefix is None:
            output_kind = OutputKind.HIDDEN
        else:
            output_kind = OutputKind.LOGITS if input_kind is InputKind.TOKENS else OutputKind.VALUES
    if (output_kind is OutputKind.HIDDEN) != (plan.head_prefix is None):
        raise ModelLoadError(
            "--output-kind",
            f"output kind {output_kind.value} "
            + ("needs a linear head" if plan.head_prefix is None else "means no head"),
        )
    if dtype is None:
        found = {v for v, t in DTYPES.items() if t == weight_ih0.dtype}
        dtype = found.pop() if found else "float32"
    output_size = (
        int(state[plan.mapping["head.weight"]].shape[0]) if plan.head_prefix is not None else hidden
    )
    spec = ModelSpec(
        name=name,
        version=version,
        input_kind=input_kind,
        input_size=input_size,
        hidden_size=int(hidden),
        num_layers=plan.num_layers,
        output_kind=output_kind,
        output_size=output_size,
        embedding_dim=embedding_dim,
        dtype=dtype,
        description=description,
    )
    tensors = {canonical: state[key] for canonical, key in plan.mapping.items()}
    return LoadedModel(spec, tensors)
