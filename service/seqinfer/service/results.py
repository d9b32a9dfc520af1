"""Step outcomes into protobuf replies, where no failure can lose a reply.

Every accepted request gets exactly one result. Building one cannot raise:
a fault while encoding an outcome becomes that item's error result (the
server's fault, INTERNAL, logged), never a missing stream reply or a whole
StepMany that fails after its other items were applied.

Sizes: the api refuses, before applying, any request whose reply could pass
``max_message_bytes`` (``replies``). Two kinds of result can still be larger
than estimated, and neither has applied anything: an error result, and a
replayed reply (a retry gets the cached reply of the original, which may
have asked for more outputs). A replay that does not fit becomes TOO_LARGE;
in a StepMany that would pass the limit, error results are cut down to code,
reason and a short message (``compact``), which every estimate has room for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from google.rpc import error_details_pb2

from seqinfer.service.errors import SeqinferError, TooLarge, clip, internal
from seqinfer.service.protocol import StepBatch, StepOutcome, StepReply
from seqinfer.service.status import to_status_proto
from seqinfer.service.tensors import fill_tensor
from seqinfer.v1 import seqinfer_pb2 as pb

log = logging.getLogger(__name__)
# Message kept by a compacted error result: with the ids it stays under
# replies.RESULT_OVERHEAD plus twice the ids, the least any estimate reserves.
COMPACT_MESSAGE_BYTES = 48


def fill_response(response: pb.StepResponse, outcome: StepOutcome) -> pb.StepResponse:
    """Write an outcome into a (sub)message in place: building a StepResponse and
    copying it into a StepResult costs twice as much, per reply."""
    response.session_id = outcome.session_id
    response.request_id = outcome.request_id
    response.step = outcome.step
    # The message is new, its flags false: three field writes saved per reply.
    if outcome.created:
        response.created = True
    if outcome.closed:
        response.closed = True
    if outcome.replayed:
        response.replayed = True
    if outcome.outputs is not None:
        fill_tensor(response.outputs, outcome.outputs)
    if outcome.state is not None:
        fill_tensor(response.state, outcome.state)
    return response


def compact(result: pb.StepResult) -> None:
    """Cut an error result down to code, reason and a short message."""
    status = result.error
    info = error_details_pb2.ErrorInfo()
    if status.details:
        status.details[0].Unpack(info)
    info.metadata.clear()
    status.message = clip(status.message, COMPACT_MESSAGE_BYTES)
    del status.details[:]
    status.details.add().Pack(info)


class ResultBuilder:
    """Builds StepResults within the server's id and message size limits."""

    def __init__(
        self, max_message_bytes: int, max_session_id_bytes: int, max_request_id_bytes: int
    ):
        self.max_message_bytes = max_message_bytes
        self.max_session_id_bytes = max_session_id_bytes
        self.max_request_id_bytes = max_request_id_bytes

    def fill_error(
        self, result: pb.StepResult, session_id: str, request_id: str, error: BaseException
    ) -> None:
        if not isinstance(error, SeqinferError):
            log.error("step failed", exc_info=error)
            error = internal(error)
        # A valid id comes back exactly; one refused for its length comes back cut.
        result.session_id = clip(session_id, self.max_session_id_bytes)
        result.request_id = clip(request_id, self.max_request_id_bytes)
        result.error.CopyFrom(to_status_proto(error))

    def fill(
        self, result: pb.StepResult, session_id: str, request_id: str, reply: StepReply
    ) -> bool:
        """Write a step's outcome or error into ``result``; never raises.

        True when the result may be larger than estimated before applying:
        an error or a replayed reply.
        """
        error: BaseException
        if isinstance(reply, StepOutcome):
            try:
                result.session_id = reply.session_id
                result.request_id = reply.request_id
                fill_response(result.response, reply)
                return reply.replayed
            except Exception as exc:  # an encoding fault: the server's, and this item's only
                log.exception("could not encode a step result")
                result.Clear()
                error = internal(exc)
        else:
            error = reply
        self.fill_error(result, session_id, request_id, error)
        return True

    def step_result(self, request: Any, future: asyncio.Future[StepOutcome]) -> pb.StepResult:
        """One stream reply (of a done future), within the message size limit."""
        result = pb.StepResult()
        error = future.exception()
        reply: StepReply | BaseException = future.result() if error is None else error
        if self.fill(result, request.session_id, request.request_id, reply):  # type: ignore[arg-type]
            self.fit([result], [0], result.ByteSize())
        return result

    def step_many(self, batch: StepBatch, replies: Sequence[StepReply]) -> pb.StepManyResponse:
        response = pb.StepManyResponse()
        results = response.results
        fill = self.fill
        flagged: list[int] = []
        session_ids, request_ids = batch.session_ids, batch.request_ids
        for index, reply in enumerate(replies):
            if fill(results.add(), session_ids[index], request_ids[index], reply):
                flagged.append(index)
        if flagged:
            # The other results are within the bounds checked before applying;
            # only these can take the reply past the limit.
            self.fit(results, flagged, response.ByteSize())
        return response

    def check_replay(self, size: int) -> None:
        """A unary reply replayed from the cache must still fit in one message."""
        limit = self.max_message_bytes
        if size > limit:
            raise TooLarge(
                "reply",
                f"the cached reply of this retried request would be up to {size} bytes, over "
                f"max_message_bytes = {limit}; nothing was applied",
                reply_bytes=size,
                max_message_bytes=limit,
            )

    def fit(self, results: Sequence[pb.StepResult], flagged: list[int], total: int) -> None:
        """Shrink the flagged results when ``total`` (the reply's size) passes the limit.

        A shrunk result is no larger than the room every bound (``replies``)
        reserves for it, so afterwards the reply is within the limit that was
        checked before applying.
        """
        limit = self.max_message_bytes
        if total <= limit:
            return
        for index in flagged:
            result = results[index]
            if result.WhichOneof("outcome") == "response":  # a replay: nothing was applied
                size = result.ByteSize()
                session_id, request_id = result.session_id, result.request_id
                error = TooLarge(
                    "reply",
                    f"the cached reply of this retried request is {size} bytes and does not "
                    f"fit in this reply (max_message_bytes = {limit}); nothing was applied: "
                    "retry it alone, in a Step call",
                    reply_bytes=size,
                    max_message_bytes=limit,
                )
                result.Clear()
                self.fill_error(result, session_id, request_id, error)
            compact(result)
