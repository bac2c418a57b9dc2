"""Secrets out of what is logged: a URL's password becomes `***` (`user:***@host`).

Applied to every param, config artifact, error tag and log line that may hold a URL (a
`tuning.storage` with a password, a tracking URI with credentials). A leaf module.
"""

import re
from typing import Any

MASK = "***"
# scheme://user:password@host: the password runs to the last "@" of the token (as browsers
# read it), so a password with an unencoded "/" or "@" is masked whole; masking too much is
# the safe side.
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s\"']*:)[^\s\"']*@")


def redact(text: str) -> str:
    """`text` with the password of every URL in it masked."""
    return _CREDENTIALS.sub(lambda match: f"{match['head']}{MASK}@", text)


def redact_values(value: Any) -> Any:
    """A copy of a JSON-like structure with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(item) for item in value]
    return value
