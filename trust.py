"""Who built a saved model: the per-user artifact key and the manifest's MAC.

A saved TVM or CUDA model holds native code (model.so, model.fatbin, CUDA source that
is compiled on load), and loading it runs that code. requant therefore loads such a
directory without asking only when it can tell that this user's own requant wrote it.
It tells by a keyed MAC: HMAC-SHA256 (RFC 2104) over the manifest's fields, under a
secret key that lives in the user's configuration directory and never inside an
artifact. The manifest lists the sha256 of every file of the save, so the MAC covers
the files too; anyone without the key can change a byte of any file, or of the
manifest, but cannot produce a MAC that verifies here.

What this module owns:
- `key_path()`: where the key lives: `$REQUANT_CONFIG_DIR/artifact.key`, else
  `$XDG_CONFIG_HOME/requant/artifact.key`, else `~/.config/requant/artifact.key`;
- `user_key(create=...)`: the 32 random bytes of that file, created on first use with
  mode 0600 in a 0700 directory (written to a temporary file and linked into place, so
  two processes creating it at once agree on one key); a key file that other users
  can read or write is refused, since whoever reads it can forge MACs;
- `sign_manifest(manifest)` and `manifest_provenance(manifest)`: the MAC record stored
  under the manifest's "mac" field ({"alg", "key_id", "value"}), and whether a
  manifest's MAC verifies under this user's key. `key_id` (a hash of the key, not the
  key) only lets a message say "signed by another key" rather than "tampered".

The MAC is over the canonical JSON of the manifest without its "mac" field (sorted
keys, no whitespace, ASCII), prefixed with a domain tag, so a MAC made for one purpose
cannot be replayed for another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from requant.errors import TrustError

__all__ = [
    "KEY_FILE",
    "MAC_ALGORITHM",
    "MAC_FIELD",
    "Provenance",
    "key_path",
    "user_key",
    "key_id",
    "manifest_mac",
    "sign_manifest",
    "manifest_provenance",
]

logger = logging.getLogger(__name__)

KEY_FILE = "artifact.key"
KEY_BYTES = 32
MAC_ALGORITHM = "hmac-sha256"
MAC_FIELD = "mac"
_DOMAIN_TAG = b"requant saved-model manifest v1\x00"


def key_path() -> Path:
    """The key file's path (module docstring); nothing is created here."""
    explicit = os.environ.get("REQUANT_CONFIG_DIR")
    if explicit:
        return Path(explicit) / KEY_FILE
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "requant" / KEY_FILE


def _read_key(path: Path) -> bytes:
    """The key in `path`, refused when the file is not a private regular file of ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise TrustError(f"cannot read the artifact key {path}: {exc.strerror}; "
                         f"remove it to have requant create a new one") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TrustError(f"the artifact key {path} is not a regular file; remove it")
        if info.st_mode & 0o077:
            raise TrustError(f"the artifact key {path} is readable or writable by other users, who could "
                             f"forge saved models: run `chmod 600 {path}`")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise TrustError(f"the artifact key {path} belongs to another user; remove it")
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise TrustError(f"the artifact key {path} holds {len(data)} bytes, not {KEY_BYTES}; remove it "
                         f"(saved models signed with it will then need trust_code=True)")
    return data


def _create_key(path: Path) -> None:
    """A new random key at `path`, unless another process made one first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic, and never replaces a key another process linked first
        logger.info("created the artifact key %s", path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def user_key(*, create: bool) -> bytes | None:
    """This user's artifact key; None when there is none and `create` is False."""
    path = key_path()
    if not os.path.lexists(path):
        if not create:
            return None
        try:
            _create_key(path)
        except OSError as exc:
            raise TrustError(f"cannot create the artifact key {path}: {exc.strerror}; set REQUANT_CONFIG_DIR "
                             f"to a directory you can write") from exc
    return _read_key(path)


def key_id(key: bytes) -> str:
    """A short public name of `key` (a hash: it reveals nothing of the key)."""
    return hashlib.sha256(b"requant key id\x00" + key).hexdigest()[:16]


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != MAC_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def manifest_mac(manifest: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of the manifest's fields (all but "mac") under `key`, as hex."""
    return hmac.new(key, _DOMAIN_TAG + _canonical(manifest), hashlib.sha256).hexdigest()


def sign_manifest(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The "mac" record for `manifest` under this user's key (created on first use)."""
    key = user_key(create=True)
    assert key is not None
    return {"alg": MAC_ALGORITHM, "key_id": key_id(key), "value": manifest_mac(manifest, key)}


@dataclass(frozen=True)
class Provenance:
    """Whether a manifest's MAC verifies under this user's key, and if not, why."""

    built_here: bool
    reason: str  # one clause, for messages: "signed by this user's key", "no MAC", ...


def manifest_provenance(manifest: Mapping[str, Any]) -> Provenance:
    """Check the manifest's "mac" record against this user's key (never creates one)."""
    record = manifest.get(MAC_FIELD)
    if not isinstance(record, Mapping) or not all(isinstance(record.get(k), str) for k in ("alg", "key_id", "value")):
        return Provenance(False, "its manifest carries no MAC")
    if record["alg"] != MAC_ALGORITHM:
        return Provenance(False, f"its manifest's MAC algorithm {record['alg']!r} is not {MAC_ALGORITHM}")
    key = user_key(create=False)
    if key is None:
        return Provenance(False, f"this user has no artifact key yet ({key_path()})")
    if not hmac.compare_digest(record["key_id"], key_id(key)):
        return Provenance(False, "its manifest was signed with another user's or machine's key")
    if not hmac.compare_digest(record["value"], manifest_mac(manifest, key)):
        return Provenance(False, "its manifest's MAC does not verify (the manifest was edited after saving)")
    return Provenance(True, "signed by this user's key")
