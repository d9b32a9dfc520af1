"""One model's state slab: the tensor of every session's hidden state, and its free columns.

The slab is one tensor ``[layers, capacity, hidden]`` on the model's device;
a session owns one column (its slot). Capacity doubles on demand up to the
model's session limit. Which slot is free is decided on the event loop
(``take``/``release``); the tensor's contents are read and written only in
the order the model's engine worker runs its work (see ``worker``), which
is what keeps a freed-and-reused slot from being written by a batch still
in flight.

When the engine pads batches to a bucket (CUDA graphs), the tensor has one
more column after the sessions' (``engine.reserved_slots``): the dummy slot
that padding rows point at. It is never given to a session nor counted in
``capacity``; growth leaves it, zeroed, after the new columns.

Capacity is bounded in sessions and, with ``max_bytes``, in bytes; a growth
the device has no memory for ends growth where it is (new sessions are then
CAPACITY_FULL), never the server.

Invariant: every free slot holds zeros (new columns are zeros, and a slot is
zeroed, in worker order, before it is released), so a new session starts
from torch.nn.GRU's h0 without a round trip to the worker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from seqinfer.service.engine import GRUEngine

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError is a RuntimeError; older paths raise the
    # plain RuntimeError with this text.
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc)
    )


class StateSlab:
    def __init__(
        self,
        engine: GRUEngine,
        *,
        initial_capacity: int,
        max_capacity: int,
        max_bytes: int = 0,
    ) -> None:
        self._engine = engine
        spec = engine.spec
        per_session = spec.num_layers * spec.hidden_size * engine.dtype.itemsize
        if max_bytes:
            # The dummy column counts against the bytes too: it is real memory.
            max_capacity = min(max_capacity, max_bytes // per_session - engine.reserved_slots)
        self.max_capacity = max(0, max_capacity)
        self.capacity = min(initial_capacity, self.max_capacity)
        self.tensor = engine.new_slab(self.capacity)
        self._free: list[int] = list(range(self.capacity - 1, -1, -1))

    # -------------------------------------------- allocation (event loop) --

    def has_free(self) -> bool:
        return bool(self._free)

    def needs_growth(self) -> bool:
        return not self._free and self.capacity < self.max_capacity

    def take(self) -> int:
        """A free (zeroed) slot; the caller checked ``has_free``."""
        return self._free.pop()

    def release(self, slot: int) -> None:
        """Return a slot whose zeroing is already queued on the worker."""
        self._free.append(slot)

    # ---------------------------------------------- contents (worker order) --

    def grow(self) -> None:
        """Double the slab; replaces the tensor, which batches read on the worker.

        Out of device memory, the slab stays as it is and stops growing.
        """
        new_capacity = min(self.capacity * 2, self.max_capacity)
        try:
            tensor = self._engine.new_slab(new_capacity)
        except (RuntimeError, MemoryError) as exc:
            if not (isinstance(exc, MemoryError) or is_out_of_memory(exc)):
                raise
            log.warning(
                "%s: no memory to grow the state slab from %d to %d sessions; "
                "it stays at %d (new sessions get CAPACITY_FULL): %s",
                self._engine.spec.key,
                self.capacity,
                new_capacity,
                self.capacity,
                exc,
            )
            self.max_capacity = self.capacity
            return
        # Only the sessions' columns: the new dummy column (if any) starts at zero.
        tensor[:, : self.capacity] = self.tensor[:, : self.capacity]
        self._free.extend(range(new_capacity - 1, self.capacity - 1, -1))
        self.tensor = tensor
        self.capacity = new_capacity

    def write(self, slot: int, state: torch.Tensor | None) -> None:
        """Set a slot's state; None zeroes it."""
        if state is None:
            self.tensor[:, slot] = 0
        else:
            self.tensor[:, slot] = state.to(self.tensor.device, self.tensor.dtype)

    def read(self, slot: int) -> torch.Tensor:
        # In the model's dtype, whatever precision the engine runs in.
        return self.tensor[:, slot].to("cpu", self._engine.spec.torch_dtype, copy=True)

    def gather(self, slots: list[int]) -> torch.Tensor:
        """The states of ``slots`` as one CPU tensor ``[n, layers, hidden]`` (worker thread)."""
        tensor = self.tensor
        index = torch.tensor(slots, dtype=torch.long, device=tensor.device)
        return tensor.index_select(1, index).transpose(0, 1).contiguous().to("cpu")

    def copy(self, source_slot: int, target_slot: int) -> None:
        self.tensor[:, target_slot] = self.tensor[:, source_slot]

    # ------------------------------------------------------------- sizes --

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()

    @property
    def bytes_per_session(self) -> int:
        layers, _, hidden = self.tensor.shape
        return int(layers * hidden * self.tensor.element_size())
