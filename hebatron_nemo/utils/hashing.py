"""Content hashes recorded in manifests, checkpoints, exports and cache fingerprints."""

from __future__ import annotations

import hashlib
import json


def _update(h, path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)


def sha256_file(path) -> str:
    """The sha256 of a file, read in 4 MiB blocks (checkpoints, exports and caches record these)."""
    h = hashlib.sha256()
    _update(h, path)
    return h.hexdigest()


def files_sha256(prefix: str) -> str:
    """One hash of a `.bin/.idx` pair, recorded in manifests and used by cache fingerprints."""
    h = hashlib.sha256()
    for ext in (".bin", ".idx"):
        _update(h, prefix + ext)
    return h.hexdigest()


def stable_hash(obj) -> str:
    """A short, order-independent hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def hash64(*parts: object) -> int:
    """A 64-bit hash of the parts (blake2b of their strings joined by U+001F): stable across processes
    and machines, unlike Python's hash(); used to pick by id (held-out rows, prompt variants)."""
    key = "\x1f".join(map(str, parts)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def unit_hash(*parts: object) -> float:
    """A number in [0, 1) fixed by the parts (`hash64` scaled)."""
    return hash64(*parts) / 2.0**64
