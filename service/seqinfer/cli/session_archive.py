"""The export file of `seqinfer sessions export`: store records, as stored, in one portable file.

Records go into the file byte for byte as the store holds them, not
re-encoded: each is already self-checking (magic, version, CRC-32; see
``service.records``), so the file needs no checksum of its own over them,
and an import can refuse one bad record by name and keep the rest. What the
container adds is only what the records cannot say themselves: which store
key each was filed under, and how many there are, so that a file cut short
at a record boundary is told from a complete one.

Layout (little-endian)::

    magic  b"SQEXPORT"   8 bytes
    version              u16   (ARCHIVE_VERSION)
    count                u64
    count times:
        key length       u32
        key              UTF-8 (the store key: the id, or tenant U+001F id)
        record length    u64
        record           bytes (a session record, as stored)

Nothing may follow the last entry. Plain data and the standard library
only: reading or writing an export imports no torch.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import BinaryIO

ARCHIVE_MAGIC = b"SQEXPORT"
ARCHIVE_VERSION = 1
_HEADER = struct.Struct("<8sHQ")
_KEY_LEN = struct.Struct("<I")
_RECORD_LEN = struct.Struct("<Q")


class ArchiveError(Exception):
    """The file is not a complete export this version reads; nothing in it is trusted."""


def write_archive(out: BinaryIO, entries: Sequence[tuple[str, bytes]]) -> None:
    """``(store key, record)`` pairs to ``out``, in the layout above."""
    out.write(_HEADER.pack(ARCHIVE_MAGIC, ARCHIVE_VERSION, len(entries)))
    for key, record in entries:
        raw_key = key.encode()
        out.write(_KEY_LEN.pack(len(raw_key)) + raw_key)
        out.write(_RECORD_LEN.pack(len(record)) + record)


def read_archive(data: bytes) -> list[tuple[str, bytes]]:
    """Every ``(store key, record)`` of an export; ArchiveError if the file is not whole.

    The records are not checked here (the caller decodes each and refuses
    the bad ones by name); only the container's own structure is.
    """
    if len(data) < _HEADER.size:
        raise ArchiveError(f"not a seqinfer sessions export ({len(data)} bytes, no header)")
    magic, version, count = _HEADER.unpack_from(data)
    if magic != ARCHIVE_MAGIC:
        raise ArchiveError("not a seqinfer sessions export (bad magic)")
    if version != ARCHIVE_VERSION:
        raise ArchiveError(
            f"unknown export format version {version} (this seqinfer reads {ARCHIVE_VERSION})"
        )
    at = _HEADER.size
    entries: list[tuple[str, bytes]] = []
    for index in range(count):
        where = f"entry {index + 1} of {count}"
        key_len = _take(data, at, _KEY_LEN, where)
        at += _KEY_LEN.size
        if at + key_len > len(data):
            raise ArchiveError(f"export cut short in the key of {where}")
        try:
            key = data[at : at + key_len].decode()
        except UnicodeDecodeError as exc:
            raise ArchiveError(f"{where}: key is not UTF-8 ({exc})") from exc
        at += key_len
        record_len = _take(data, at, _RECORD_LEN, f"{where} ({key!r})")
        at += _RECORD_LEN.size
        if at + record_len > len(data):
            raise ArchiveError(
                f"export cut short in the record of {where} ({key!r}): "
                f"{len(data) - at} of {record_len} bytes"
            )
        entries.append((key, data[at : at + record_len]))
        at += record_len
    if at != len(data):
        raise ArchiveError(f"{len(data) - at} bytes after the last of {count} entries")
    return entries


def _take(data: bytes, at: int, field: struct.Struct, where: str) -> int:
    if at + field.size > len(data):
        raise ArchiveError(f"export cut short at {where}")
    (value,) = field.unpack_from(data, at)
    return int(value)
