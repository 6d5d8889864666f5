"""API keys, read inside the process that trades, from the environment or a key file.

Keys never travel as arguments, so a config only names where they are (``AccountConfig``); the
secret is hidden from ``repr``/``str`` so it cannot slip into a log line or an exception.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fleet import yamlfile


class CredentialsError(ValueError):
    """Keys could not be loaded; the message names the missing variable or file (never a value)."""


@dataclass(frozen=True)
class Credentials:
    api_key: str
    api_secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.api_key or not self.api_secret:
            raise CredentialsError("api_key and api_secret must both be non-empty")

    def __repr__(self) -> str:
        shown = self.api_key[:4] + "…" if len(self.api_key) > 8 else "…"
        return f"Credentials(api_key={shown!r}, api_secret=<hidden>)"

    __str__ = __repr__

    def __reduce__(self):  # refuse to be pickled into actor args or a runtime_env
        raise TypeError("Credentials are not picklable: load them inside the process that uses them")


def _from_file(path_text: str) -> Credentials:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise CredentialsError(f"key file {str(path)!r} does not exist")
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8")) if path.suffix == ".json" else yamlfile.read(path)
    except (OSError, ValueError) as exc:   # (YamlFileError is a ValueError)
        raise CredentialsError(f"key file {str(path)!r} is not readable JSON/YAML: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"key file {str(path)!r} must hold a mapping with api_key and api_secret")
    missing = [k for k in ("api_key", "api_secret") if not data.get(k)]
    if missing:
        raise CredentialsError(f"key file {str(path)!r} lacks {', '.join(missing)}")
    return Credentials(str(data["api_key"]), str(data["api_secret"]))


def load_credentials(account_cfg: Any, environ: Mapping[str, str] | None = None) -> Credentials:
    """Keys for ``account_cfg`` (a ``fleet.config.AccountConfig``): env vars first, else its key file."""
    env = os.environ if environ is None else environ
    key_var = getattr(account_cfg, "api_key_env", None)
    secret_var = getattr(account_cfg, "api_secret_env", None)
    key_file = getattr(account_cfg, "key_file", None)
    name = getattr(account_cfg, "name", "?")
    if key_var and secret_var:
        missing = [v for v in (key_var, secret_var) if not env.get(v)]
        if not missing:
            return Credentials(env[key_var], env[secret_var])
        if not key_file:
            raise CredentialsError(
                f"account {name!r}: environment variable(s) {', '.join(missing)} not set"
            )
    if key_file:
        return _from_file(key_file)
    raise CredentialsError(f"account {name!r}: no api_key_env/api_secret_env and no key_file configured")
