"""API keys with roles, stored per collection (in its SQLite store), only as salted hashes.

A key is ``xmk_<key_id>_<secret>`` with a 256-bit random secret. Such a secret cannot be
guessed, so a salted SHA-256 is enough (slow password hashes protect low-entropy passwords
and would add milliseconds to every request). Roles are ordered: read < write < admin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from ..index.collection import Collection
from ..index.store import Store

ROLES = {"read": 1, "write": 2, "admin": 3}
PREFIX = "xmk_"


class KeyError_(ValueError):
    """A bad role or an unknown key id."""


def _hash(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("utf-8")).digest()


def create_key(coll: Collection, role: str, name: str = "", actor: str = "local",
               remote: str | None = None) -> str:
    """A new key; the returned token is shown once and never stored."""
    if role not in ROLES:
        raise KeyError_(f"role must be one of {sorted(ROLES, key=ROLES.get)}, got {role!r}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    with coll.store.transaction() as c:
        c.execute("INSERT INTO api_keys (key_id, name, role, salt, hash, created) VALUES (?, ?, ?, ?, ?, ?)",
                  (key_id, name or "", role, salt, _hash(salt, secret), time.time()))
        Store.audit(c, actor, "create_key", {"key_id": key_id, "role": role, "name": name}, remote)
    return f"{PREFIX}{key_id}_{secret}"


def revoke_key(coll: Collection, key_id: str, actor: str = "local", remote: str | None = None) -> None:
    with coll.store.transaction() as c:
        cur = c.execute("UPDATE api_keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL",
                        (time.time(), key_id))
        if cur.rowcount == 0:
            raise KeyError_(f"no active key with id {key_id!r}")
        Store.audit(c, actor, "revoke_key", {"key_id": key_id}, remote)


def list_keys(coll: Collection) -> list[dict[str, Any]]:
    rows = coll.store.query("SELECT key_id, name, role, created, revoked FROM api_keys ORDER BY created")
    # one record for GET /api/keys and `xmodal keys list --json` alike
    return [{"key_id": r[0], "name": r[1], "role": r[2], "created": r[3], "revoked": r[4] is not None,
             "revoked_at": r[4]} for r in rows]


def verify_key(coll: Collection, token: str) -> tuple[str, str] | None:
    """(key_id, role) for a valid, unrevoked token; None otherwise."""
    if not token or not token.startswith(PREFIX) or len(token) > 200:
        return None
    key_id, sep, secret = token[len(PREFIX):].partition("_")
    if not sep or not secret:
        return None
    rows = coll.store.query("SELECT salt, hash, role FROM api_keys WHERE key_id = ? AND revoked IS NULL",
                            (key_id,))
    if not rows:
        return None
    salt, stored, role = rows[0]
    if not hmac.compare_digest(_hash(salt, secret), stored):
        return None
    return key_id, role


def allows(role: str | None, needed: str) -> bool:
    return role is not None and ROLES[role] >= ROLES[needed]
