"""Raw messages kept once, by digest, in packs; data folders from before the packs still read."""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing
from pathlib import Path

import pytest

from feeds.errors import StoreError
from feeds.rawstore import RawPacks, kept_digests, legacy_path, read_raw


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def test_a_message_is_kept_once_and_read_back_exactly(tmp_path: Path) -> None:
    messages = [b"Subject: one\r\n\r\nbody\r\n", b"Subject: two\r\n\r\n\xff\x00 8-bit\r\n"]
    packs = RawPacks(tmp_path)
    assert packs.keep({_digest(m): m for m in messages}) == 2
    assert packs.keep({_digest(m): m for m in messages}) == 0  # recurring: nothing written
    packs.close()
    again = RawPacks(tmp_path)  # another process, e.g. a second ingest worker
    assert again.keep({_digest(messages[0]): messages[0]}) == 0
    again.close()
    for message in messages:
        assert read_raw(tmp_path, _digest(message)) == message
    assert sorted(kept_digests(tmp_path)) == sorted(_digest(m) for m in messages)


def test_raw_files_from_before_the_packs_still_read(tmp_path: Path) -> None:
    old = b"Subject: kept as a file\r\n\r\nbody\r\n"
    path = legacy_path(tmp_path, _digest(old))
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(old))
    new = b"Subject: kept in a pack\r\n\r\nbody\r\n"
    packs = RawPacks(tmp_path)
    packs.keep({_digest(new): new})
    packs.close()

    assert read_raw(tmp_path, _digest(old)) == old
    assert read_raw(tmp_path, _digest(new)) == new
    assert sorted(kept_digests(tmp_path)) == sorted([_digest(old), _digest(new)])


def test_a_missing_or_damaged_message_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is not in"):
        read_raw(tmp_path, "0" * 64)
    with pytest.raises(StoreError, match="not a SHA-256"):
        read_raw(tmp_path, "../etc/passwd")
    damaged = b"Subject: damaged\r\n\r\n"
    path = legacy_path(tmp_path, _digest(damaged))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not gzip")
    with pytest.raises(StoreError, match="damaged"):
        read_raw(tmp_path, _digest(damaged))


def _keep_one_in_pack_a(raw_dir: Path, text: str) -> str:
    """In a process of its own, as an ingest worker: keep one message whose pack is 'a'."""
    raw, n = b"", 0
    while not _digest(raw).startswith("a"):
        n += 1
        raw = f"Subject: {text} {n}\r\n\r\nbody\r\n".encode()
    packs = RawPacks(raw_dir)
    try:
        packs.keep({_digest(raw): raw})
    finally:
        packs.close()
    return _digest(raw)


def test_two_workers_make_the_same_new_pack_at_once(tmp_path: Path) -> None:
    # SQLite refused about one in twenty such races ("database is locked") before the packs
    # waited for each other's switch to WAL; 100 rounds miss that with odds below 1 in 100.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        for round_ in range(100):
            raw_dir = tmp_path / str(round_)
            kept = pool.starmap(_keep_one_in_pack_a, [(raw_dir, "one"), (raw_dir, "two")])
            assert sorted(kept_digests(raw_dir)) == sorted(kept)
