"""Self-test: the served step path computes what ``torch.nn.GRU`` computes.

``seqinfer model check`` runs this on a model directory. The reference is
the stock PyTorch modules (``nn.Embedding`` → ``nn.GRU`` → ``nn.Linear``)
with the model's weights loaded by name over a whole sequence at once; the
candidate is the server's engine stepping several sessions through a state
slab the way the scheduler drives it: batched single steps, then a batch of
short multi-step chunks of different lengths, then a long chunk (the
full-sequence path). Outputs at every timestep and the final hidden states
must agree within a tolerance set by the dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqinfer.service.models.spec import InputKind, LoadedModel, OutputKind

# Largest allowed |served - reference| / max(1, |reference|), by compute dtype.
TOLERANCES = {"float64": 1e-9, "float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}


@dataclass(frozen=True)
class SelfTestResult:
    """How far the served outputs and states were from the reference."""

    max_output_error: float
    max_state_error: float
    tolerance: float
    sessions: int
    timesteps: int

    @property
    def passed(self) -> bool:
        return max(self.max_output_error, self.max_state_error) <= self.tolerance


class ReferenceModule(nn.Module):
    """The model as plain PyTorch modules, built from the canonical tensors by name."""

    def __init__(self, model: LoadedModel, dtype: torch.dtype) -> None:
        super().__init__()
        spec = model.spec
        self.spec = spec
        self.embedding = (
            nn.Embedding(spec.input_size, spec.embedding_dim, dtype=dtype)
            if spec.input_kind is InputKind.TOKENS
            else None
        )
        self.gru = nn.GRU(
            spec.gru_input_size, spec.hidden_size, spec.num_layers, batch_first=True, dtype=dtype
        )
        self.head = (
            nn.Linear(spec.hidden_size, spec.output_size, dtype=dtype) if spec.has_head else None
        )
        # strict=True: every module parameter must come from the model, by name.
        self.load_state_dict({name: t.to(dtype) for name, t in model.tensors.items()}, strict=True)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T] ids or [B, T, F] features -> ([B, T, out], final state [L, B, H])."""
        x = self.embedding(inputs) if self.embedding is not None else inputs
        top, state = self.gru(x)
        out = self.head(top) if self.head is not None else top
        if self.spec.output_kind is OutputKind.PROBABILITIES:
            out = torch.softmax(out, dim=-1)
        return out, state


def random_inputs(model: LoadedModel, sessions: int, timesteps: int, seed: int) -> torch.Tensor:
    """[sessions, timesteps] token ids or [sessions, timesteps, features] floats."""
    generator = torch.Generator().manual_seed(seed)
    spec = model.spec
    if spec.input_kind is InputKind.TOKENS:
        return torch.randint(0, spec.input_size, (sessions, timesteps), generator=generator)
    return torch.randn(sessions, timesteps, spec.input_size, generator=generator)


def _relative_error(served: torch.Tensor, reference: torch.Tensor) -> float:
    served64, reference64 = served.double(), reference.double()
    scale = reference64.abs().clamp(min=1.0)
    return float(((served64 - reference64).abs() / scale).max())


def _chunk_plan(sessions: int, long_chunk: int) -> list[list[int]]:
    """Per session, the T of each request: 6 single steps, a short chunk of 2..4, a long chunk."""
    return [[1] * 6 + [2 + s % 3] + [long_chunk] for s in range(sessions)]


@torch.no_grad()
def self_test(
    model: LoadedModel, *, sessions: int = 3, seed: int = 0, device: str = "cpu"
) -> SelfTestResult:
    """Step ``sessions`` sessions through the served engine and compare with nn.GRU."""
    from seqinfer.service.engine import EngineItem, GRUEngine, OutputMode

    spec = model.spec
    engine = GRUEngine(model, torch.device(device))
    long_chunk = max(engine.long_chunk_threshold, 2)
    plans = _chunk_plan(sessions, long_chunk)
    timesteps = max(sum(p) for p in plans)
    inputs = random_inputs(model, sessions, timesteps, seed)
    if spec.input_kind is InputKind.DENSE:
        inputs = inputs.to(spec.torch_dtype)

    # Reference in the model's dtype where CPU kernels exist, else float32.
    ref_dtype = spec.torch_dtype if spec.dtype in {"float32", "float64"} else torch.float32
    reference = ReferenceModule(model, ref_dtype)
    ref_inputs = inputs if spec.input_kind is InputKind.TOKENS else inputs.to(ref_dtype)
    # The engine takes numpy, as the api decodes it; numpy has no bfloat16, so
    # those values go as float32 (exactly, as the api sends bfloat16 requests).
    engine_inputs = (inputs.float() if inputs.dtype is torch.bfloat16 else inputs).numpy()

    # Slots 1.. rather than 0..: a slot-indexing slip shows up as a mismatch.
    slab = engine.new_slab(sessions + 2)
    slots = [s + 1 for s in range(sessions)]
    served_outputs: list[list[torch.Tensor]] = [[] for _ in range(sessions)]
    served_states: list[torch.Tensor | None] = [None] * sessions
    positions = [0] * sessions
    rounds = max(len(p) for p in plans)
    for r in range(rounds):
        items, owners = [], []
        for s in range(sessions):
            if r >= len(plans[s]):
                continue
            t0, length = positions[s], plans[s][r]
            positions[s] += length
            chunk = engine_inputs[s, t0 : t0 + length]
            items.append(
                EngineItem(
                    slot=slots[s],
                    inputs=chunk,
                    output_mode=OutputMode.ALL,
                    return_state=r == len(plans[s]) - 1,
                )
            )
            owners.append(s)
        for s, result in zip(owners, engine.run(slab, items), strict=True):
            assert result.outputs is not None
            served_outputs[s].append(torch.as_tensor(result.outputs))
            if result.state is not None:
                served_states[s] = torch.as_tensor(result.state)

    output_error = state_error = 0.0
    for s in range(sessions):
        length = positions[s]
        ref_out, ref_state = reference(ref_inputs[s : s + 1, :length])
        got = torch.cat(served_outputs[s])
        output_error = max(output_error, _relative_error(got, ref_out[0]))
        final = served_states[s]
        assert final is not None
        state_error = max(state_error, _relative_error(final, ref_state[:, 0]))
    return SelfTestResult(
        max_output_error=output_error,
        max_state_error=state_error,
        tolerance=TOLERANCES[spec.dtype],
        sessions=sessions,
        timesteps=max(positions),
    )
