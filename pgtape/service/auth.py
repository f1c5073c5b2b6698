"""API tokens: PGTAPE_API_TOKEN (named "env") and the token file (`NAME TOKEN` lines), each named
so the audit trail can say who did what. Checked in constant time against every token."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from pgtape.errors import UsageError
from pgtape.private_file import check_private

ENV_TOKEN = "PGTAPE_API_TOKEN"


def load_tokens(token_file: Path | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """name -> token. Refuses (one line) a token file others can read, a malformed one, or no token."""
    env = os.environ if environ is None else environ
    tokens: dict[str, str] = {}
    if env.get(ENV_TOKEN, "").strip():
        tokens["env"] = env[ENV_TOKEN].strip()
    if token_file is not None:
        try:
            st = token_file.stat()
            text = token_file.read_text()
        except OSError as e:
            raise UsageError(f"cannot read the API token file {token_file}: {e.strerror or e}") from None
        check_private(token_file, "API token file", st)
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise UsageError(f"{token_file} line {n}: expected 'NAME TOKEN'")
            name, token = parts
            if name in tokens:
                raise UsageError(f"{token_file} line {n}: token name {name!r} given twice")
            tokens[name] = token
    if not tokens:
        raise UsageError(f"no API token configured: set {ENV_TOKEN} or [api] token_file in pgtape.toml")
    return tokens


def token_name(tokens: dict[str, str], header: str | None) -> str | None:
    """The name of the token in an `Authorization: Bearer ...` header, or None. Every token is
    compared (no early exit), so the time taken says nothing about which one nearly matched."""
    if not header or not header.startswith("Bearer "):
        return None
    given = header[len("Bearer "):].strip().encode()
    found = None
    for name, token in tokens.items():
        if hmac.compare_digest(given, token.encode()) and found is None:
            found = name
    return found
