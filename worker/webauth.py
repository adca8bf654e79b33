"""Who may act through `tidegate web`: the admin token, as a bearer header or a signed-in browser.

Signing in posts the token once; the answer sets a session cookie (HttpOnly: no script reads it;
SameSite=Strict: no other site's page sends it) holding a random nonce, the name given for the
audit trail and the time, signed with a key derived from the token. Nothing is kept on the server:
a restart keeps sessions, changing the token ends them all, and a session ends with the browser or
after ``MAX_AGE``. Each form carries a CSRF token derived from the session's nonce, checked on every
post. Tokens are compared as UTF-8 bytes in constant time, so a token with any character in it is
simply right or wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE = "tidegate_session"
MAX_AGE = 12 * 3600  # seconds a sign-in lasts at most, browser open or not


@dataclass(frozen=True)
class Session:
    name: str  # who signed in, as they said: the actor of their actions' audit rows
    csrf: str  # the token each of their forms carries


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    def __init__(self, token: str | None) -> None:
        self.token = token.encode("utf-8", "surrogateescape") if token else None
        self.key = hashlib.sha256(b"tidegate console session\0" + self.token).digest() if self.token else None

    def token_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self.token)

    def bearer_ok(self, header: str | None) -> bool:
        """``Authorization: Bearer TOKEN`` with the right token. The server reads headers as latin-1: the
        bytes sent are compared, whatever they are."""
        if not header or not header.startswith("Bearer "):
            return False
        given = header.removeprefix("Bearer ").strip().encode("latin-1", "replace")
        return self.token is not None and hmac.compare_digest(given, self.token)

    def _mac(self, text: str) -> str:
        assert self.key is not None
        return _b64(hmac.new(self.key, text.encode(), hashlib.sha256).digest())

    def cookie(self, name: str, secure: bool = False) -> str:
        """The Set-Cookie value of a new session for ``name``; ``secure``: the browser came over HTTPS (a
        proxy in front said so), so the cookie is marked to travel over HTTPS only."""
        payload = f"{_b64(secrets.token_bytes(18))}.{_b64(name.encode())}.{int(time.time())}"
        return f"{COOKIE}={payload}.{self._mac(payload)}{cookie_flags(secure)}"

    def read(self, cookie_headers: list[str]) -> Session | None:
        """The session a request's Cookie header(s) carry, or None: absent, forged, expired, or signed
        with another token."""
        if self.key is None:
            return None
        for header in cookie_headers:
            for part in header.split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE and (session := self._check(value)) is not None:
                    return session
        return None

    def _check(self, value: str) -> Session | None:
        payload, _, mac = value.rpartition(".")
        if not payload or not hmac.compare_digest(mac.encode("latin-1", "replace"), self._mac(payload).encode()):
            return None
        nonce, who, issued = payload.split(".")
        if not issued.isdigit() or not 0 <= time.time() - int(issued) <= MAX_AGE:
            return None
        return Session(_unb64(who).decode(), self._mac("csrf:" + nonce))

    def csrf_ok(self, session: Session, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), session.csrf.encode())


def cookie_flags(secure: bool) -> str:
    return "; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
