"""RedisStore against a real redis-server: compare-and-set, whole batches, reads, deletes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqinfer.service.store import StoreUnavailable, StoreWrite
from seqinfer.service.store_redis import RedisStore
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - fixture

pytest.importorskip("redis")


def test_an_older_revision_is_refused_equal_and_newer_accepted(redis_server: RedisServer):  # noqa: F811
    store = RedisStore(redis_server.url, "t:")
    assert store.write([StoreWrite("a", 5, b"a5"), StoreWrite("b", 1, b"b1")]) == []
    refused = store.write([StoreWrite("a", 4, b"a4"), StoreWrite("b", 2, b"b2")])
    assert refused == ["a"]
    assert store.read(["a", "b"]) == {"a": b"a5", "b": b"b2"}
    assert store.write([StoreWrite("a", 5, b"a5bis")]) == []  # equal: a rewrite of the same state
    assert store.write([StoreWrite("a", 9, b"a9")]) == []
    assert store.read(["a"]) == {"a": b"a9"}
    assert store.revisions(["a", "b", "missing"]) == {"a": 9, "b": 2}
    store.close()


def test_plain_pairs_overwrite_and_keep_the_held_revision(redis_server: RedisServer):  # noqa: F811
    store = RedisStore(redis_server.url, "t:")
    store.write([StoreWrite("a", 7, b"a7")])
    store.write([("a", b"plain"), ("new", b"n")])
    assert store.read(["a", "new"]) == {"a": b"plain", "new": b"n"}
    assert store.revisions(["a", "new"]) == {"a": 7, "new": 0}
    assert store.write([StoreWrite("a", 6, b"a6")]) == ["a"]


def test_read_all_read_and_delete_stay_inside_the_prefix(redis_server: RedisServer):  # noqa: F811
    mine = RedisStore(redis_server.url, "dep[1]:")  # glob characters must match only themselves
    other = RedisStore(redis_server.url, "dep2:")
    records = {f"tenant/s{i}": bytes([i % 256]) * (i + 1) for i in range(2500)}
    mine.write([StoreWrite(k, 1, v) for k, v in records.items()])
    other.write([("x", b"other deployment")])
    assert dict(mine.read_all()) == records
    assert mine.read(["tenant/s3", "nope"]) == {"tenant/s3": records["tenant/s3"]}
    mine.delete([f"tenant/s{i}" for i in range(2000)])
    left = {k: v for k, v in records.items() if int(k.split("s")[-1]) >= 2000}
    assert dict(mine.read_all()) == left
    mine.write([StoreWrite("tenant/s2100", 2, b"z")], deletes=["tenant/s2001"])
    assert mine.read(["tenant/s2100", "tenant/s2001"]) == {"tenant/s2100": b"z"}
    assert dict(other.read_all()) == {"x": b"other deployment"}


def test_a_batch_is_seen_whole_or_not_at_all(redis_server: RedisServer):  # noqa: F811
    """A reader polling during big batches never sees half of one: every batch
    writes all keys at one generation, so a mixed read would be a torn batch."""
    import redis

    store = RedisStore(redis_server.url, "t:")
    keys = [f"k{i}" for i in range(300)]
    store.write([StoreWrite(k, 0, b"0") for k in keys])
    seen: set[frozenset[bytes]] = set()
    stop = threading.Event()

    def reader() -> None:
        client = redis.Redis.from_url(redis_server.url)
        while not stop.is_set():
            # One MULTI: a consistent cut of all keys at one point in time.
            pipe = client.pipeline(transaction=True)
            for k in keys:
                pipe.hget("t:" + k, "record")
            seen.add(frozenset(pipe.execute()))
        client.close()

    thread = threading.Thread(target=reader)
    thread.start()
    for generation in range(1, 40):
        store.write([StoreWrite(k, generation, str(generation).encode()) for k in keys])
    stop.set()
    thread.join()
    assert seen, "the reader read nothing"
    assert all(len(cut) == 1 for cut in seen), "a read saw two generations of one batch"


def test_a_failing_batch_sends_nothing(redis_server: RedisServer):  # noqa: F811
    store = RedisStore(redis_server.url, "t:")
    store.write([("kept", b"old")])

    def records() -> Iterator[tuple[str, bytes]]:
        yield "kept", b"new"
        raise RuntimeError("the snapshot failed half-way")

    with pytest.raises(RuntimeError):
        store.write(records(), deletes=["kept"])
    with pytest.raises(TypeError):
        store.write([("kept", "not bytes")])  # type: ignore[list-item]
    assert store.read(["kept"]) == {"kept": b"old"}


def test_redis_gone_raises_store_unavailable_and_recovers(tmp_path: Path):
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        store = RedisStore(server.url, "t:", timeout=2.0)
        store.write([StoreWrite("a", 1, b"before")])
        server.stop()
        with pytest.raises(StoreUnavailable, match="redis at"):
            store.write([StoreWrite("a", 2, b"while down")])
        with pytest.raises(StoreUnavailable):
            list(store.read_all())
        server.start()  # same port and directory: the append-only file brings "a" back
        assert store.read(["a"]) == {"a": b"before"}
        # The restarted Redis has no script cached: the write re-loads it.
        assert store.write([StoreWrite("a", 3, b"after")]) == []
        assert dict(store.read_all()) == {"a": b"after"}
    finally:
        server.stop()


def test_starting_with_redis_down_fails_clearly(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")  # never started: nothing listens on its port
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{server.port}"):
        RedisStore(server.url, timeout=1.0)


def test_a_large_write_goes_as_scripts_of_bounded_size(
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
):
    from seqinfer.service import store_redis

    monkeypatch.setattr(store_redis, "CHUNK_KEYS", 100)
    monkeypatch.setattr(store_redis, "CHUNK_BYTES", 2000)  # 50 records of 40 bytes
    store = RedisStore(redis_server.url, "t:")
    sent: list[int] = []
    script = store._cas

    def counting(keys: list[str], args: list[object]) -> object:
        sent.append(len(keys))
        return script(keys=keys, args=args)

    store._cas = counting  # type: ignore[assignment]
    store.write([StoreWrite(f"k{i}", 5, b"x" * 40) for i in range(330)])
    assert sent == [50] * 6 + [30], "split by bytes, every record sent once"
    assert len(dict(store.read_all())) == 330
    sent.clear()
    # Stale keys are found in every chunk; 250 deletes go as scripts of at most 100 keys.
    refused = store.write(
        [StoreWrite(f"k{i}", 4 if i % 60 == 0 else 6, b"y" * 40) for i in range(120)],
        [f"k{i}" for i in range(80, 330)],
    )
    assert refused == [f"k{i}" for i in (0, 60)]
    assert sent == [50, 50, 20 + 100, 100, 50]
    held = dict(store.read_all())
    assert sorted(held) == sorted(f"k{i}" for i in range(80))
    assert held["k0"] == b"x" * 40 and held["k1"] == b"y" * 40
    store.close()


def test_records_of_any_bytes_like_and_length_round_trip(redis_server: RedisServer):  # noqa: F811
    store = RedisStore(redis_server.url, "t:")
    data = bytes(range(256)) * 3 + b"\x00:,"  # the separators the script parses, inside a record
    entries = [
        StoreWrite("empty", 1, b""),
        StoreWrite("array", 2, bytearray(data)),
        ("view", memoryview(data)[5:]),
        StoreWrite("last", 3, data),
    ]
    assert store.write(entries) == []
    assert store.read(["empty", "array", "view", "last"]) == {
        "empty": b"",
        "array": data,
        "view": data[5:],
        "last": data,
    }
    assert store.revisions(["empty", "array", "view", "last"]) == {
        "empty": 1, "array": 2, "view": 0, "last": 3,
    }  # fmt: skip
    store.close()
