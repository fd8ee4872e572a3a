"""Limits that stop a recipe's template or expression from running away.

Recipes are pasted from the web and run on data from the internet. Jinja's sandbox
already keeps templates away from Python internals, files and the environment;
this module adds bounds on what they may cost:

- **time**: ``time_limit`` stops any template or JMESPath evaluation that runs
  longer than ``SECONDS`` (a nested loop over a big list, say). It traces the
  evaluating thread, and only while evaluating: a check every ``CHECK_EVERY``
  Python calls, and on each line of the template's own compiled code;
- **size**: ``**``, ``*``, ``+`` and ``%`` refuse results past ``MAX_TEXT``
  characters or ``MAX_INT_BITS`` bits before computing them, the filters that pad
  (``center``, ``indent``, ``format``, ...) refuse huge widths, and a template's
  output is cut off once it passes ``MAX_TEXT``.

Each limit raises ``LimitExceeded``, which the mapping turns into a plain error for
the log; the relay and every other recipe carry on.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from jinja2 import filters as jinja_filters
from jinja2.sandbox import ImmutableSandboxedEnvironment

SECONDS = 1.0
CHECK_EVERY = 256
MAX_TEXT = 1_000_000  # characters in one template's output or one string it builds
MAX_ITEMS = 100_000  # items in one list a template builds
MAX_INT_BITS = 100_000  # about 30,000 decimal digits
MAX_WIDTH = 10_000  # padding width for format, center, indent, wordwrap
TEMPLATE_FILENAME = "<template>"  # the file name Jinja gives a template's compiled code

_state = threading.local()


class LimitExceeded(Exception):
    """A template or expression went past one of the limits; the message says which."""


@contextmanager
def time_limit(seconds: float = SECONDS) -> Iterator[None]:
    """Stop what runs inside after ``seconds`` of this thread's time.

    Re-entrant: an inner limit inside an outer one keeps the outer deadline.
    """
    if getattr(_state, "deadline", None) is not None:
        yield
        return
    deadline = time.monotonic() + seconds
    _state.deadline = deadline
    count = 0

    def check(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        nonlocal count
        count += 1
        if count % CHECK_EVERY == 0 and time.monotonic() > deadline:
            raise LimitExceeded(f"it ran longer than {seconds:g} s and was stopped")
        # Line by line only in the template's own code, where a loop may call nothing.
        return check if frame.f_code.co_filename == TEMPLATE_FILENAME else None

    previous = sys.gettrace()
    sys.settrace(check)
    try:
        yield
    finally:
        sys.settrace(previous)
        _state.deadline = None


def _size(value: Any) -> int | None:
    if isinstance(value, str | bytes | list | tuple):
        return len(value)
    return None


def check_text(length: int, what: str = "it") -> None:
    """:raises LimitExceeded: when ``what`` would build a text longer than MAX_TEXT."""
    if length > MAX_TEXT:
        raise LimitExceeded(f"{what} would build a text of {length:,} characters (the limit is {MAX_TEXT:,})")


def check_replace(text: str, old: str, new: str, count: int | None = None, what: str = "it") -> None:
    """:raises LimitExceeded: when replacing ``old`` by ``new`` in ``text`` would pass MAX_TEXT."""
    occurrences = (len(text) + 1) if old == "" else text.count(old)
    if count is not None:
        occurrences = min(occurrences, count)
    check_text(len(text) + occurrences * max(0, len(new) - len(old)), what)


def _check_bits(bits: float) -> None:
    if bits > MAX_INT_BITS:
        raise LimitExceeded(f"it would compute a number of about {int(bits * 0.30103):,} digits")


def _bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) and not isinstance(value, bool) else 0


def bounded_pow(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        _check_bits(_bits(left) * right)
    return left ** right


def bounded_mul(left: Any, right: Any) -> Any:
    for seq, times in ((left, right), (right, left)):
        length = _size(seq)
        if length is not None and isinstance(times, int) and times > 0:
            if isinstance(seq, list | tuple):
                if length * times > MAX_ITEMS:
                    raise LimitExceeded(f"it would build a list of {length * times:,} items")
            else:
                check_text(length * times)
    _check_bits(_bits(left) + _bits(right))
    return left * right


def bounded_add(left: Any, right: Any) -> Any:
    a, b = _size(left), _size(right)
    if a is not None and b is not None:
        check_text(a + b)
    return left + right


_WIDTH = re.compile(r"[%{:.<>^=]\D{0,3}?(\d{5,})")


_NESTED_WIDTH = re.compile(r"%[-#0 +]*\*|\{[^{}]*:[^{}]*\{")


def _check_widths(spec: Any, args: Any = ()) -> None:
    """Refuse ``%99999999d``-style widths and precisions in a format string, and
    huge numbers handed to a width given as an argument (``%*d``, ``{:>{}}``)."""
    if not isinstance(spec, str):
        return
    for digits in _WIDTH.findall(spec):
        if int(digits) > MAX_WIDTH:
            raise LimitExceeded(f"it asks for a width of {int(digits):,} characters")
    if _NESTED_WIDTH.search(spec):
        values = args.values() if isinstance(args, dict) else args if isinstance(args, tuple) else (args,)
        for value in values:
            if isinstance(value, int) and abs(value) > MAX_WIDTH:
                raise LimitExceeded(f"it asks for a width of {value:,} characters")


def bounded_mod(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        _check_widths(left, right)
        result = left % right
        check_text(len(result))
        return result
    return left % right


def _bounded_width(name: str, position: int) -> Callable[..., Any]:
    original = jinja_filters.FILTERS[name]

    def bounded(*args: Any, **kwargs: Any) -> Any:
        values = list(args[position:position + 1]) + [kwargs.get("width")]
        for width in values:
            if isinstance(width, int) and width > MAX_WIDTH:
                raise LimitExceeded(f"`{name}` was asked for a width of {width:,}")
        return original(*args, **kwargs)
    return bounded


def _bounded_format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_widths(value, kwargs or args)
    result = jinja_filters.do_format(value, *args, **kwargs)
    check_text(len(result))
    return result


def _bounded_replace(eval_ctx: Any, s: str, old: str, new: str, count: int | None = None) -> str:
    check_replace(str(s), str(old), str(new), count)
    return jinja_filters.do_replace(eval_ctx, s, old, new, count)  # type: ignore[arg-type]


_bounded_replace.jinja_pass_arg = jinja_filters.do_replace.jinja_pass_arg  # type: ignore[attr-defined]

BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "**": bounded_pow, "*": bounded_mul, "+": bounded_add, "%": bounded_mod,
}


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with the size limits above on its operators."""

    intercepted_binops = frozenset(BINOPS)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # lipsum(n=10**9) would write a billion paragraphs; recipes have no use for it.
        self.globals.pop("lipsum", None)
        self.filters["center"] = _bounded_width("center", 1)
        self.filters["indent"] = _bounded_width("indent", 1)
        self.filters["wordwrap"] = _bounded_width("wordwrap", 2)
        self.filters["format"] = _bounded_format
        self.filters["replace"] = _bounded_replace

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        bounded = BINOPS.get(operator_)
        if bounded is None:
            return super().call_binop(context, operator_, left, right)
        return bounded(left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # "{:>999999999}".format(x): str.format and format_map come through here.
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        spec = getattr(value, "__self__", None)

        def bounded(*args: Any, **kwargs: Any) -> str:
            _check_widths(spec, (*args, *kwargs.values()))
            result = wrapped(*args, **kwargs)
            check_text(len(result))
            return result
        return bounded


def render(template: Any, context: dict[str, Any]) -> str:
    """Render ``template`` chunk by chunk, stopping once the output passes MAX_TEXT."""
    chunks: list[str] = []
    total = 0
    for chunk in template.generate(context):
        total += len(chunk)
        if total > MAX_TEXT:
            raise LimitExceeded(f"its output passed {MAX_TEXT:,} characters and was stopped")
        chunks.append(chunk)
    return "".join(chunks)
