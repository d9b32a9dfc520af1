"""``addresses=``: one round_robin channel over several ports of one server.

The target and channel arguments are checked as built (gRPC's static
address list, the round_robin service config, the authority that TLS
checks), the refusals say what was wrong, and two stand-in TLS servers show
that one client with a token reaches both and passes the certificate check.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from seqinfer.cli import client_cmds
from seqinfer.cli.common import TYPER_SETTINGS, split_addresses
from seqinfer.client import AsyncClient, Client, RetryPolicy
from seqinfer.client import client as client_module
from seqinfer.client.options import (
    ROUND_ROBIN,
    ChannelOptions,
    address_list_target,
    balanced_options,
)
from tests.support import wait_until
from tests.unit.client_tls_support import Pki, Seen, standin_server

TOKEN = "rr-token-7"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.make()


def test_the_target_is_grpcs_static_address_list() -> None:
    assert address_list_target(["127.0.0.1:5001", " 10.0.0.2:5002"]) == (
        "ipv4:127.0.0.1:5001,10.0.0.2:5002"
    )
    assert address_list_target(["[::1]:7", "[fe80::1]:8"]) == "ipv6:[::1]:7,[fe80::1]:8"
    assert address_list_target(["127.0.0.1:1"]) == "ipv4:127.0.0.1:1"


@pytest.mark.parametrize(
    ("addresses", "says"),
    [
        (["localhost:5001"], "IP literals"),
        (["127.0.0.1:5001", "[::1]:5002"], "all IPv4 or all IPv6"),
        ([], "at least one"),
        ("127.0.0.1:5001,127.0.0.1:5002", "not one string"),
        (["127.0.0.1"], "host:port"),
        (["127.0.0.1:0"], "host:port"),
        (["127.0.0.1:http"], "host:port"),
    ],
)
def test_bad_address_lists_are_refused(addresses: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        address_list_target(addresses)


def test_the_options_ask_for_round_robin_and_name_the_first_address() -> None:
    args = dict(balanced_options(ChannelOptions(), ["127.0.0.1:5001", "127.0.0.1:5002"]).extra)
    assert json.loads(str(args["grpc.service_config"])) == {
        "loadBalancingConfig": [{"round_robin": {}}]
    }
    assert args["grpc.default_authority"] == "127.0.0.1:5001"
    six = dict(balanced_options(ChannelOptions(), ["[::1]:9", "[::1]:10"]).extra)
    assert six["grpc.default_authority"] == "[::1]:9"
    # A caller who names the server for TLS keeps that name, and their other settings.
    own = ChannelOptions(max_message_bytes=123, extra=(("grpc.ssl_target_name_override", "x"),))
    kept = balanced_options(own, ["127.0.0.1:5001"])
    assert kept.max_message_bytes == 123
    assert "grpc.default_authority" not in dict(kept.extra)
    assert dict(kept.extra)["grpc.ssl_target_name_override"] == "x"


def test_the_client_opens_its_channel_on_that_target(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[str, list[tuple[str, int | str]]]] = []
    real = client_module.make_channel

    def recording(address: str, options: ChannelOptions, credentials: Any) -> Any:
        opened.append((address, options.channel_args()))
        return real(address, options, credentials)  # connects only when first used

    monkeypatch.setattr(client_module, "make_channel", recording)
    client = Client(addresses=["127.0.0.1:5001", "127.0.0.1:5002"])
    client.close()
    target, args = opened[0]
    assert target == "ipv4:127.0.0.1:5001,127.0.0.1:5002" == client.address
    assert ("grpc.service_config", ROUND_ROBIN) in args
    assert ("grpc.default_authority", "127.0.0.1:5001") in args
    assert ("grpc.max_send_message_length", 64 * 1024 * 1024) in args  # the usual ones stay
    assert client.addresses == ("127.0.0.1:5001", "127.0.0.1:5002")
    Client("127.0.0.1:5003").close()
    assert opened[1][0] == "127.0.0.1:5003"
    assert not any(key == "grpc.service_config" for key, _ in opened[1][1])


def test_addresses_with_address_or_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="addresses= or address="):
        Client("127.0.0.1:1", addresses=["127.0.0.1:2"])
    with pytest.raises(ValueError, match="addresses= or address="):
        Client(channel=object(), addresses=["127.0.0.1:2"])  # type: ignore[arg-type]

    async def run() -> None:
        with pytest.raises(ValueError, match="addresses= or address="):
            AsyncClient("127.0.0.1:1", addresses=["127.0.0.1:2"])

    asyncio.run(run())


def _both_seen(a: Seen, b: Seen, call: Any) -> bool:
    call()
    return bool(a.authorizations("ListModels")) and bool(b.authorizations("ListModels"))


def test_one_tls_client_with_a_token_reaches_both_servers(pki: Pki) -> None:
    # Calls repeat until each server has seen one: round_robin uses a
    # subchannel once it is connected, so the first few may all go to one.
    with standin_server(pki) as (a, seen_a), standin_server(pki) as (b, seen_b):
        retry = RetryPolicy.disabled()
        with Client(
            addresses=[a, b], root_certificates=pki.ca.cert, token=TOKEN, retry=retry, timeout=10
        ) as client:
            wait_until(lambda: _both_seen(seen_a, seen_b, client.list_models), 30, "both servers")

        async def run() -> None:
            async with AsyncClient(
                addresses=[b, a], root_certificates=pki.ca.cert, token=TOKEN, timeout=10
            ) as aclient:
                for _ in range(200):
                    await aclient.list_models()
                    if len(seen_a.calls) > count_a and len(seen_b.calls) > count_b:
                        return
                raise AssertionError("the async client did not reach both servers")

        count_a, count_b = len(seen_a.calls), len(seen_b.calls)
        asyncio.run(run())
        for seen in (seen_a, seen_b):
            assert set(seen.authorizations("ListModels")) == {f"Bearer {TOKEN}"}


def test_cli_addresses_reach_the_client(pki: Pki, tmp_path: Path) -> None:
    assert split_addresses("127.0.0.1:1, 127.0.0.1:2,") == ["127.0.0.1:1", "127.0.0.1:2"]
    app = typer.Typer(**TYPER_SETTINGS)
    client_cmds.register(app)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.cert)
    runner = CliRunner()
    with standin_server(pki) as (a, seen_a), standin_server(pki) as (b, seen_b):
        done = runner.invoke(app, ["models", "--addresses", f"{a},{b}", "--ca", str(ca)])
        assert done.exit_code == 0, done.output
        assert "tls-model" in done.stdout
        env = {"SEQINFER_ADDRESSES": f"{b},{a}"}
        done = runner.invoke(app, ["models", "--ca", str(ca)], env=env)
        assert done.exit_code == 0, done.output
        # Seqinfer calls only: the first call of each client was preceded by its
        # health probe (``spread``), which these stand-ins answer without an id.
        calls = [c for c in seen_a.calls + seen_b.calls if c[0].startswith("/seqinfer.v1.")]
        assert len(calls) == 2
    both = runner.invoke(app, ["models", "-a", "127.0.0.1:9", "--addresses", "127.0.0.1:8"])
    assert both.exit_code == 2
    assert "addresses= or address=" in both.output
    named = runner.invoke(app, ["models", "--addresses", "localhost:8"])
    assert named.exit_code == 2
    assert "IP literals" in named.output
