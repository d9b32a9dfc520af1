"""One model's state slab: the tensor of every session's hidden state, and its free columns.

The slab is one tensor ``[layers, capacity, hidden]`` on the model's device;
a session owns one column (its slot). Capacity doubles on demand up to the
model's session limit. Which slot is free is decided on the event loop
(``take``/``release``); the tensor's contents are read and written only in
the order the model's engine worker runs its work (see ``worker``), which
is what keeps a freed-and-reused slot from being written by a batch still
in flight.

Invariant: every free slot holds zeros (new columns are zeros, and a slot is
zeroed, in worker order, before it is released), so a new session starts
from torch.nn.GRU's h0 without a round trip to the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from seqinfer.service.engine import GRUEngine


class StateSlab:
    def __init__(self, engine: GRUEngine, *, initial_capacity: int, max_capacity: int) -> None:
        self._engine = engine
        self.max_capacity = max_capacity
        self.capacity = min(initial_capacity, max_capacity)
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
        """Double the slab; replaces the tensor, which batches read on the worker."""
        new_capacity = min(self.capacity * 2, self.max_capacity)
        tensor = self._engine.new_slab(new_capacity)
        tensor[:, : self.capacity] = self.tensor
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
        return self.tensor[:, slot].to("cpu", copy=True)

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
