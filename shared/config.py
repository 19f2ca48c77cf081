"""Configuration: frozen dataclasses filled from defaults < TOML file < environment < flags.

`build` turns a mapping into a config dataclass and rejects unknown keys and wrong types with
a ConfigError naming the dotted key (``broker.keepalive``). Only fields declared with
`env_field` read the environment; a secret one (the broker password) is read from nowhere
else, is hidden from repr and is left out of `dump_config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = [
    "BrokerConfig",
    "build",
    "dump_config",
    "env_field",
    "load_config",
    "parse_broker_url",
]

T = TypeVar("T")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_field(env: str, *, default: Any = None, secret: bool = False) -> Any:
    """A dataclass field also set by the environment variable ``{env_prefix}{env}``.

    A `secret` field is set only from there: never from a file or a flag, never shown.
    """
    metadata = {"env": env, "secret": secret}
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


def parse_broker_url(url: str) -> tuple[bool, str, int]:
    """(tls, host, port) of ``mqtt://host[:port]`` (1883) or ``mqtts://host[:port]`` (8883)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"not a broker URL: {exc}", key="broker.url") from exc
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"port must be in 1..65535, got {port}", key="broker.url")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "credentials do not belong in the URL: set SPARSETEL_MQTT_USERNAME and "
            "SPARSETEL_MQTT_PASSWORD in the environment",
            key="broker.url",
        )
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"expected mqtt://host[:port] or mqtts://..., got {url!r}", "broker.url")
    if parts.path not in ("", "/") or parts.query or parts.fragment or url != url.strip():
        raise ConfigError(f"unexpected path, query or spaces in {url!r}", key="broker.url")
    tls = parts.scheme == "mqtts"
    return tls, parts.hostname, port or (8883 if tls else 1883)


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    """How to reach the MQTT broker. Credentials come from SPARSETEL_MQTT_USERNAME and
    SPARSETEL_MQTT_PASSWORD; the password is never read from a file or a flag."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = env_field("MQTT_USERNAME")
    password: str | None = env_field("MQTT_PASSWORD", secret=True)
    client_id: str | None = None
    keepalive: int = 30
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    tls_ca: Path | None = None

    def __post_init__(self) -> None:
        tls, _, _ = parse_broker_url(self.url)
        if not 0 <= self.keepalive <= 65535:
            raise ConfigError("must be in 0..65535 seconds", key="broker.keepalive")
        if self.client_id == "":
            raise ConfigError("must not be empty (leave it unset instead)", "broker.client_id")
        if self.password is not None and self.username is None:
            raise ConfigError("a password needs a username (MQTT 3.1.1)", "broker.password")
        if self.tls_ca is not None and not tls:
            raise ConfigError("a CA file needs an mqtts:// URL", key="broker.tls_ca")

    @property
    def tls(self) -> bool:
        return parse_broker_url(self.url)[0]

    @property
    def host(self) -> str:
        return parse_broker_url(self.url)[1]

    @property
    def port(self) -> int:
        return parse_broker_url(self.url)[2]


# --------------------------------------------------------------------------- build


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """An instance of the dataclass `cls` from `data`; ConfigError(key=dotted path) when a key
    is unknown, missing or of the wrong type. `prefix` is the path of `data` itself."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a table, got {type(data).__name__}", key=prefix)
    known = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls)) if f.init}
    for name in data:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key{hint}", key=_join(prefix, str(name)))
    for name, f in known.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in data:
            raise ConfigError("missing", key=_join(prefix, name))
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _convert(value, hints[name], _join(prefix, name)) for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), key=prefix) from exc


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise ConfigError(f"must be one of {', '.join(map(repr, args))}, got {value!r}", key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        return _convert(value, options[-1], key)
    if origin is tuple:
        return _convert_tuple(value, args, key)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return value if isinstance(value, tp) else build(tp, value, key)
    return _convert_scalar(value, tp, key)


def _convert_tuple(value: Any, args: tuple[Any, ...], key: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"must be a list, got {type(value).__name__}", key)
    if len(args) == 2 and args[1] is Ellipsis:
        args = (args[0],) * len(value)
    elif len(value) != len(args):
        raise ConfigError(f"must be a list of {len(args)} items, got {len(value)}", key)
    pairs = enumerate(zip(value, args, strict=True))
    return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in pairs)


def _convert_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool and type(value) is bool:
        return value
    if tp is int and type(value) is int:
        return value
    if tp is float and type(value) in (int, float):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    if tp is Path and isinstance(value, str | Path) and str(value):
        return Path(value)
    if tp is Any:
        return value
    if tp in (bool, int, float, str, Path):
        raise ConfigError(f"must be {tp.__name__}, got {type(value).__name__} {value!r}", key)
    raise TypeError(f"{key}: config fields of type {tp!r} are not supported")


# --------------------------------------------------------------------------- load


def _env_fields(cls: type[Any], prefix: str = "") -> list[tuple[str, dataclasses.Field[Any], Any]]:
    """(dotted path, field, type) of every env_field in `cls` and its nested dataclasses."""
    found: list[tuple[str, dataclasses.Field[Any], Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = _join(prefix, f.name)
        if "env" in f.metadata:
            found.append((path, f, hints[f.name]))
        elif dataclasses.is_dataclass(hints[f.name]):
            found.extend(_env_fields(hints[f.name], path))
    return found


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c.d": 2, "e": None} -> {"a.b": 1, "c.d": 2} (None: not given)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, _join(prefix, key)))
        elif value is not None:
            flat[_join(prefix, key)] = value
    return flat


def _lookup(data: Mapping[str, Any], path: str) -> bool:
    *parents, leaf = path.split(".")
    for name in parents:
        data = data.get(name, {})
        if not isinstance(data, Mapping):
            return False
    return leaf in data


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for i, name in enumerate(parents):
        child = data.setdefault(name, {})
        if not isinstance(child, dict):
            raise ConfigError("expected a table", key=".".join(parents[: i + 1]))
        data = child
    data[leaf] = value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _from_env(text: str, tp: Any) -> Any:
    """An environment string as the field's scalar type (build checks it afterwards)."""
    options = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    try:
        if options[0] is int:
            return int(text)
        if options[0] is float:
            return float(text)
    except ValueError:
        return text
    if options[0] is bool and text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    return text


def load_config(
    cls: type[T],
    path: Path | None = None,
    env_prefix: str = "SPARSETEL_",
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> T:
    """`cls` from its defaults, then the TOML file at `path`, then the environment (env_field
    fields only, ``{env_prefix}{env}``, empty means unset), then `overrides` (dotted keys such
    as ``"broker.url"``, from flags; None means the flag was not given)."""
    environ = os.environ if environ is None else environ
    prefix = env_prefix if not env_prefix or env_prefix.endswith("_") else env_prefix + "_"
    data = _read_toml(path) if path is not None else {}
    flat = _flatten(overrides or {})
    for key, f, tp in _env_fields(cls):
        if f.metadata["secret"]:
            where = "the config file" if _lookup(data, key) else "a flag" if key in flat else ""
            if where:
                name = prefix + f.metadata["env"]
                raise ConfigError(f"is a secret: set {name} in the environment, not {where}", key)
        text = environ.get(prefix + f.metadata["env"], "")
        if text:
            _set(data, key, _from_env(text, tp))
    for key, value in flat.items():
        _set(data, key, value)
    return build(cls, data)


def dump_config(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass, secrets left out; build() reads it back."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not f.metadata.get("secret"):
            out[f.name] = _dump(getattr(obj, f.name))
    return out


def _dump(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dump_config(value)
    if isinstance(value, tuple | list):
        return [_dump(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
