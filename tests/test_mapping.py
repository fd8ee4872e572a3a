"""relay.mapping: JMESPath fields, sandboxed Jinja templates, the names a recipe sees.

The sandbox tests feed templates that try to reach Python internals; each must be
stopped with a ``MappingError`` (never run, never hand back the object). The
property tests check that nothing but ``MappingError`` ever escapes compiling or
evaluating, whatever the field or the payload: any other exception would stop
relay's router.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FUZZ_SCALE
from relay.errors import MappingError
from relay.mapping import (
    Expression,
    Literal,
    Template,
    compile_value,
    evaluate,
    event_root,
    item_root,
    truthy,
)

SAMPLES = Path(__file__).parent / "samples"
META = {"source": "tito", "type": "ticket.completed", "id": 7, "received_at": 1_750_000_000.5}


def run(value: Any, root: Any) -> Any:
    return evaluate(compile_value(value), root)


def webconnex_registrants() -> list[dict[str, Any]]:
    payload = json.loads((SAMPLES / "webconnex/registration.json").read_bytes())
    return list(payload["data"]["registrants"])


# --- JMESPath fields and literals ----------------------------------------------------


def test_plain_strings_are_jmespath() -> None:
    root = {"email": "a@example.com", "tickets": [{"price": 12.5}, {"price": 3}],
            "responses": {"t-shirt-size": "M"}, "event": {"title": "Conf"}}
    assert isinstance(compile_value("email"), Expression)
    assert run("email", root) == "a@example.com"
    assert run("tickets[1].price", root) == 3
    assert run("tickets[*].price", root) == [12.5, 3]
    assert run('responses."t-shirt-size"', root) == "M"
    assert run("event.title", root) == "Conf"
    assert run("missing", root) is None
    assert run("missing.deeper[0]", root) is None
    assert run("length(tickets || `[]`)", root) == 2
    assert run("length(nothing || `[]`)", root) == 0


def test_literals() -> None:
    assert run("'tito'", {"tito": "not this"}) == "tito"
    assert run("`42`", {}) == 42
    assert run("`true`", {}) is True
    for value in (3, -1, 2.5, 0, True, False, None):
        compiled = compile_value(value)
        assert isinstance(compiled, Literal)
        result = evaluate(compiled, {"3": "no", "True": "no"})
        assert result == value and type(result) is type(value)


def test_mappings_and_lists_are_mapped_item_by_item() -> None:
    compiled = compile_value({"who": {"email": "email", "tags": ["'a'", 1, "{{ n }}"]}})
    assert evaluate(compiled, {"email": "e@x", "n": 5}) == {
        "who": {"email": "e@x", "tags": ["a", 1, "5"]}}


def test_values_that_cannot_be_fields() -> None:
    for value in (b"bytes", object(), {1, 2}):
        with pytest.raises(MappingError, match="cannot be a field value"):
            compile_value(value)


def test_bad_jmespath_is_a_mapping_error_at_compile_time() -> None:
    for text in ("email[[", "a ||", "tickets[?", "field(", "'unclosed"):
        with pytest.raises(MappingError, match="is not a valid JMESPath expression") as info:
            compile_value(text)
        assert repr(text) in info.value.message


def test_jmespath_type_errors_are_mapping_errors() -> None:
    with pytest.raises(MappingError, match="'lower\\(n\\)' failed"):
        run("lower(n)", {"n": 5})
    with pytest.raises(MappingError, match="failed"):
        run("length(n)", {"n": 5})


def test_expression_references_are_not_values() -> None:
    # `&name` is only meaningful inside sort_by & co.; as a field's result it is not
    # data that could be stored or sent.
    root = {"a": 1, "t": [{"p": 2}, {"p": 1}]}
    for text in ("&a", "[&a]", "{x: &a}", "to_json(&a)", "[a, &a]", "b || &a"):
        with pytest.raises(MappingError) as info:
            run(text, root)
        assert repr(text) in info.value.message
    assert run("sort_by(t, &p)[*].p", root) == [1, 2]
    assert run("max_by(t, &p).p", root) == 2


# --- Jinja templates ------------------------------------------------------------------


def test_templates() -> None:
    root = {"first_name": "Peter", "last_name": "Winter", "price": 1250, "paid": True,
            "tags": ["a", "b"]}
    assert isinstance(compile_value("{{ first_name }}"), Template)
    assert isinstance(compile_value("{% if paid %}x{% endif %}"), Template)
    assert run("{{ first_name }} {{ last_name }}", root) == "Peter Winter"
    assert run("{{ '%.2f' | format(price / 100) }}", root) == "12.50"
    assert run("{% if paid %}paid{% else %}unpaid{% endif %}", root) == "paid"
    assert run("{{ tags | join(',') }}", root) == "a,b"
    assert run("{{ price }}", root) == "1250"  # a template always gives text
    assert run("{{ first_name | lower }}-{{ last_name | upper }}", root) == "peter-WINTER"
    assert run("{{ _meta.source }}/{{ _meta.id }}", event_root(root, META)) == "tito/7"


def test_none_renders_as_empty() -> None:
    root = {"middle": None, "person": {"title": None}}
    assert run("{{ middle }}", root) == ""
    assert run("[{{ middle }}]", root) == "[]"
    assert run("{{ person.title }}x", root) == "x"


def test_template_on_a_non_mapping_root_sees_item() -> None:
    assert run("{{ _item }}", "just text") == "just text"
    assert run("{{ _item | length }}", [1, 2, 3]) == "3"


def test_tojson_filter_keeps_unicode() -> None:
    assert run("{{ v | tojson }}", {"v": {"naam": "Zoë", "n": [1, None]}}) == \
        '{"naam": "Zoë", "n": [1, null]}'


@pytest.mark.parametrize("template, missing", [
    ("{{ first_nme }}", "first_nme"),
    ("{{ person.middle }}", "middle"),
    ("{{ nobody.email }}", "nobody"),
    ("{% if paidd %}x{% endif %}", "paidd"),
    ("{{ first_name }} {{ lst_name }}", "lst_name"),
])
def test_strict_undefined_names_the_missing_name(template: str, missing: str) -> None:
    root = {"first_name": "A", "person": {"first": "B"}}
    with pytest.raises(MappingError) as info:
        run(template, root)
    assert f"'{missing}'" in info.value.message
    assert "does not have" in info.value.message


def test_evaluate_names_the_failing_field() -> None:
    compiled = compile_value({"ok": "email", "person": {"name": "{{ nme }}"}})
    with pytest.raises(MappingError) as info:
        evaluate(compiled, {"email": "e"})
    assert info.value.message.startswith("field person.name: ")
    compiled = compile_value({"tags": ["'a'", "lower(n)"]})
    with pytest.raises(MappingError) as info:
        evaluate(compiled, {"n": 1})
    assert info.value.message.startswith("field tags[1]: ")


def test_bad_jinja_is_a_mapping_error_at_compile_time() -> None:
    for text in ("{{ first_name }", "{% if x %}never closed", "{{ a | }}", "{% for %}{% endfor %}"):
        with pytest.raises(MappingError, match="template error"):
            compile_value(text)
    with pytest.raises(MappingError, match="(?i)no filter named 'nosuchfilter'"):
        compile_value("{{ a | nosuchfilter }}")


def test_deep_nesting_is_a_mapping_error_not_a_crash() -> None:
    # Loading recipes must never raise anything but ConfigError; a RecursionError
    # from the parsers would stop relay from starting.
    with pytest.raises(MappingError, match="nested too deeply"):
        compile_value("{{ " + "(" * 500 + "1" + ")" * 500 + " }}")
    with pytest.raises(MappingError, match="nested too deeply"):
        compile_value("(" * 5000 + "a" + ")" * 5000)


def test_filters_given_the_wrong_kind_of_value_are_mapping_errors() -> None:
    # Any exception a filter raises must become a MappingError, or the router stops.
    for template, root in (("{{ x | dictsort }}", {"x": [1]}),
                           ("{{ x | xmlattr }}", {"x": "s"}),
                           ("{{ x | indent }}", {"x": 5}),
                           ("{{ x | truncate(0) }}", {"x": "long enough text"}),
                           ("{{ x | round }}", {"x": "s"}),
                           ("{{ 1 / x }}", {"x": 0})):
        with pytest.raises(MappingError, match="the template failed"):
            run(template, root)


# --- Webconnex's [{key, value}] lists -------------------------------------------------


def test_field_function_on_webconnex_registrants() -> None:
    registrants = webconnex_registrants()
    first, second = registrants
    assert run("field(data, 'email')", first) == "maria.lopez@example.com"
    assert run("field(data, 'email')", second) == "daniel.lopez@example.com"
    assert run("field(data, 'tshirt_size')", second) == "L"
    # the name entry has no `value`: it comes whole, so its parts can be picked
    name = run("field(data, 'name')", first)
    assert name["key"] == "name"
    assert run("field(data, 'name').first.value", first) == "Maria"
    assert run("field(data, 'name').last.value", second) == "Lopez"
    assert run("field(data, 'name').first.value", second) == "Daniel"
    assert run("field(data, 'nope')", first) is None
    assert run("field(missing, 'email')", first) is None
    assert run("field(data, 'nope') || 'fallback'", first) == "fallback"


def test_field_function_edge_cases() -> None:
    data = [{"key": "a", "value": None}, {"key": "a", "value": 2}, "junk", {"value": 3},
            {"key": "b", "value": False}]
    assert run("field(data, 'a')", {"data": data}) is None  # the first entry wins
    assert run("field(data, 'b')", {"data": data}) is False
    with pytest.raises(MappingError):
        run("field(data, 'a')", {"data": "not a list"})
    with pytest.raises(MappingError):
        run("field(data, `1`)", {"data": data})


def test_field_filter_on_webconnex_registrants() -> None:
    first, second = webconnex_registrants()
    assert run("{{ data | field('email') }}", first) == "maria.lopez@example.com"
    assert run("{{ (data | field('name')).first.value }} {{ (data | field('name')).last.value }}",
               second) == "Daniel Lopez"
    assert run("{{ data | field('nope') }}", first) == ""
    assert run("{{ data | field('email') }}", {"data": "not a list"}) == ""
    assert run("{{ data | field('email') }}", {"data": None}) == ""


# --- extra JMESPath functions ---------------------------------------------------------


def test_string_functions() -> None:
    root = {"name": "  Ann Smith ", "email": "Ann@Example.COM", "tags": "a,b,,c", "none": None}
    assert run("lower(email)", root) == "ann@example.com"
    assert run("upper(email)", root) == "ANN@EXAMPLE.COM"
    assert run("trim(name)", root) == "Ann Smith"
    assert run("split(tags, ',')", root) == ["a", "b", "", "c"]
    assert run("split(trim(name), ' ')[1]", root) == "Smith"
    assert run("split('abc', '')", root) == ["a", "b", "c"]
    assert run("replace(email, 'Example', 'example')", root) == "Ann@example.COM"
    assert run("replace(email, '', 'x')", root) == "Ann@Example.COM"
    for function in ("lower(none)", "upper(none)", "trim(none)", "replace(none, 'a', 'b')",
                     "lower(missing)"):
        assert run(function, root) is None
    assert run("split(none, ',')", root) == []
    assert run("split('', ',')", root) == []


def test_to_json() -> None:
    root = {"order": {"id": 1, "naam": "Zoë", "tickets": [1, None, True]}}
    assert run("to_json(order)", root) == '{"id":1,"naam":"Zoë","tickets":[1,null,true]}'
    assert json.loads(run("to_json(order)", root)) == root["order"]
    assert run("to_json(missing)", root) == "null"
    assert run("to_json('text')", root) == '"text"'


@pytest.mark.parametrize("expression", [
    "lower(`1`)", "upper(`[]`)", "trim(`{}`)", "split(`1`, ',')", "split('a', `1`)",
    "replace('a', `1`, 'b')", "to_json()", "lower('a', 'b')", "nosuchfunction(a)",
])
def test_wrong_arguments_are_mapping_errors(expression: str) -> None:
    with pytest.raises(MappingError):
        run(expression, {"a": "x"})


# --- the names a recipe sees ----------------------------------------------------------


def test_event_root_names() -> None:
    payload = {"reference": "R1", "email": "buyer@example.com", "_meta": "the payload's own"}
    root = event_root(payload, META)
    assert run("reference", root) == "R1"
    assert run("_event", root) == payload
    assert run("_event._meta", root) == "the payload's own"
    assert run("_meta", root) == META  # relay's names win over the payload's
    assert run("_meta.type", root) == "ticket.completed"
    assert run("_item", root) is None and run("_index", root) is None
    # a payload that is a list is still reachable as _event
    assert run("_event[1]", event_root([1, 2], META)) == 2
    assert run("length(@)", event_root([1, 2], META)) == 2  # only _event and _meta


def test_item_root_names() -> None:
    payload = {"reference": "R1", "email": "buyer@example.com",
               "tickets": [{"id": "t1", "email": None, "_index": "own"}, {"id": "t2"}]}
    roots = [item_root(payload, META, item, i) for i, item in enumerate(payload["tickets"])]
    fields = compile_value({"order": "_event.reference", "ticket": "id", "index": "_index",
                            "email": "email || _event.email", "same": "_item.id",
                            "source": "_meta.source", "label": "{{ _index }}:{{ id }}"})
    assert [evaluate(fields, r) for r in roots] == [
        {"order": "R1", "ticket": "t1", "index": 0, "email": "buyer@example.com", "same": "t1",
         "source": "tito", "label": "0:t1"},
        {"order": "R1", "ticket": "t2", "index": 1, "email": "buyer@example.com", "same": "t2",
         "source": "tito", "label": "1:t2"},
    ]
    # an item that is not a mapping is reached through _item
    root = item_root(payload, META, "plain", 3)
    assert run("_item", root) == "plain"
    assert run("{{ _item }}#{{ _index }}", root) == "plain#3"
    assert run("reference", root) is None  # the event's keys are only under _event
    # the roots do not share or change the payload
    roots[0]["_meta"]["source"] = "changed"
    assert run("_meta.source", roots[1]) == "tito" and META["source"] == "tito"


@pytest.mark.parametrize("value, expected", [
    (0, True), (0.0, True), (1, True), (-1, True), ("0", True), ("false", True), (" ", True),
    ([0], True), ({"a": None}, True), (True, True),
    ("", False), ([], False), ({}, False), (None, False), (False, False),
])
def test_truthy(value: Any, expected: bool) -> None:
    assert truthy(value) is expected


def test_truthy_matches_jmespath() -> None:
    # `when` uses truthy(); JMESPath's own && / || use the same idea of false.
    for value in (0, "", [], {}, None, False, "x", [0], {"a": 1}, 0.0):
        jmespath_says = run("@ && `true` || `false`", value)
        assert truthy(value) is jmespath_says, value


# --- the sandbox ----------------------------------------------------------------------


UNSAFE = [
    "{{ ''.__class__ }}",
    "{{ x.__class__ }}",
    "{{ x.__class__.__base__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ cycler.__mro__ }}",
    "{{ cycler.__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('echo pwned').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self.__init__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self.__dict__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''['__class__'] }}",
    "{{ '' | attr('__class__') }}",
    "{{ '{0.__class__}'.format(x) }}",
    "{{ d.__setitem__('a', 1) }}",
    "{{ d.update({'a': 1}) }}",
    "{{ d.pop('k') }}",
    "{{ l.append(1) }}",
    "{{ l.__class__.__subclasses__() }}",
]


@pytest.mark.parametrize("template", UNSAFE)
def test_sandbox_stops_reaching_for_internals(template: str) -> None:
    root = {"x": 1, "d": {"k": "v"}, "l": [1]}
    with pytest.raises(MappingError) as info:
        run(template, root)
    # (lipsum is not offered at all: it is undefined rather than stopped.)
    assert "unsafe" in info.value.message or "'lipsum' is undefined" in info.value.message, \
        info.value.message
    assert root == {"x": 1, "d": {"k": "v"}, "l": [1]}  # nothing ran


def test_sandbox_caps_range() -> None:
    with pytest.raises(MappingError) as info:
        run("{{ range(10**9) | list | length }}", {})
    assert "range" in info.value.message.lower()
    with pytest.raises(MappingError):
        run("{% for i in range(10**9) %}{% endfor %}", {})
    assert run("{{ range(3) | list | length }}", {}) == "3"


@pytest.mark.parametrize("template", [
    "{% set d.k = 'changed' %}{{ d.k }}",
    "{% set x = d %}{% set x.k = 'changed' %}{{ x.k }}",
    "{% set l.y = 1 %}",
])
def test_sandbox_refuses_attribute_assignment(template: str) -> None:
    root = {"d": {"k": "v"}, "l": [1]}
    with pytest.raises(MappingError, match="cannot assign attribute"):
        run(template, root)
    assert root == {"d": {"k": "v"}, "l": [1]}


# --- properties -----------------------------------------------------------------------


FUZZ = settings(max_examples=300 * FUZZ_SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = ["email", "name", "first_name", "last_name", "data", "key", "value", "first", "last",
        "tickets", "price", "registrants", "billing", "reference", "id", "_event", "_meta"]

scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)
# Text that looks like expressions and templates, so the parsers get exercised.
SYNTAX = "{}%|.()[]'\"`@&?!=<>,:*-_ #~\\\nabcdefxyz019"
field_text = (st.text(max_size=40)
              | st.text(alphabet=SYNTAX, max_size=40)
              | st.text(alphabet=SYNTAX, max_size=30).map(lambda s: "{{ " + s + " }}")
              | st.text(alphabet=SYNTAX, max_size=30).map(lambda s: "{% " + s + " %}"))
field_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | field_text,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


# JMESPath warns about the old `text` literal syntax (and still accepts it); under
# filterwarnings=error that warning would be raised, which relay never sees.
OLD_LITERAL = pytest.mark.filterwarnings("ignore:deprecated string literal syntax")


@OLD_LITERAL
@FUZZ
@given(field_values)
def test_compile_value_raises_only_mapping_error(value: Any) -> None:
    try:
        compiled = compile_value(value)
    except MappingError as e:
        assert e.message
        return
    assert compiled is not None


# Fields the way recipes write them (the shipped examples and more), run on any payload.
REALISTIC = compile_value({
    "email": "email",
    "fallback": "field(data, 'email') || _event.data.billing.email",
    "first": "field(data, 'name').first.value",
    "price": "tickets[0].price",
    "count": "length(tickets || `[]`)",
    "lower": "lower(email)",
    "upper": "upper(name)",
    "trim": "trim(name)",
    "split": "split(name, ' ')",
    "replace": "replace(email, '@', ' at ')",
    "json": "to_json(@)",
    "literal": "'tito'",
    "number": 3,
    "name": "{{ first_name }} {{ last_name }}",
    "total": "{{ '%.2f' | format((price or 0) / 100) }}",
    "filter": "{{ data | field('email') }}",
    "parts": "{{ (data | field('name')).first.value }}",
    "lowered": "{{ name | lower }}",
    "length": "{{ tickets | length }}",
    "tojson": "{{ _event | tojson }}",
    "int": "{{ price | int + 1 }}",
    "sorted": "{{ data | dictsort }}",
    "joined": "{{ tickets | join(',') }}",
    "math": "{{ price * 2 }}",
    "loop": "{% for t in tickets %}{{ t.id }},{% endfor %}",
})


@FUZZ
@given(json_values, st.integers(0, 3))
def test_evaluate_raises_only_mapping_error(payload: Any, index: int) -> None:
    roots = [event_root(payload, META), item_root(payload, META, payload, index)]
    if isinstance(payload, dict) and isinstance(payload.get("tickets"), list):
        roots += [item_root(payload, META, t, i) for i, t in enumerate(payload["tickets"])]
    for root in roots:
        for name, compiled in REALISTIC.items():
            try:
                evaluate(compiled, root, name)
            except MappingError as e:
                assert e.message.startswith(f"field {name}: ")


@OLD_LITERAL
@FUZZ
@given(st.text(alphabet=SYNTAX, max_size=30), json_values)
def test_any_expression_on_any_payload_raises_only_mapping_error(text: str, payload: Any) -> None:
    try:
        compiled = Expression(text)
    except MappingError:
        return
    try:
        result = compiled.evaluate(event_root(payload, META))
    except MappingError:
        return
    json.dumps(result)  # what an expression gives can always be sent

