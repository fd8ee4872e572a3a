"""Templates and expressions that try to run away stop with a plain error, quickly.

Each case would take minutes, or gigabytes, if it ran: the test passing at all shows
it was stopped. The process carries on, and so does the next evaluation.
"""

from __future__ import annotations

import json
import resource
import time
from typing import Any

import pytest

from relay.errors import MappingError
from relay.mapping import compile_value, evaluate

BIG_LIST = list(range(50_000))
ROOT = {"n": 9, "s": "abc", "items": BIG_LIST, "email": "a@example.com"}

RUNAWAY_TEMPLATES = {
    "power tower": "{{ 9 ** (9 ** 9) }}",
    "power": "{{ n ** 10000000 }}",
    "string repeat": "{{ 'x' * 10**9 }}",
    "list repeat": "{{ ([1] * 10**8) | length }}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                "{% endfor %}{{ ns.s | length }}",
    "squaring": "{% set ns = namespace(x=n) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
                "{% endfor %}{{ ns.x > 0 }}",
    "percent width": "{{ '%999999999d' % 1 }}",
    "format filter width": "{{ '%999999999s' | format('a') }}",
    "str.format width": "{{ '{:>999999999}'.format('a') }}",
    "str.format nested width": "{{ '{:>{}}'.format('a', 999999999) }}",
    "star width": "{{ '%*d' % (999999999, 1) }}",
    "center": "{{ s | center(999999999) }}",
    "indent": "{{ s | indent(999999999, true) }}",
    "replace blow-up": "{{ ('x' * 100000) | replace('x', 'y' * 100000) }}",
    "nested loops": "{% for a in items %}{% for b in items %}{% endfor %}{% endfor %}done",
    "nested ranges": "{% for a in range(100000) %}{% for b in range(100000) %}{{ b }}{% endfor %}"
                     "{% endfor %}",
    "range": "{{ range(10**9) | list | length }}",
    "recursive macro": "{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}",
    "huge output": "{% for i in range(100000) %}{{ s * 300 }}{% endfor %}",
    "lipsum": "{{ lipsum(n=10**9) }}",
}

RUNAWAY_EXPRESSIONS = {
    "to_json of shared copies": "to_json([[[[[[[[[[[[[[[[[@, @], [@, @]], [@, @]], [@, @]], [@, @]], "
                                "[@, @]], [@, @]], [@, @]], [@, @]], [@, @]], [@, @]], [@, @]], [@, @]], "
                                "[@, @]], [@, @]], [@, @]], [@, @]])",
    "result of shared copies": "items" + " | [@, @]" * 20,
    "replace blow-up": "replace(join('', [s, s, s, s, s, s, s, s, s, s]), 'b', to_json(items))",
    "join blow-up": "join(to_json(items), [to_json(items), to_json(items), to_json(items), "
                    "to_json(items), to_json(items), to_json(items), to_json(items)])",
}


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.mark.parametrize("template", RUNAWAY_TEMPLATES.values(), ids=RUNAWAY_TEMPLATES.keys())
def test_runaway_templates_are_stopped(template: str) -> None:
    before = peak_kib()
    started = time.monotonic()
    with pytest.raises(MappingError) as info:
        evaluate(compile_value(template), dict(ROOT))
    elapsed = time.monotonic() - started
    message = info.value.message
    assert any(word in message for word in ("stopped", "recursed", "undefined", "unsafe", "Range too big")), \
        message
    # Bounded memory: nothing near the gigabytes the template asked for (generous,
    # since the peak is the whole process's).
    assert peak_kib() - before < 300 * 1024, (template, peak_kib() - before)
    print(f"{template[:50]!r}: {elapsed:.2f} s: {message}")


@pytest.mark.parametrize("expression", RUNAWAY_EXPRESSIONS.values(), ids=RUNAWAY_EXPRESSIONS.keys())
def test_runaway_expressions_are_stopped(expression: str) -> None:
    before = peak_kib()
    with pytest.raises(MappingError) as info:
        evaluate(compile_value(expression), dict(ROOT))
    assert "stopped" in info.value.message or "limit" in info.value.message, info.value.message
    assert peak_kib() - before < 300 * 1024


def test_ordinary_templates_are_untouched() -> None:
    fields = {
        "name": "{{ s | upper }} {{ '%.2f' | format(n / 4) }}",
        "padded": "{{ s | center(9) }}|{{ '%5d' % n }}|{{ '{:>6}'.format(s) }}",
        "count": "{{ items | length }}",
        "sum": "{% set ns = namespace(t=0) %}{% for i in items[:100] %}{% set ns.t = ns.t + i %}{% endfor %}"
               "{{ ns.t }}",
        "big": "{{ 2 ** 64 }} {{ 'ab' * 3 }} {{ [1, 2] * 2 }}",
        "json": "to_json(email)",
        "joined": "join(', ', [s, email])",
        "replaced": "replace(email, '@', ' at ')",
    }
    result = evaluate(compile_value(fields), dict(ROOT))
    assert result == {
        "name": "ABC 2.25", "padded": "   abc   |    9|   abc", "count": "50000", "sum": "4950",
        "big": "18446744073709551616 ababab [1, 2, 1, 2]", "json": json.dumps("a@example.com"),
        "joined": "abc, a@example.com", "replaced": "a at example.com",
    }


def test_after_a_stopped_template_the_next_one_runs_normally() -> None:
    with pytest.raises(MappingError):
        evaluate(compile_value("{% for a in items %}{% for b in items %}{% endfor %}{% endfor %}"), ROOT)
    import sys
    assert sys.gettrace() is None or "coverage" in type(sys.gettrace()).__module__
    assert evaluate(compile_value("{{ s }}-{{ n }}"), ROOT) == "abc-9"


def test_a_runaway_recipe_does_not_stop_the_others(make_relay: Any, sink: Any, tmp_path: Any) -> None:
    from conftest import sample, write_recipe, write_sources
    folder = tmp_path / "recipes"
    write_sources(folder)
    for name, value in (("bomb", "\"{% for a in tickets * 20000 %}{% for b in tickets * 20000 %}"
                                 "{% endfor %}{% endfor %}\""),
                        ("good", "email")):
        write_recipe(folder, name, f"""\
source: quicket
events: ["checkout_completed"]
fields:
  value: {value}
to:
  - type: http
    url: {sink.url}/{name}
""")
    relay = make_relay()
    assert relay.send("quicket", "quicket", sample("quicket/checkout_completed.json")).status_code == 200
    [delivery] = relay.settled(1)
    assert delivery["recipe"] == "good" and delivery["status"] == "delivered"
    [route] = relay.rows("SELECT * FROM routes WHERE recipe = 'bomb'")
    assert route["outcome"] == "error" and "stopped" in route["message"], route
    assert relay.client.get("/healthz").status_code == 200
