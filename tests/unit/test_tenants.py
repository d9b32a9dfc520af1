"""The token file, token checks and the steps-per-second bucket, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqinfer.service import tenants
from seqinfer.service.errors import TenantQuota, Unauthenticated
from seqinfer.service.tenants import StepRate, TokenFileError, TokenTable, session_key, token_hash


def test_tokens_name_their_tenant_and_the_file_holds_only_hashes(tmp_path: Path):
    token = tenants.new_token()
    path = tmp_path / "tokens"
    path.write_text(f"\n# comment\n{token_hash(token)} acme max_sessions=3  # trailing\n")
    table = TokenTable.load(path)
    assert token not in path.read_text()
    tenant = table.tenant_of(token)
    assert (tenant.name, tenant.max_sessions, tenant.steps_per_second) == ("acme", 3, 0.0)
    for wrong in (None, "", token + "x", token_hash(token)):
        with pytest.raises(Unauthenticated):
            table.tenant_of(wrong)


def test_models_lists_the_only_models_a_tenant_may_use(tmp_path: Path):
    path = tmp_path / "tokens"
    path.write_text(f"{'a' * 64} acme models=m,n max_sessions=2\n{'b' * 64} open\n")
    table = TokenTable.load(path)
    assert table.tenants["acme"].models == frozenset({"m", "n"})
    assert table.tenants["acme"].max_sessions == 2
    assert table.tenants["open"].models is None


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("abc acme", "64 hex digits"),
        ("z" * 64 + " acme", "not hexadecimal"),
        ("a" * 64, "expected"),
        ("a" * 64 + " acme max_session=1", "unknown option"),
        ("a" * 64 + " acme steps_per_second=fast", "must be a number"),
        ("a" * 64 + " acme max_sessions=-1", ">= 0"),
        ("a" * 64 + " acme steps_per_second=nan", "finite"),
        ("a" * 64 + " acme models=", "at least one model"),
    ],
)
def test_a_bad_token_file_is_refused_with_its_line_named(tmp_path: Path, line: str, needle: str):
    path = tmp_path / "tokens"
    path.write_text(f"{'b' * 64} fine\n\n{line}\n")
    with pytest.raises(TokenFileError) as error:
        TokenTable.load(path)
    assert "line 3" in str(error.value) and needle in str(error.value)


def test_an_empty_or_missing_token_file_is_refused(tmp_path: Path):
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(TokenFileError, match="no tokens"):
        TokenTable.load(tmp_path / "empty")
    with pytest.raises(TokenFileError, match="cannot read"):
        TokenTable.load(tmp_path / "missing")


def test_keys_of_different_tenants_never_collide():
    assert session_key("", "s") == "s"
    assert session_key("a", "s") != session_key("b", "s") != "s"
    assert session_key("a", "s").startswith("a") and session_key("a", "s").endswith("s")


def test_the_step_bucket_refills_at_its_rate(monkeypatch: pytest.MonkeyPatch):
    clock = [100.0]
    monkeypatch.setattr(tenants.time, "monotonic", lambda: clock[0])
    rate = StepRate(10.0)
    rate.take("t", 10)  # a full second's worth at once
    with pytest.raises(TenantQuota) as refused:
        rate.take("t", 1)
    assert refused.value.metadata["retry_after_seconds"] == "0.100"
    clock[0] += 0.2  # two steps' worth (0.1 would be 0.99999... in floating point)
    rate.take("t", 1)
    rate.give_back(1)  # a refused step is not counted
    rate.take("t", 1)
    clock[0] += 60
    rate.take("t", 25)  # larger than the bucket: passes when it is full, then owes
    with pytest.raises(TenantQuota):
        rate.take("t", 1)


def test_queue_quotas_are_read_from_the_token_line(tmp_path: Path):
    path = tmp_path / "tokens"
    path.write_text(f"{token_hash('t')} acme max_queued=32 max_queued_bytes=65536\n")
    tenant = TokenTable.load(path).tenant_of("t")
    assert (tenant.max_queued, tenant.max_queued_bytes, tenant.max_sessions) == (32, 65536, 0)
    path.write_text(f"{token_hash('t')} acme max_queue=32\n")
    with pytest.raises(TokenFileError, match="line 1: unknown option 'max_queue'"):
        TokenTable.load(path)
