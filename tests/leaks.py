"""What a response body must never carry (RELIABILITY 19): used by the contract fuzzing run's
``no_leaks`` check (``tests/contract_hooks.py``) and by the error-hygiene tests.

Text the request itself carried is ignored, since echoing the caller's own input back
(``Unknown model '/etc/x'``) leaks nothing.
"""

from __future__ import annotations

import re

LEAKS: dict[str, re.Pattern[str]] = {
    "a traceback": re.compile(r"Traceback \(most recent call last\)|^\s+File \"[^\"]+\", line \d+", re.M),
    "a Python source file": re.compile(r"[\w/\\-]+\.py\b"),
    "an absolute server path": re.compile(
        r"(?<![\w.:/])/(?:home|usr|tmp|var|etc|opt|root|work|srv|proc|sys|run|mnt|private|Users)/[\w.-]"
        r"|\b[A-Za-z]:\\[\w.-]"
    ),
    "a database exception": re.compile(
        r"\b(?:sqlalchemy|psycopg2?|sqlite3)\.\w|\b(?:OperationalError|IntegrityError|ProgrammingError|DataError)\b"
    ),
}
#: Only in error bodies: success bodies legitimately hold absolute URLs built from the request's host.
INTERNAL_ADDRESS = re.compile(
    r"\b(?:127\.\d{1,3}\.\d{1,3}\.\d{1,3}|10\.\d{1,3}\.\d{1,3}\.\d{1,3}|192\.168\.\d{1,3}\.\d{1,3}"
    r"|172\.(?:1[6-9]|2\d|3[01])\.\d{1,3}\.\d{1,3}|169\.254\.\d{1,3}\.\d{1,3}|localhost)\b"
    r"|\[?::1\]?:\d+"
)


def leaks(body: str, sent: str, *, error: bool) -> list[str]:
    """What ``body`` leaks (names of the patterns it matches), ignoring text present in ``sent``."""
    patterns = dict(LEAKS)
    if error:
        patterns["an internal address"] = INTERNAL_ADDRESS
    found = []
    for what, pattern in patterns.items():
        for match in pattern.finditer(body):
            if match.group(0) not in sent:
                found.append(f"{what} ({match.group(0)!r})")
                break
    return found
