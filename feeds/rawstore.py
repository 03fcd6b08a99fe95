"""Raw messages in the data folder, content-addressed by SHA-256, compressed, written once.

``<raw_dir>/ab/cd/<sha256>.eml.gz``: a message that recurs a million times is stored once.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

from feeds.errors import StoreError

_SHA256 = re.compile(r"[0-9a-f]{64}")


def raw_path(raw_dir: Path, sha256: str) -> Path:
    return Path(raw_dir) / sha256[:2] / sha256[2:4] / f"{sha256}.eml.gz"


def store_raw(raw_dir: Path, sha256: str, raw: bytes) -> bool:
    """Keep ``raw`` under its digest unless already kept; True when this call wrote it."""
    # Plain os calls, no pathlib: this runs for every message ingested.
    folder = f"{raw_dir}/{sha256[:2]}/{sha256[2:4]}"
    path = f"{folder}/{sha256}.eml.gz"
    if folder not in _known_folders:
        os.makedirs(folder, exist_ok=True)  # noqa: PTH103
        _known_folders.add(folder)
    if os.path.exists(path):  # noqa: PTH110
        return False
    temporary = f"{folder}/.{sha256}.{os.getpid()}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(gzip.compress(raw, compresslevel=6, mtime=0))
    # The rename makes the file appear whole or not at all, whoever else writes it too.
    os.replace(temporary, path)  # noqa: PTH105
    return True


_known_folders: set[str] = set()


def read_raw(raw_dir: Path, sha256: str) -> bytes:
    """The exact bytes of the raw message with this digest."""
    if not _SHA256.fullmatch(sha256):
        raise StoreError(f"not a SHA-256 digest: {sha256!r}", hint="give 64 lowercase hex digits")
    path = raw_path(raw_dir, sha256)
    try:
        return gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(
            f"raw message {sha256} is not in {raw_dir}",
            hint="check SPAMPOTS_HOME: raw messages live in its raw/ folder",
        ) from None
    except (OSError, EOFError) as error:
        raise StoreError(
            f"raw message file {path} is damaged: {error}",
            hint="re-ingest the batch that carried it",
        ) from None
