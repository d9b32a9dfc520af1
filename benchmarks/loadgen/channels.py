"""The load generator's gRPC channels: to one address, or balanced over a server's front ends.

``serve --frontends K`` shares one port among K processes, and the kernel
spreads *connections* over them, not calls: one channel lands every call on
one front end. The seqinfer client's ``addresses=`` option is the answer it
offers users (one channel over the front ends' own ports, ``round_robin``
per call), so a load with ``LoadSpec.addresses`` set builds its channel with
that same client code, and measures what a user of the option would get.
"""

from __future__ import annotations

import grpc
import grpc.aio

from benchmarks.loadgen.spec import LoadSpec
from seqinfer.client.options import ChannelOptions, address_list_target, balanced_options

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Separate channels must be separate connections, not one shared subchannel.
    ("grpc.use_local_subchannel_pool", 1),
]


def open_channel(spec: LoadSpec) -> grpc.aio.Channel:
    """One channel of a load run: to ``spec.target``, or round-robin over ``spec.addresses``."""
    if not spec.addresses:
        return grpc.aio.insecure_channel(spec.target, options=CHANNEL_OPTIONS)
    balanced = balanced_options(ChannelOptions(extra=tuple(CHANNEL_OPTIONS)), spec.addresses)
    return grpc.aio.insecure_channel(
        address_list_target(spec.addresses), options=balanced.channel_args()
    )
