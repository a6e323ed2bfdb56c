"""Admin keys and roles: ``BALDUR_ADMIN_KEYS`` parsed into digests, looked up in constant time.

A key is never kept, logged or shown: only its sha256 digest is held, and
what the audit, the logs and error messages show is its key id
(``"k-" + sha256(key)[:10]``).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from baldur.errors import ConfigError

__all__ = ["MIN_KEY_LENGTH", "AdminKeys", "Principal", "Role", "key_id", "parse_admin_keys"]

#: Shorter keys are refused: a bearer key is the only secret between the network and the breakers.
MIN_KEY_LENGTH = 16


class Role(enum.IntEnum):
    """viewer < operator < admin: each role may do what the roles below it may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a key's id and its role (a Django adapter passes its own)."""

    key_id: str
    role: Role


def key_id(key: str) -> str:
    return "k-" + hashlib.sha256(key.encode()).hexdigest()[:10]


@dataclass(frozen=True, slots=True)
class AdminKeys:
    """The configured keys as (digest, principal) pairs; never the keys themselves."""

    entries: tuple[tuple[bytes, Principal], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __repr__(self) -> str:
        return f"AdminKeys({', '.join(f'{p.role}:{p.key_id}' for _, p in self.entries)})"

    def lookup(self, key: str) -> Principal | None:
        """The principal holding ``key``, comparing its digest with every configured one in
        constant time (no early exit: the time taken says nothing about which digest matched)."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for configured, principal in self.entries:
            if hmac.compare_digest(digest, configured):
                found = principal
        return found


_EXAMPLE = "BALDUR_ADMIN_KEYS=operator:replace-with-32-random-characters"


def parse_admin_keys(setting: str, value: object, example: str = _EXAMPLE) -> AdminKeys:
    """``role:key`` entries separated by commas or newlines (``#`` starts a comment), inline or
    ``@/path/to/file``. A bad entry is a ``ConfigError`` naming it by position and key id."""
    if isinstance(value, AdminKeys):
        return value
    if value is None:
        return AdminKeys()
    if not isinstance(value, str):
        raise ConfigError(setting, type(value).__name__, example, "expected a string of role:key entries")
    text = value.strip()
    where = ""
    if text.startswith("@"):
        path = Path(text[1:].strip())
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(setting, value, example, f"cannot read the key file: {exc.strerror or exc}") from None
        where = f"{path}: "
    entries: list[tuple[bytes, Principal]] = []
    seen: dict[bytes, int] = {}
    number = 0
    for line in text.splitlines():
        for raw in line.split("#", 1)[0].split(","):
            entry = raw.strip()
            if not entry:
                continue
            number += 1
            role_name, colon, key = entry.partition(":")
            role_name, key = role_name.strip().lower(), key.strip()

            def refuse(why: str, shown: str, number: int = number) -> ConfigError:
                return ConfigError(setting, f"{where}entry {number}: {shown}", example, why)

            roles = ", ".join(str(role) for role in Role)
            if not colon:
                # No colon: the whole entry may be a key; show only its id.
                raise refuse(f"expected role:key with a role among {roles}", key_id(entry))
            if role_name not in {str(role) for role in Role}:
                raise refuse(f"unknown role {role_name[:20]!r}; roles are {roles}",
                             f"{role_name[:20]}:{key_id(key)}" if key else role_name[:20])
            if not key:
                raise refuse("the key is empty", f"{role_name}:")
            if len(key) < MIN_KEY_LENGTH:
                raise refuse(f"the key has {len(key)} characters; a key needs at least {MIN_KEY_LENGTH}, "
                             f"e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
                             f"{role_name}:{key_id(key)}")
            digest = hashlib.sha256(key.encode()).digest()
            if digest in seen:
                raise refuse(f"the same key as entry {seen[digest]}; each key must be distinct",
                             f"{role_name}:{key_id(key)}")
            seen[digest] = number
            entries.append((digest, Principal(key_id(key), Role[role_name.upper()])))
    if not entries and value.strip():
        raise ConfigError(setting, f"{where}no entries", example, "no role:key entry")
    return AdminKeys(tuple(entries))
