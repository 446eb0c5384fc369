"""Who may use the hub: users (`--auth user:pass`, `--auth-file`) and API keys (`--api-key`).

An auth file holds one `user:pbkdf2_sha256$ITERATIONS$SALT$HASH` line per user (`python -m demo
hash-password` writes one); blank lines and `#` comments are skipped. Passwords given on the command
line are hashed at start, so the process never keeps them in plain text.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SCHEME, ITERATIONS = "pbkdf2_sha256", 200_000


class AuthError(ValueError):
    """A malformed --auth value or auth file line."""


def hash_password(password: str, iterations: int = ITERATIONS, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8", "surrogatepass"), salt.encode(), iterations)
    return f"{SCHEME}${iterations}${salt}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, expected = stored.split("$")
    except ValueError:
        return False
    if scheme != SCHEME:
        return False
    got = hash_password(password, int(iterations), salt).rsplit("$", 1)[1]
    return hmac.compare_digest(got, expected)


@dataclass
class Access:
    users: dict[str, str] = field(default_factory=dict)  # user -> hashed password
    api_keys: set[str] = field(default_factory=set)
    # Digests of bearer tokens already verified, so an API client does not pay PBKDF2 per request.
    _verified: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.users or self.api_keys)

    def check_user(self, user: str, password: str) -> bool:
        stored = self.users.get(user)
        return stored is not None and check_password(password, stored)

    def known_bearer(self, token: str) -> str | None:
        """The client name for an API key or an already verified `user:password` token (cheap: no PBKDF2)."""
        for key in self.api_keys:
            if hmac.compare_digest(token, key):
                return f"key:{key[:6]}"
        return self._verified.get(hashlib.sha256(token.encode(errors="replace")).hexdigest())

    def check_bearer(self, token: str) -> str | None:
        """The client name for an API key or a `user:password` bearer token; None when it is neither.
        May run PBKDF2 (tens of ms): callers on an event loop run it on a thread."""
        known = self.known_bearer(token)
        if known:
            return known
        digest = hashlib.sha256(token.encode(errors="replace")).hexdigest()
        user, sep, password = token.partition(":")
        if sep and self.check_user(user, password):
            if len(self._verified) < 1000:
                self._verified[digest] = f"user:{user}"
            return f"user:{user}"
        return None


class LoginThrottle:
    """Failed logins back off exponentially, per client address and per user name: after FREE failures
    each further one locks that key for BASE_S, 2·BASE_S, 4·BASE_S ... up to MAX_S. A success clears it."""

    FREE, BASE_S, MAX_S = 3, 1.0, 300.0

    def __init__(self):
        self._state: dict[str, tuple[int, float]] = {}  # key -> (failures, locked until, monotonic)
        self._lock = threading.Lock()

    def wait_s(self, *keys: str) -> float:
        """How long these keys must still wait before another try (0: go ahead)."""
        now = time.monotonic()
        with self._lock:
            return max([0.0] + [self._state.get(k, (0, 0.0))[1] - now for k in keys])

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                failures = self._state.get(key, (0, 0.0))[0] + 1
                delay = 0.0 if failures <= self.FREE else min(self.MAX_S, self.BASE_S * 2 ** (failures - self.FREE - 1))
                self._state[key] = (failures, now + delay)
            if len(self._state) > 10_000:  # forget keys whose lock ran out long ago
                for key in [k for k, (_, until) in self._state.items() if now - until > self.MAX_S]:
                    del self._state[key]

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._state.pop(key, None)


def parse_user_pass(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise AuthError(f"--auth takes user:password (got {value!r})")
    return user, password


def read_auth_file(path: str | os.PathLike) -> dict[str, str]:
    users = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise AuthError(f"{path}: cannot read the auth file: {e.strerror or e}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or stored.count("$") != 3 or not stored.startswith(SCHEME + "$"):
            raise AuthError(f"{path}:{number}: expected user:{SCHEME}$ITERATIONS$SALT$HASH "
                            "(make one with `python -m demo hash-password USER`)")
        users[user] = stored
    return users


def build_access(auth: list[str] | None, auth_file: str | None, api_keys: list[str] | None) -> Access:
    users = read_auth_file(auth_file) if auth_file else {}
    for value in auth or []:
        user, password = parse_user_pass(value)
        users[user] = hash_password(password, iterations=50_000)
    keys = set(api_keys or []) | {k for k in os.environ.get("HUB_API_KEYS", "").split(",") if k.strip()}
    return Access(users, {k.strip() for k in keys})
