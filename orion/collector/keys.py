"""API keys of the collector: one or more per tenant, stored only as hashes.

A key reads `ok_<id>_<secret>`: `id` is 16 hex digits that name the key (safe to log,
shown by `keys list`), `secret` is 32 random bytes, URL-safe base64. The keys file keeps
the id, the tenant and the SHA-256 of the whole key, never the key itself:

    keys:
    - id: 3f9a0c1d5e7b2a48
      tenant: acme
      sha256: 9b1c...            # hex digest of the whole key
      label: website
      created_at: '2026-11-23T11:00:00Z'

SHA-256, not scrypt or bcrypt: a slow hash protects low-entropy passwords from guessing;
these keys carry 256 random bits, so guessing is hopeless either way, and a slow hash
would cost every request tens of milliseconds of CPU. The digest is compared with
`hmac.compare_digest` (constant time), and an unknown id is compared against a dummy
digest so that a miss takes as long as a hit.

The collector rereads the file when it changes, so a key added or revoked with

    orion collect keys add --tenant acme --keys orion-data/collector-keys.yaml --label website
    orion collect keys revoke 3f9a0c1d5e7b2a48 --keys orion-data/collector-keys.yaml

takes effect without a restart.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

import yaml

KEY_PREFIX = "ok_"
_ID_HEX = 16
_KEY_PATTERN = re.compile(r"^ok_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_DUMMY_DIGEST = hashlib.sha256(b"orion: no such key").hexdigest()
RELOAD_CHECK_S = 1.0


class KeysFileError(ValueError):
    pass


class ApiKey(NamedTuple):
    """One stored key: what the file holds, never the key itself."""

    id: str
    tenant: str
    sha256: str
    label: str = ""
    created_at: str = ""


def digest(key: str) -> str:
    # surrogatepass: a header byte that is not UTF-8 comes as a lone surrogate; such a key
    # is refused as any other wrong key is, not with an error
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random key and its id."""
    key_id = secrets.token_hex(_ID_HEX // 2)
    return f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}", key_id


def read_keys(path: Path) -> dict[str, ApiKey]:
    """The keys file -> keys by id. A missing file has no keys."""
    if not path.exists():
        return {}
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise KeysFileError(f"{path}: not YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:  # a folder, a file not readable, not text
        raise KeysFileError(f"{path}: cannot be read as a keys file: {err}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeysFileError(f"{path}: expected a mapping with a list under 'keys'")
    keys: dict[str, ApiKey] = {}
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in ("id", "tenant", "sha256")):
            raise KeysFileError(f"{path}: key #{n} needs the strings id, tenant and sha256")
        if not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
            raise KeysFileError(f"{path}: key {entry['id']}: sha256 must be 64 lowercase hex digits")
        keys[entry["id"]] = ApiKey(entry["id"], entry["tenant"], entry["sha256"],
                                   str(entry.get("label", "")), str(entry.get("created_at", "")))
    return keys


def write_keys(path: Path, keys: dict[str, ApiKey]) -> None:
    """Replace the keys file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"keys": [dict(k._asdict()) for k in keys.values()]}
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("# orion collect API keys: hashes only (orion collect keys add|list|revoke)\n")
        yaml.safe_dump(document, out, sort_keys=False)
    os.replace(temporary, path)


def add_key(path: Path, tenant: str, label: str = "") -> tuple[str, ApiKey]:
    """Create a key for `tenant`, store its hash in `path`; returns (key, stored record).
    The key is shown once: only its hash is kept."""
    if not tenant or not isinstance(tenant, str):
        raise KeysFileError("a key needs a tenant")
    keys = read_keys(path)
    key, key_id = new_key()
    while key_id in keys:
        key, key_id = new_key()
    record = ApiKey(key_id, tenant, digest(key), label,
                    datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    keys[key_id] = record
    write_keys(path, keys)
    return key, record


def revoke_key(path: Path, key_id: str) -> ApiKey | None:
    keys = read_keys(path)
    removed = keys.pop(key_id, None)
    if removed is not None:
        write_keys(path, keys)
    return removed


class KeyStore:
    """The keys of a running service: `verify(key)` -> the ApiKey (so its tenant) or
    None. Rereads the file when its modification time changes (checked at most once a
    second); a file that turns unreadable keeps the keys last read.

    A service sees the same few keys on every request, so the keys that verified are
    remembered (at most MAX_REMEMBERED) and a request presenting one again skips the
    pattern match and the hash; the file reread (a key added or revoked), they are
    forgotten and verified again, so a revoked key is refused as soon as it would be
    without them. A key that does not verify is not remembered."""

    MAX_REMEMBERED = 10_000

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self._clock = clock
        self._keys = read_keys(self.path)
        self._stamp = self._file_stamp()
        self._checked = clock()
        self._verified: dict[str, ApiKey] = {}
        self.reload_errors = 0

    def _file_stamp(self):
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp != self._stamp:
            try:
                self._keys = read_keys(self.path)
            except (KeysFileError, OSError):
                self.reload_errors += 1
                return
            self._stamp = stamp
            self._verified = {}

    def __len__(self) -> int:
        return len(self._keys)

    def tenants(self) -> set[str]:
        return {k.tenant for k in self._keys.values()}

    def verify(self, presented: str) -> ApiKey | None:
        self._maybe_reload()
        remembered = self._verified.get(presented)
        if remembered is not None:
            return remembered
        match = _KEY_PATTERN.match(presented)
        record = self._keys.get(match.group(1)) if match else None
        expected = record.sha256 if record is not None else _DUMMY_DIGEST
        if hmac.compare_digest(digest(presented), expected) and record is not None:
            if len(self._verified) < self.MAX_REMEMBERED:
                self._verified[presented] = record
            return record
        return None
