"""Turning an event into what a destination receives: JMESPath and sandboxed Jinja.

A recipe's field is compiled once, when the recipe loads:
- a string with ``{{`` or ``{%`` is a Jinja template, run in an immutable
  ``SandboxedEnvironment`` with ``StrictUndefined`` (a typo is an error, not an
  empty cell); ``None`` renders as an empty string;
- any other string is a JMESPath expression (``email``, ``tickets[0].price``,
  ``'literal'``), with extra functions for ticketing payloads;
- numbers, booleans and null are literal; mappings and lists are mapped item by item.

Names a field can use: the event's (or, inside ``for_each``, the item's) own keys,
and ``_event`` (the whole event), ``_item`` and ``_index`` (inside ``for_each``),
``_meta`` (``source``, ``type``, ``id``, ``received_at``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jinja2
import jmespath
from jmespath import functions as jp_functions

from .errors import MappingError
from .sandbox import MAX_TEXT, BoundedSandbox, LimitExceeded, check_replace, check_text, render, time_limit


class RelayFunctions(jp_functions.Functions):
    """JMESPath functions beyond the standard ones."""

    @jp_functions.signature({"types": ["array", "null"]}, {"types": ["string"]})
    def _func_field(self, items: list[Any] | None, key: str) -> Any:
        """``field(data, 'email')``: the value of the ``{key, value}`` entry named ``key``.

        Webconnex registrants carry their answers as ``[{key, value}, ...]``; entries
        without ``value`` (a name has ``first{value}`` and ``last{value}``) are
        returned whole, so ``field(data, 'name').first.value`` works.
        """
        for entry in items or []:
            if isinstance(entry, dict) and entry.get("key") == key:
                return entry["value"] if "value" in entry else entry
        return None

    @jp_functions.signature({"types": ["string", "null"]})
    def _func_lower(self, s: str | None) -> str | None:
        return s.lower() if s is not None else None

    @jp_functions.signature({"types": ["string", "null"]})
    def _func_upper(self, s: str | None) -> str | None:
        return s.upper() if s is not None else None

    @jp_functions.signature({"types": ["string", "null"]})
    def _func_trim(self, s: str | None) -> str | None:
        return s.strip() if s is not None else None

    @jp_functions.signature({"types": ["string", "null"]}, {"types": ["string"]})
    def _func_split(self, s: str | None, sep: str) -> list[str]:
        if not s:
            return []
        return s.split(sep) if sep else list(s)

    @jp_functions.signature({"types": ["string", "null"]}, {"types": ["string"]}, {"types": ["string"]})
    def _func_replace(self, s: str | None, old: str, new: str) -> str | None:
        if s is None:
            return None
        if not old:
            return s
        check_replace(s, old, new, what="replace()")
        return s.replace(old, new)

    @jp_functions.signature({"types": ["string"]}, {"types": ["array-string"]})
    def _func_join(self, separator: str, items: list[str]) -> str:
        check_text(sum(map(len, items)) + len(separator) * max(0, len(items) - 1), "join()")
        return separator.join(items)

    @jp_functions.signature({"types": []})
    def _func_to_json(self, value: Any) -> str:
        # Piece by piece: [@, @] nested ten deep is 1,024 copies of the event.
        chunks, total = [], 0
        for chunk in json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).iterencode(value):
            total += len(chunk)
            check_text(total, "to_json()")
            chunks.append(chunk)
        return "".join(chunks)


JMESPATH_OPTIONS = jmespath.Options(custom_functions=RelayFunctions())


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def _field_filter(items: Any, key: str) -> Any:
    return RelayFunctions()._func_field(items if isinstance(items, list) else None, key)


def make_jinja() -> BoundedSandbox:
    env = BoundedSandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        finalize=_finalize,
        keep_trailing_newline=False,
    )
    env.filters["field"] = _field_filter
    env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
    return env


JINJA = make_jinja()


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


class Expression:
    """A compiled JMESPath expression."""

    kind = "jmespath"

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self.parsed = jmespath.compile(source)
        except jmespath.exceptions.JMESPathError as e:
            raise MappingError(f"{source!r} is not a valid JMESPath expression: {_jp_message(e)}") from None
        except RecursionError:
            raise MappingError(f"{source[:40]!r}... is nested too deeply") from None

    def evaluate(self, root: Any) -> Any:
        try:
            with time_limit():
                result = self.parsed.search(root, options=JMESPATH_OPTIONS)
        except LimitExceeded as e:
            raise MappingError(f"{self.source!r} was stopped: {e}") from None
        except jmespath.exceptions.JMESPathError as e:
            raise MappingError(f"{self.source!r} failed: {_jp_message(e)}") from None
        except TypeError as e:  # to_json(&name): an expression reference is not data
            raise MappingError(f"{self.source!r} failed: {e}") from None
        _only_data(self.source, result)
        return result


_DATA = (str, int, float, bool, type(None))


MAX_NODES = 1_000_000  # values in one result, counting a value each time it appears
MAX_RESULT_TEXT = 20 * MAX_TEXT  # characters of text in one result


def _only_data(source: str, value: Any) -> None:
    """Refuse a result that is not plain JSON data (``&name`` gives an expression
    reference, which cannot be sent or stored), or that would be too big to store:
    ``[@, @]`` nested ten deep is 1,024 copies of the event. Iterative: payloads may
    be deep."""
    stack = [value]
    nodes = text = 0
    while stack:
        item = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise MappingError(f"{source!r} gave a result of more than {MAX_NODES:,} values; "
                               "relay stopped it (is an expression repeating the whole event?)")
        if isinstance(item, str):
            text += len(item)
            if text > MAX_RESULT_TEXT:
                raise MappingError(f"{source!r} gave a result of more than {MAX_RESULT_TEXT:,} "
                                   "characters; relay stopped it")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif not isinstance(item, _DATA):
            raise MappingError(f"{source!r} gave an expression reference (`&...`), not a value; "
                               "`&` belongs only inside functions such as sort_by")


class Template:
    """A compiled Jinja template, run sandboxed."""

    kind = "jinja"

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self.template = JINJA.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise MappingError(f"template error: {e.message} (line {e.lineno} of the template)") from None
        except RecursionError:
            raise MappingError("template error: the template is nested too deeply") from None

    def evaluate(self, root: Any) -> str:
        context = root if isinstance(root, dict) else {"_item": root}
        try:
            with time_limit():
                return render(self.template, context)
        except LimitExceeded as e:
            raise MappingError(f"the template was stopped: {e}") from None
        except jinja2.UndefinedError as e:
            raise MappingError(f"the template uses something the event does not have: {e.message}") from None
        except jinja2.exceptions.SecurityError as e:
            raise MappingError(f"the template tried something unsafe and was stopped: {e}") from None
        except (jinja2.TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as e:
            raise MappingError(f"the template failed: {type(e).__name__}: {e}") from None
        except RecursionError:
            raise MappingError("the template recursed too deeply and was stopped") from None
        except Exception as e:  # a filter given the wrong kind of value (dictsort on a list, ...)
            raise MappingError(f"the template failed: {type(e).__name__}: {e}") from None


def _jp_message(e: Exception) -> str:
    return str(e).replace("\n", " ").strip()


class Literal:
    kind = "literal"

    def __init__(self, value: Any) -> None:
        self.source = value
        self.value = value

    def evaluate(self, root: Any) -> Any:
        return self.value


Compiled = Expression | Template | Literal | dict[str, "Compiled"] | list["Compiled"]


def compile_value(value: Any) -> Compiled:
    """Compile one field's value (see the module doc). :raises MappingError:"""
    if isinstance(value, str):
        return Template(value) if is_template(value) else Expression(value)
    if isinstance(value, Mapping):
        return {str(k): compile_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compile_value(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return Literal(value)
    raise MappingError(f"{value!r} cannot be a field value: use text, a number or true/false")


def evaluate(compiled: Compiled, root: Any, path: str = "") -> Any:
    """Evaluate a compiled value against ``root``.

    :raises MappingError: naming the field (``path``) that failed.
    """
    if isinstance(compiled, dict):
        return {k: evaluate(v, root, f"{path}.{k}" if path else k) for k, v in compiled.items()}
    if isinstance(compiled, list):
        return [evaluate(v, root, f"{path}[{i}]") for i, v in enumerate(compiled)]
    try:
        return compiled.evaluate(root)
    except MappingError as e:
        if path:
            raise MappingError(f"field {path}: {e.message}") from None
        raise


def event_root(payload: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The names a recipe sees for a whole event."""
    base = dict(payload) if isinstance(payload, dict) else {}
    base.update({"_event": payload, "_meta": dict(meta)})
    return base


def item_root(payload: Any, meta: Mapping[str, Any], item: Any, index: int) -> dict[str, Any]:
    """The names a recipe sees inside ``for_each``: the item's keys plus the event."""
    base = dict(item) if isinstance(item, dict) else {}
    base.update({"_item": item, "_index": index, "_event": payload, "_meta": dict(meta)})
    return base


def truthy(value: Any) -> bool:
    """JMESPath's idea of true: not null, false, empty string, list or object."""
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True
