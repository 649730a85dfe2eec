"""Reading a profile file and the common part it includes, merged into one document.

A profile may name one other file with the top-level key `include = "pi-common.toml"`, relative to
the directory of the file that names it; that file may include another in turn. The merge rule,
the same at every level, is the one a technician can predict by reading the two files:

- a table (`[kiosk]`, `[coin_acceptor]`, ...) is merged key by key: a key the including file
  sets replaces the included file's, the keys it does not set are kept;
- a value written inline is one value and is replaced whole (`pulses = { 1 = 2, 2 = 4 }`);
- an array of tables (`[[slots]]`) is replaced whole: a file that lists `[[slots]]` lists all
  of the kiosk's slots.

An include that is not a file name, a file that cannot be read or that includes itself (directly
or through others) is a ConfigError naming the including file and its `include` key. A value is
named in errors by the file it was written in: `read` returns, beside the merged document, the
included file that set each key the top file does not.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from kiosk.errors import ConfigError

INCLUDE = "include"


def read(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The document `path` makes with its includes, and {"section.key": file} for the keys (and
    `slots[i]` tables, and whole sections) that came from an included file."""
    return _read(path, (), None)


def _read(
    path: Path, chain: tuple[Path, ...], via: Path | None
) -> tuple[dict[str, Any], dict[str, str]]:
    data = _toml(path, via)
    if INCLUDE not in data:
        return data, {}
    name = data.pop(INCLUDE)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"{path}: {INCLUDE}: must be the name of a file, relative to this one (got {name!r})"
        )
    target = path.parent / name
    chain = (*chain, _identity(path))
    if _identity(target) in chain:
        loop = " -> ".join([*(str(p) for p in chain), str(target)])
        raise ConfigError(f"{path}: {INCLUDE}: {name} includes itself ({loop})")
    base, base_origins = _read(target, chain, path)
    return _merge(base, _origins(base, base_origins, str(target)), data)


def _toml(path: Path, via: Path | None) -> dict[str, Any]:
    # A file that cannot be read is the including file's mistake, so it names that file's key.
    where = f"{via}: {INCLUDE}: {path}" if via is not None else str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{where}: cannot read: {err.strerror or err}") from err
    except ValueError as err:  # a NUL byte in the name
        raise ConfigError(f"{where}: cannot read: {err}") from err
    try:
        return tomllib.loads(raw.decode())
    except ValueError as err:  # TOMLDecodeError, UnicodeDecodeError, an over-long integer
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    except RecursionError as err:  # tomllib parses nested arrays and tables by recursion
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deep") from err


def _identity(path: Path) -> Path:
    """One name per file, however it is reached (relative, through `..` or a link)."""
    try:
        return path.resolve()
    except (OSError, ValueError):  # a loop of links, a NUL byte: reading it will say why
        return path.absolute()


def _origins(data: dict[str, Any], inner: dict[str, str], file: str) -> dict[str, str]:
    """Where each key of an included document came from: `file`, unless a deeper include."""
    origins: dict[str, str] = {}
    for section, value in data.items():
        origins[section] = inner.get(section, file)
        if isinstance(value, dict):
            for key in value:
                dotted = f"{section}.{key}"
                origins[dotted] = inner.get(dotted, inner.get(section, file))
        elif isinstance(value, list):
            for i in range(len(value)):
                indexed = f"{section}[{i}]"
                origins[indexed] = inner.get(indexed, inner.get(section, file))
    return origins


def _merge(
    base: dict[str, Any], origins: dict[str, str], top: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """`top` over `base`; what `top` sets is no longer named by an included file."""
    merged = dict(base)
    for section, value in top.items():
        below = merged.get(section)
        origins.pop(section, None)
        if isinstance(value, dict) and isinstance(below, dict):
            merged[section] = {**below, **value}
            for key in value:
                origins.pop(f"{section}.{key}", None)
        else:
            merged[section] = value
            for key in [k for k in origins if k.startswith((f"{section}.", f"{section}["))]:
                del origins[key]
    return merged, origins
