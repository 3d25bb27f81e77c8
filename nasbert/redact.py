"""Credentials never leave the process: database URLs are redacted before they are logged or written.

A search's Optuna storage may be a shared database (``postgresql://user:password@host/db``). Its URL appears in
logs, in ``RUN/search/pareto.json`` and in ``RUN/manifest.json``, and run directories are shared between people
and machines, so the password is shown as ``***`` where the URL is printed and left out where it is stored
(the database driver then takes it from its usual places: ``PGPASSWORD`` or ``~/.pgpass`` for PostgreSQL, or
``--storage`` given again).

>>> redact_url("postgresql://nas:s3cret@db.example.com:5432/studies")
'postgresql://nas:***@db.example.com:5432/studies'
>>> strip_password("postgresql://nas:s3cret@db.example.com/studies?sslpassword=x&sslmode=require")
'postgresql://nas@db.example.com/studies?sslmode=require'
"""

from __future__ import annotations

import urllib.parse

__all__ = ["redact_url", "strip_password"]

#: query parameters that hold a secret (``?password=...``, ``?sslpassword=...``, ``?token=...``)
_SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token")


def _is_secret(key: str) -> bool:
    return any(word in key.lower() for word in _SECRET_WORDS)


def _rewrite(url: str, *, keep: bool) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    has_password = "@" in parts.netloc and ":" in parts.netloc.rsplit("@", 1)[0]
    if not has_password and not any(_is_secret(k) for k, _ in query):
        return url  # nothing to hide: the URL stays exactly as given (sqlite:////abs/path included)
    netloc = parts.netloc
    if has_password:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if keep else f"{user}@{host}"
    if keep:
        query = [(k, "***" if _is_secret(k) else v) for k, v in query]
    else:
        query = [(k, v) for k, v in query if not _is_secret(k)]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path,
                                    urllib.parse.urlencode(query, safe="*"), parts.fragment))


def redact_url(url: str) -> str:
    """``url`` with its password and secret query parameters shown as ``***``: for logs and messages."""
    return _rewrite(url, keep=True)


def strip_password(url: str) -> str:
    """``url`` without its password and secret query parameters: for files (it still names the database)."""
    return _rewrite(url, keep=False)
