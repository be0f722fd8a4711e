"""Reading typed settings from RESPONDER_* environment variables.

A settings field declares its variable, its documentation, its default and its parser in
one place (`setting`); `read_fields` is the one reader for every group of settings, and
`read_secret` the one reader of a secret given directly or as a file (`<NAME>_FILE`, e.g.
a mounted Secret).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: What a secret's value is shown as in logs and settings dumps.
MASK = "***"


class BadValue(ValueError):
    """A parser's reason a value is wrong, shown after the variable's name. Parsers say
    why ("must be ..."), never what the value was: it may be a secret."""


def setting(env: str, doc: str, default: Any, parse: Callable[[str], Any] = str, *,
            secret: bool = False, from_file: bool = False) -> Any:
    """A settings field read from `env` with `parse`. A `secret` is never shown (repr,
    errors, logs); `from_file` also accepts `<env>_FILE`, the path of a file holding it."""
    return field(default=default, repr=not secret,
                 metadata={"env": env, "doc": doc, "parse": parse, "secret": secret,
                           "from_file": from_file})


def read_fields(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """The values `env` sets for the fields of the dataclass `cls`, parsed; fields left
    unset keep their default. ConfigError names the first bad variable."""
    values = {}
    for f in fields(cls):
        name = f.metadata.get("env")
        if name is None:
            continue
        raw = read_secret(env, name) if f.metadata["from_file"] else _value(env, name)
        if raw is not None:
            values[f.name] = _convert(name, raw, f.metadata["parse"], f.metadata["secret"])
    return values


def variables(cls: type) -> dict[str, str]:
    """Every variable the dataclass `cls` reads (with its `_FILE` form), to its doc."""
    found = {}
    for f in fields(cls):
        if "env" in f.metadata:
            found[f.metadata["env"]] = f.metadata["doc"]
            if f.metadata["from_file"]:
                found[f"{f.metadata['env']}_FILE"] = f"file holding {f.metadata['env']}"
    return found


def describe(settings: Any) -> dict[str, Any]:
    """A dataclass's settings by variable name, secrets masked (for the start-up log)."""
    return {f.metadata["env"]: (MASK if f.metadata["secret"] and getattr(settings, f.name)
                                else getattr(settings, f.name))
            for f in fields(settings) if "env" in f.metadata}


def is_set(env: Mapping[str, str], name: str) -> bool:
    """Whether `name` or `name`_FILE is set (to more than blanks)."""
    return _value(env, name) is not None or _value(env, f"{name}_FILE") is not None


def read_secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret from `name` or from the file named by `name`_FILE; None when neither is set."""
    value, path = _value(env, name), _value(env, f"{name}_FILE")
    if value is not None and path is not None:
        raise ConfigError(f"{name} and {name}_FILE: set only one")
    if path is None:
        return value
    return read_secret_file(f"{name}_FILE", path)


def read_secret_file(env: str, path: str) -> str:
    """The stripped text of a mounted secret file; ConfigError (naming `env`) otherwise."""
    try:
        value = Path(path).read_text("utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{env}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{env}: {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{env}: {path} is empty")
    return value


def _value(env: Mapping[str, str], name: str) -> str | None:
    # A blank variable is unset: a manifest's `value: ""` must not count as a choice.
    raw = env.get(name)
    return raw.strip() if raw is not None and raw.strip() else None


def _convert(name: str, raw: str, parse: Callable[[str], Any], secret: bool) -> Any:
    try:
        return parse(raw)
    except BadValue as exc:
        raise ConfigError(f"{name}: {exc}") from None
    except ValueError:
        shown = "the value" if secret else repr(raw)
        raise ConfigError(f"{name}: cannot parse {shown}") from None


# --- parsers ---------------------------------------------------------------------------

def parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise BadValue("must be true or false")


def positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise BadValue("must be a positive integer")
    return value


def non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise BadValue("must be 0 or more")
    return value


def positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise BadValue("must be a positive number")
    return value


def one_of(*allowed: str, normalise: Callable[[str], str] = str.lower
           ) -> Callable[[str], str]:
    """A parser accepting one of `allowed` (after `normalise`)."""
    def parse(raw: str) -> str:
        value = normalise(raw)
        if value not in allowed:
            raise BadValue(f"must be one of {', '.join(allowed)}")
        return value
    return parse


def readable_file(raw: str) -> str:
    """A path the process can read (a certificate, a key, a CA bundle)."""
    if not os.access(raw, os.R_OK):
        raise BadValue(f"cannot read {raw}")
    return raw


def is_http_url(url: str) -> bool:
    return url.startswith(("https://", "http://")) and len(url) > len("https://")
