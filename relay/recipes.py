"""Recipes: the user's YAML files that say which events go where, and how.

Every ``*.yaml`` (or ``*.yml``) in the recipes folder, except ``sources.yaml``, is a
recipe (sub-folders too; its name is its path without the extension):

```yaml
source: tito                       # a name from sources.yaml
events: ["ticket.completed"]       # optional; glob patterns on the event type
when: "registration.receipt.paid"  # optional JMESPath; falsy means skip (logged)
for_each: "tickets"                # optional JMESPath giving a list: one run per item
fields:                            # what is sent (see relay.mapping)
  email: email
  name: "{{ first_name }} {{ last_name }}"
to:
  - type: http
    url: ${CRM_URL}
enabled: true                      # optional; false keeps the file but sends nothing
```

Loading never raises: a recipe with any error (YAML, JMESPath, Jinja, unknown
destination type or source, unresolved secret) is kept, disabled, with a
``ConfigError`` that names its file, line and field.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .destinations import Destination, DestinationContext, OptionError, destination_types
from .errors import ConfigError, MappingError
from .mapping import Compiled, Expression, compile_value
from .sources import Sources
from .yamlfile import Located, Lookup, load, loads, plain, resolve

KEYS = frozenset({"source", "events", "when", "for_each", "fields", "to", "enabled", "description"})
SOURCES_FILE = "sources.yaml"


@dataclasses.dataclass
class Recipe:
    name: str
    path: str
    source: str | None = None
    events: list[str] = dataclasses.field(default_factory=list)
    when: Expression | None = None
    for_each: Expression | None = None
    fields: Compiled | None = None
    to: list[Destination] = dataclasses.field(default_factory=list)
    enabled: bool = True
    description: str = ""
    error: ConfigError | None = None
    secret_values: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return self.enabled and self.error is None

    def wants(self, event_type: str, is_test: bool) -> bool:
        """Does this recipe take events of this type?

        Test and ping events go only to recipes that name their type exactly: a
        wildcard (or no ``events:`` at all) never matches them.
        """
        if is_test:
            return event_type in self.events
        if not self.events:
            return True
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.events)


@dataclasses.dataclass
class Recipes:
    items: list[Recipe]

    def for_source(self, source: str) -> list[Recipe]:
        """The source's recipes, plus broken ones whose source could not be read.

        A recipe whose YAML does not parse cannot say which source it is for, so it
        is reported (as an error) with every source rather than with none.
        """
        return [r for r in self.items
                if r.source == source or (r.source is None and r.error is not None)]

    def get(self, name: str) -> Recipe | None:
        for recipe in self.items:
            if recipe.name == name:
                return recipe
        return None

    def errors(self) -> list[ConfigError]:
        return [r.error for r in self.items if r.error is not None]


def recipe_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
    return sorted(p for p in found if p.relative_to(folder).as_posix() != SOURCES_FILE
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class _Secrets:
    """Wraps a lookup to remember every secret value a recipe used (for redaction)."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self.used: set[str] = set()

    def __call__(self, name: str) -> str | None:
        value = self.lookup(name)
        if value:
            self.used.add(value)
        return value


def _compile_fields(where: Located, node: Any, lookup: Lookup) -> Compiled:
    """Compile ``fields:``, resolving secrets and reporting the exact key that fails."""
    if isinstance(node, Mapping):
        items: Iterable[tuple[Any, Any]] = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        raise where.error("fields must map names to expressions, e.g. `email: email`")
    out: dict[str, Compiled] = {}
    seq: list[Compiled] = []
    for key, value in items:
        if isinstance(value, (Mapping, list)):
            compiled = _compile_fields(where.child(key), value, lookup)
        else:
            try:
                compiled = compile_value(resolve(value, lookup, where, key))
            except MappingError as e:
                raise where.error(e.message, key) from None
        if isinstance(node, Mapping):
            out[str(key)] = compiled
        else:
            seq.append(compiled)
    return out if isinstance(node, Mapping) else seq


def _build(recipe: Recipe, data: Any, sources: Sources, lookup: _Secrets,
           context: DestinationContext) -> None:
    top = Located(data, recipe.path)
    if not isinstance(data, Mapping):
        raise top.error("a recipe is a mapping with at least `source:`, `fields:` and `to:`")
    unknown = [k for k in data if str(k) not in KEYS]
    if unknown:
        raise top.error(f"unknown key {str(unknown[0])!r}; a recipe may have: "
                        f"{', '.join(sorted(KEYS))}", unknown[0])
    recipe.description = str(data.get("description") or "")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise top.error("enabled must be true or false", "enabled")
    recipe.enabled = enabled

    if "source" not in data:
        raise top.error("`source:` is missing: name a source from sources.yaml")
    recipe.source = str(data["source"])
    if recipe.source not in sources:
        known = ", ".join(sorted(sources)) or "none yet"
        raise top.error(f"there is no source {recipe.source!r} in sources.yaml (known: {known})",
                        "source")

    events = data.get("events", [])
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, list) or not all(isinstance(e, str) and e for e in events):
        raise top.error("events must be a list of event types (glob patterns allowed)", "events")
    recipe.events = list(events)

    for key in ("when", "for_each"):
        if data.get(key) is not None:
            value = data[key]
            if not isinstance(value, str):
                raise top.error(f"{key} must be a JMESPath expression (text)", key)
            try:
                setattr(recipe, key, Expression(resolve(value, lookup, top, key)))
            except MappingError as e:
                raise top.error(e.message, key) from None

    if "fields" not in data:
        raise top.error("`fields:` is missing: say what to send, e.g. `email: email`")
    if not isinstance(data["fields"], (Mapping, list)):
        raise top.error("fields must map names to expressions, e.g. `email: email`", "fields")
    recipe.fields = _compile_fields(top.child("fields"), data["fields"], lookup)

    to = data.get("to")
    if isinstance(to, Mapping):  # a single destination may be written without the list
        to = [to]
    if not isinstance(to, list) or not to:
        raise top.error("`to:` must list at least one destination", "to" if "to" in data else None)
    listed = top.child("to")
    types = destination_types()
    for i, entry in enumerate(to):
        where = listed.child(i) if isinstance(data["to"], list) else listed
        if not isinstance(entry, Mapping) or "type" not in entry:
            raise (listed.error if isinstance(data["to"], list) else top.error)(
                "each destination needs `type:` (" + ", ".join(sorted(types)) + ")",
                i if isinstance(data["to"], list) else "to")
        kind = str(entry["type"])
        cls = types.get(kind)
        if cls is None:
            raise where.error(f"unknown destination type {kind!r}; known types: "
                              f"{', '.join(sorted(types))}", "type")
        config = plain({k: resolve(v, lookup, where, k) for k, v in entry.items()})
        try:
            recipe.to.append(cls(config, context))
        except OptionError as e:
            raise where.error(e.message, e.key) from None
        except ConfigError as e:
            raise where.error(e.message) from None


def load_recipe(path: Path, folder: Path, sources: Sources, lookup: Lookup,
                context: DestinationContext) -> Recipe:
    """Load one recipe file. Never raises: errors are kept on the recipe."""
    return _load_recipe(lambda: load(path, str(path)), path, folder, sources, lookup, context)


def load_recipe_text(text: str, path: Path, folder: Path, sources: Sources, lookup: Lookup,
                     context: DestinationContext) -> Recipe:
    """Load ``text`` as if it were the recipe file at ``path`` (which need not exist).

    The web editor checks and previews unsaved text this way: the same code as
    ``load_recipe``, so its errors are the ones relay would report for the file.
    """
    return _load_recipe(lambda: loads(text, str(path)), path, folder, sources, lookup, context)


def _load_recipe(read: Callable[[], Any], path: Path, folder: Path, sources: Sources, lookup: Lookup,
                 context: DestinationContext) -> Recipe:
    name = path.relative_to(folder).with_suffix("").as_posix()
    recipe = Recipe(name=name, path=str(path))
    secrets = _Secrets(lookup)
    data: Any = None
    try:
        data = read()
        _build(recipe, data, sources, secrets, context)
    except ConfigError as e:
        # An error before `source:` was read (an unknown key, say) still belongs
        # to that source, so its route log shows it.
        if recipe.source is None and isinstance(data, Mapping) \
                and isinstance(data.get("source"), str):
            recipe.source = data["source"]
        # A resolved secret can end up in a message (a url that is not a URL).
        e.message = redact(e.message, secrets.used)
        recipe.error = e
        recipe.to = []
    recipe.secret_values = frozenset(secrets.used)
    return recipe


def load_recipes(folder: Path, sources: Sources, lookup: Lookup,
                 context: DestinationContext) -> Recipes:
    return Recipes([load_recipe(p, folder, sources, lookup, context) for p in recipe_files(folder)])


def check_messages(sources: Sources, recipes: Recipes) -> list[str]:
    """Every problem as ``FILE:LINE: message``, sources first."""
    lines = [e.located() for e in sources.all_errors()]
    lines += [e.located() for e in recipes.errors()]
    return lines


def redact(text: str, secrets: Iterable[str]) -> str:
    """Hide every secret value found in ``text``."""
    for value in sorted(set(secrets), key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, "[secret]")
    return text
