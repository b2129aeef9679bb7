"""API keys of the HTTP server: random bearer tokens with scopes, stored only as their SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ft_pipeline.core.io import write_text_atomic
from ft_pipeline.core.locks import hold

SCOPES = ("log", "feedback", "read", "generate")
# ftp_<id>_<secret>: the id finds the key without a scan, the secret (256 bits) is never stored
TOKEN = re.compile(r"ftp_(?P<id>[0-9a-f]{12})_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class ApiKey:
    """One key: its id, a name for people, what it may do, and when it was made and revoked."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: str
    sha256: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """The keys file (`<data dir>/state/api_keys.json`), reread when it changes so a revocation applies at once."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "state" / "api_keys.json"
        self._seen: tuple[int, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    def all(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if self._seen != (stat.st_mtime_ns, stat.st_ino):
            rows = json.loads(self.path.read_text(encoding="utf-8"))
            self._keys = {row["id"]: ApiKey(**{**row, "scopes": tuple(row["scopes"])}) for row in rows}
            self._seen = (stat.st_mtime_ns, stat.st_ino)
        return list(self._keys.values())

    def has_active(self) -> bool:
        """Whether any key is not revoked."""
        return any(key.active for key in self.all())

    def create(self, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
        """A new key and its token; the token is shown this once and never stored."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}")
        key_id = secrets.token_hex(6)
        token = f"ftp_{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id, name, tuple(sorted(set(scopes))), datetime.now(UTC).isoformat(timespec="seconds"), _digest(token))
        with hold(self.data_dir, "api-keys"):
            self._write([*self.all(), key])
        return key, token

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked (kept, for the access log's key ids); LookupError when there is no such key."""
        with hold(self.data_dir, "api-keys"):
            keys = self.all()
            found = next((k for k in keys if k.id == key_id), None)
            if found is None:
                raise LookupError(f"no API key with id {key_id!r}")
            revoked = ApiKey(
                **{**asdict(found), "revoked_at": found.revoked_at or datetime.now(UTC).isoformat(timespec="seconds")}
            )
            self._write([revoked if k.id == key_id else k for k in keys])
        return revoked

    def authenticate(self, token: str) -> ApiKey | None:
        """The active key a bearer token belongs to, else None (compared in constant time)."""
        match = TOKEN.fullmatch(token)
        if not match:
            return None
        self.all()
        key = self._keys.get(match["id"])
        if key is None or not key.active or not hmac.compare_digest(key.sha256, _digest(token)):
            return None
        return key

    def _write(self, keys: list[ApiKey]) -> None:
        rows = [{**asdict(k), "scopes": list(k.scopes)} for k in keys]
        write_text_atomic(json.dumps(rows, indent=2) + "\n", self.path)
        self.path.chmod(0o600)
        self._seen = None
