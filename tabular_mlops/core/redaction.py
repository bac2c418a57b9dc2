"""Secrets out of what is logged (params, the config artifact, run names and descriptions,
error tags, log lines):

- a URL's credentials: `scheme://user:password@host` becomes `user:***@host`, and a web
  URL's token (`https://TOKEN@host`, no colon) `***@host`; a database URL's bare user name
  (`postgresql://optuna@host`) is not a secret and stays;
- the value of a setting whose name says it is a secret (`secret`, `password`, `token`,
  `key`, `credential`: an S3 key in `batch.spark.conf`, say), whatever it holds.

A leaf module.
"""

import re
from typing import Any

MASK = "***"
# scheme://user:password@: the password runs to the last "@" of the token (as browsers read
# it), so a password with an unencoded "/" or "@" is masked whole; masking too much is the
# safe side.
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s\"']*:)[^\s\"']*@")
# A web URL's user information without a colon is a token, not a user name.
_TOKEN = re.compile(r"(?P<head>\b(?:https?|wss?)://)[^:/@\s\"']+@", re.IGNORECASE)
_SECRET_NAME = re.compile(r"secret|passw|token|credential|key", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it masked."""
    text = _PASSWORD.sub(lambda match: f"{match['head']}{MASK}@", text)
    return _TOKEN.sub(lambda match: f"{match['head']}{MASK}@", text)


def holds_credentials(text: str) -> bool:
    return redact(text) != text


def is_secret_name(name: str) -> bool:
    """Whether a setting called `name` (or `a.b.name`) holds a secret by its name."""
    return _SECRET_NAME.search(name) is not None


def redact_values(value: Any, name: str = "") -> Any:
    """A copy of a JSON-like structure with every string redacted, and the value of every
    key whose name says secret masked whole."""
    if is_secret_name(name) and value not in (None, "", {}, []):
        return MASK
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_values(item, str(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(item) for item in value]
    return value
