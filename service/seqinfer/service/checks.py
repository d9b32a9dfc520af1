"""The checks a queued step passes at the moment it would run.

They run against the session's *current* counter, exact because the session
has nothing in the engine (the scheduler calls ``first_runnable`` only for a
session that is not busy). Each refusal here means nothing was applied, so
the caller may send the step again.

Kept apart from the scheduler so that the loop reads as a loop, and so that
the one durability-specific rule (``uncommitted``: a reply not yet in the
store is not replayed) sits beside the replay rule it qualifies.
"""

from __future__ import annotations

from collections.abc import Callable

from seqinfer.service.bounds import MAX_STEP
from seqinfer.service.errors import (
    DeadlineExceeded,
    StepGap,
    StepLimit,
    StoreUnavailable,
    echo,
)
from seqinfer.service.observer import Observer
from seqinfer.service.queues import StepQueues
from seqinfer.service.sessions import Session
from seqinfer.service.work import StepItem


def first_runnable(
    session: Session,
    now: float,
    queues: StepQueues,
    observer: Observer,
    model_key: str,
    uncommitted: Callable[[Session], bool] | None = None,
) -> StepItem | None:
    """The session's first item that may run now; the ones before it are answered here."""
    while session.pending:
        item = queues.pop(session)
        # Deadline first: gRPC cancels a call whose deadline passed, so its
        # future is already done here, yet the cause is the deadline.
        if item.deadline is not None and now >= item.deadline:
            observer.request_rejected(model_key, "deadline")
            item.refuse(
                DeadlineExceeded("deadline passed before the step was computed; not applied")
            )
            continue
        if item.abandoned():  # the caller cancelled: nothing applied
            observer.request_rejected(model_key, "cancelled")
            continue
        if item.expected_step is not None and item.expected_step != session.step:
            if (
                item.request_id
                and item.request_id == session.last_request_id
                and item.expected_step == session.last_step_before
                and session.last_reply is not None
            ):
                if uncommitted is not None and uncommitted(session):
                    # Write-through: a replay promises the step is kept; until
                    # its state is committed that promise cannot be made.
                    observer.request_rejected(model_key, "store")
                    item.refuse(
                        StoreUnavailable(
                            f"the last step of session {echo(session.session_id)} is applied "
                            "but not yet in the state store; retry",
                            current_step=session.step,
                        )
                    )
                    continue
                item.answer(session.last_reply.copy(replayed=True))
                continue
            observer.request_rejected(model_key, "step_gap")
            item.refuse(
                StepGap(
                    f"expected_step {item.expected_step} but session "
                    f"{session.session_id!r} is at step {session.step}",
                    current_step=session.step,
                )
            )
            continue
        if not item.reset and session.step + item.timesteps > MAX_STEP:
            # Checked here, against the exact counter, so it can never overflow.
            observer.request_rejected(model_key, "invalid")
            item.refuse(
                StepLimit(
                    f"T = {item.timesteps} would take the step counter of session "
                    f"{echo(session.session_id)} from {session.step} past its maximum "
                    f"{MAX_STEP}; not applied (reset the session to go on)",
                    current_step=session.step,
                    max_step=MAX_STEP,
                )
            )
            continue
        return item
    return None
