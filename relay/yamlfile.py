"""Reading the user's YAML files so that every error can point at a line.

ruamel.yaml's round-trip loader keeps each key's line; ``Located`` wraps a loaded
mapping with its file name so code can raise ``ConfigError``s that say
``recipes/tito.yaml:7: ...``. ``${NAME}`` secret references are resolved here, on
loaded string values (never by editing the text, so a secret containing YAML
syntax cannot change the file's meaning).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .errors import ConfigError, SecretMissing

SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Lookup = Callable[[str], "str | None"]


def load(path: Path, display: str | None = None) -> Any:
    """Parse a YAML file, keeping line numbers.

    :raises ConfigError: at the offending line when the YAML does not parse.
    """
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("the file is not UTF-8 text", path=name, line=1) from None
    except OSError as e:
        raise ConfigError(f"cannot read the file: {e.strerror}", path=name, line=1) from None
    return loads(text, name)


def loads(text: str, name: str) -> Any:
    """Parse YAML text; ``name`` is used in errors. :raises ConfigError:"""
    yaml = YAML(typ="rt")
    try:
        return yaml.load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = e.problem or e.context or "invalid YAML"
        raise ConfigError(f"this is not valid YAML: {problem}", path=name, line=line) from None
    except YAMLError as e:
        raise ConfigError(f"this is not valid YAML: {e}", path=name, line=1) from None


def line_of(node: Any, key: Any = None) -> int | None:
    """1-based line of ``node[key]`` (or of ``node`` itself), when ruamel knows it."""
    try:
        if key is None:
            return int(node.lc.line) + 1
        if isinstance(node, CommentedMap):
            return int(node.lc.key(key)[0]) + 1
        if isinstance(node, CommentedSeq):
            return int(node.lc.item(key)[0]) + 1
    except (AttributeError, KeyError, IndexError, TypeError):
        return None
    return None


class Located:
    """A loaded mapping plus the file it came from, for errors at the right line."""

    def __init__(self, node: Any, path: str, field: str = "") -> None:
        self.node = node
        self.path = path
        self.field = field

    def error(self, message: str, key: Any = None, cls: type[ConfigError] = ConfigError) -> ConfigError:
        line = line_of(self.node, key) if key is not None else line_of(self.node)
        where = self.where(key)
        text = f"{where}: {message}" if where else message
        return cls(text, path=self.path, line=line or line_of(self.node) or 1)

    def where(self, key: Any = None) -> str:
        parts = [p for p in (self.field, "" if key is None else str(key)) if p]
        if not parts:
            return ""
        joined = parts[0]
        for p in parts[1:]:
            joined += f"[{p}]" if p.isdigit() else f".{p}"
        return joined

    def child(self, key: Any) -> Located:
        sub = self.where(key)
        return Located(self.node[key], self.path, sub)


def resolve(value: Any, lookup: Lookup, where: Located, key: Any = None) -> Any:
    """Replace every ``${NAME}`` in the strings of ``value`` (recursively).

    :raises SecretMissing: naming the secret, the file, the line and the field;
        never the value of any secret.
    """
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            found = lookup(name)
            if found is None:
                raise where.error(
                    f"the secret ${{{name}}} is not set. Set it with `relay secret set {name}` "
                    f"(or the environment variable {name}), then reload.",
                    key, SecretMissing,
                )
            return found
        return SECRET_REF.sub(sub, value)
    if isinstance(value, dict):
        sub_where = where.child(key) if key is not None else where
        return {k: resolve(v, lookup, sub_where, k) for k, v in value.items()}
    if isinstance(value, list):
        sub_where = where.child(key) if key is not None else where
        return [resolve(v, lookup, sub_where, i) for i, v in enumerate(value)]
    return value


def plain(value: Any) -> Any:
    """Turn ruamel's commented containers into plain dicts and lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
