"""Bearer tokens from a file (no heavy imports: both runtimes' auth and the clients read this).

The file holds one token per line (blank lines and `#` comments skipped), as a Kubernetes Secret
mounts it; it is read again whenever it changes (the kubelet swaps a Secret's files in place), so a
rotated token takes effect without a restart. A token is compared in constant time against every
accepted one, so neither a match nor its position shows in the timing. An empty or missing file
accepts nothing: auth that is asked for never fails open."""
from __future__ import annotations

import hmac
import logging
import os
import threading
from pathlib import Path

from handlers.errors import Unauthenticated

log = logging.getLogger(__name__)

SCHEME = "Bearer"
TOKEN_ENV = "SERVE_TOKEN"  # what the clients send when no --token is given
REST_HOW = "Authorization: Bearer <token>"  # where a token goes, as the refusals say
GRPC_HOW = "metadata authorization: Bearer <token>"


class TokenFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._tokens: tuple[bytes, ...] = ()
        self._seen: tuple | None = None
        self._lock = threading.Lock()

    def _signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def tokens(self) -> tuple[bytes, ...]:
        """The accepted tokens, re-read when the file changed since the last call."""
        signature = self._signature()
        if signature != self._seen:
            with self._lock:
                if signature != self._seen:
                    self._tokens = self._read()
                    self._seen = signature
        return self._tokens

    def _read(self) -> tuple[bytes, ...]:
        try:
            lines = self.path.read_text().splitlines()
        except OSError as e:
            log.error("auth: cannot read the token file %s (%s): every request is refused", self.path, e)
            return ()
        tokens = tuple(line.strip().encode() for line in lines if line.strip() and not line.strip().startswith("#"))
        if not tokens:
            log.error("auth: no token in %s: every request is refused", self.path)
        else:
            log.info("auth: %d token(s) from %s", len(tokens), self.path)
        return tokens

    def accepts(self, authorization: str | bytes | None) -> bool:
        """Whether an Authorization value ("Bearer <token>") carries an accepted token."""
        if not authorization:
            return False
        if isinstance(authorization, str):
            authorization = authorization.encode("latin-1", "replace")
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != SCHEME.lower().encode() or not token.strip():
            return False
        token = token.strip()
        matched = False
        for accepted in self.tokens():
            matched |= hmac.compare_digest(token, accepted)  # every token compared: no early exit
        return matched


def refusal(given, how: str) -> Unauthenticated:
    """The error for a missing (None) or unaccepted token; `how` says where the token goes."""
    return Unauthenticated(f"a bearer token is required ({how})" if given is None
                           else "the bearer token is not accepted")


def challenge(given) -> str:
    """WWW-Authenticate of a REST 401 (RFC 6750: invalid_token once a token was sent)."""
    return f'{SCHEME} realm="image-classifier"' + (', error="invalid_token"' if given else "")


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header for `token` (none without one)."""
    return {"Authorization": f"{SCHEME} {token}"} if token else {}
