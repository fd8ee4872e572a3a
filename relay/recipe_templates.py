"""Starting points for new recipes: one per platform and destination type.

The web UI's "New recipe" page asks for a source and a destination type and opens
the editor on ``template(...)``'s text, which is not saved until the user saves it.
A template maps the platform's usual fields (the paths come from each platform's
sample payloads in ``tests/samples``, as in the shipped ``recipes/``) onto what the
destination needs, and names its credentials as ``${SECRET}`` references, so it
loads without errors as soon as those secrets are set. Comments say what to change.

Each platform has a ``Profile``: where its payload keeps the buyer's email, name,
the order reference and so on, as JMESPath (or Jinja) that works in the recipe's
``fields:`` (relative to the item when the profile has ``for_each``). Each
destination type has a function writing the ``fields:`` and ``to:`` it needs from
those roles.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from collections.abc import Callable

from .destinations import destination_types


@dataclasses.dataclass(frozen=True)
class Profile:
    """Where one platform's payload keeps what recipes usually send."""

    label: str
    events: tuple[str, ...] = ()
    events_note: str = ""
    for_each: str | None = None
    for_each_note: str = ""
    email: str = "email"
    first_name: str = "first_name"
    last_name: str = "last_name"
    name: str = "name"
    reference: str = "id"
    ticket: str | None = None
    amount: str | None = None
    event: str | None = None
    message: str = "New {{ _meta.type }} event from {{ _meta.source }}"
    generic: bool = False  # the paths are guesses: the platform's payloads vary


PROFILES: dict[str, Profile] = {
    "tikkl": Profile(
        label="Tikkl", events=("ticket",), events_note="Tikkl's \"Ticket purchase\"",
        email="registrantEmail", first_name="split(registrantName, ' ')[0]",
        last_name="join(' ', split(registrantName, ' ')[1:])", name="registrantName",
        reference="ticketId", event="campaignName",
        message="New ticket for {{ campaignName }}: {{ registrantName }} ({{ registrantEmail }})"),
    "tito": Profile(
        label="Tito", events=("ticket.completed",), events_note="a ticket is complete",
        email="email", first_name="first_name", last_name="last_name",
        name="{{ first_name }} {{ last_name }}", reference="reference", ticket="release_title",
        amount="price", event="event.title",
        message="New ticket for {{ event.title }}: {{ first_name }} {{ last_name }} ({{ release_title }})"),
    "quicket": Profile(
        label="Quicket", events=("checkout_completed",), events_note="a completed purchase",
        for_each="tickets", for_each_note="one delivery per ticket; `_event` is the whole purchase",
        email="attendee_email || _event.email", first_name="split(attendee_name, ' ')[0]",
        last_name="join(' ', split(attendee_name, ' ')[1:])", name="attendee_name",
        reference="_event.reference", ticket="ticket_type", amount="price", event="_event.event_name",
        message="New ticket for {{ _event.event_name }}: {{ attendee_name }} ({{ ticket_type }})"),
    "openticket": Profile(
        label="OpenTicket", events=("order.*",), events_note="the webhook's trigger, e.g. order.paid",
        email="email", first_name="firstname", last_name="lastname",
        name="{{ firstname }} {{ lastname }}", reference="guid",
        amount="{{ '%.2f' | format((price or 0) / 100) }}",
        message="New order: {{ firstname }} {{ lastname }}, {{ '%.2f' | format((price or 0) / 100) }} "
                "{{ currency }}"),
    "webconnex": Profile(
        label="Webconnex", events=("registration",), events_note="a completed registration",
        for_each="data.registrants",
        for_each_note="one delivery per registrant; `_event` is the whole registration",
        email="field(data, 'email') || _event.data.billing.email",
        first_name="field(data, 'name').first.value", last_name="field(data, 'name').last.value",
        name="{{ (data | field('name')).first.value }} {{ (data | field('name')).last.value }}",
        reference="_event.data.orderNumber", amount="amount", event="_event.meta.name",
        message="New registration for {{ _event.meta.name }}: order {{ _event.data.orderNumber }}"),
}

GENERIC = Profile(label="", generic=True)

# Stand-in values for settings that are not secrets but must be replaced.
SPREADSHEET = "https://docs.google.com/spreadsheets/d/YOUR-SPREADSHEET-ID/edit"
AIRTABLE_BASE = "appXXXXXXXXXXXXXX"


def profile_for(platform: str) -> Profile:
    known = PROFILES.get(platform)
    if known is not None:
        return known
    return dataclasses.replace(GENERIC, label=platform)


# --- writing YAML -------------------------------------------------------------------

PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")


def scalar(value: str) -> str:
    """``value`` as a YAML scalar: bare when that is unambiguous, else double-quoted."""
    if PLAIN.match(value) and value.lower() not in ("true", "false", "null", "yes", "no", "on", "off"):
        return value
    return json.dumps(value, ensure_ascii=False)


def key(name: str) -> str:
    return name if re.match(r"^[A-Za-z_][A-Za-z0-9_ ]*$", name) and not name.endswith(" ") else json.dumps(name)


def field_lines(fields: list[tuple[str, str, str]]) -> list[str]:
    """``fields:`` lines from ``(name, expression, comment)``."""
    lines = ["fields:"]
    for name, expression, comment in fields:
        line = f"  {key(name)}: {scalar(expression)}"
        lines.append(f"{line:<40} # {comment}" if comment else line)
    return lines


def common_fields(p: Profile) -> list[tuple[str, str, str]]:
    """What a plain row or record usually holds: reference, buyer, ticket, price."""
    fields = [("reference", p.reference, "the order or ticket reference"),
              ("email", p.email, ""),
              ("name", p.name, "")]
    for name, value in (("ticket", p.ticket), ("amount", p.amount), ("event", p.event)):
        if value is not None:
            fields.append((name, value, ""))
    return fields


# --- one function per destination type: (fields, to lines) ----------------------------

Part = tuple[list[tuple[str, str, str]], list[str], list[str]]  # fields, `to:` lines, notes


def http(p: Profile, source: str, name: str) -> Part:
    return common_fields(p), [
        "  - type: http",
        "    url: ${CRM_URL}                       # the address that receives each delivery",
        "    # headers:                            # if it needs a key:",
        '    #   Authorization: "Bearer ${CRM_TOKEN}"',
    ], ["Set the secret CRM_URL (the receiving address) on the Secrets page."]


def csv(p: Profile, source: str, name: str) -> Part:
    return common_fields(p), [
        "  - type: csv",
        f"    path: {scalar(f'{source}/{name}.csv')}"
        "          # in the data folder; one row per delivery",
    ], []


def google_sheets(p: Profile, source: str, name: str) -> Part:
    return common_fields(p), [
        "  - type: google_sheets",
        "    key: ${GOOGLE_SERVICE_ACCOUNT}        # the service account's JSON key",
        f"    spreadsheet: {SPREADSHEET}",
        "    sheet: Sheet1                         # the tab's name",
    ], ["Set the secret GOOGLE_SERVICE_ACCOUNT (the whole JSON key file), share the spreadsheet "
        "with the account's email as Editor, and paste the spreadsheet's address below. "
        "Row 1 of the tab holds the field names as column names."]


def hubspot(p: Profile, source: str, name: str) -> Part:
    return [("email", p.email, "required: HubSpot finds the contact by it"),
            ("firstname", p.first_name, ""),
            ("lastname", p.last_name, "")], [
        "  - type: hubspot",
        "    token: ${HUBSPOT_TOKEN}               # the private app's access token (pat-...)",
    ], ["Set the secret HUBSPOT_TOKEN (a private app's token with the scope "
        "crm.objects.contacts.write). Fields are contact properties by internal name."]


def mailchimp(p: Profile, source: str, name: str) -> Part:
    fields = [("email", p.email, "required: the member is found by it"),
              ("first_name", p.first_name, ""),
              ("last_name", p.last_name, "")]
    to = [
        "  - type: mailchimp",
        "    api_key: ${MAILCHIMP_API_KEY}         # the whole key, ending in -us14 or similar",
        "    list: ${MAILCHIMP_AUDIENCE_ID}        # the audience id",
        "    status_if_new: subscribed             # or pending: Mailchimp asks each new person",
        "    merge_fields:                         # Mailchimp merge tag: recipe field",
        "      FNAME: first_name",
        "      LNAME: last_name",
    ]
    if p.ticket is not None:
        fields.append(("ticket_type", p.ticket, ""))
        to.append("    tags: ticket_type                     # a tag per ticket type")
    return fields, to, ["Set the secrets MAILCHIMP_API_KEY and MAILCHIMP_AUDIENCE_ID."]


def airtable(p: Profile, source: str, name: str) -> Part:
    fields = [("Email", p.email, "column names, exactly as in Airtable"),
              ("Name", p.name, ""),
              ("Reference", p.reference, "")]
    if p.amount is not None:
        fields.append(("Amount", p.amount, ""))
    return fields, [
        "  - type: airtable",
        "    token: ${AIRTABLE_TOKEN}              # a personal access token (pat...)",
        f"    base: {AIRTABLE_BASE}              # your base's id: airtable.com/<this part>/...",
        "    table: Sales                          # the table's name, as on its tab",
        "    merge_on: [Email]                     # update the record with this Email",
    ], ["Set the secret AIRTABLE_TOKEN (scope data.records:write), write your base's id "
        "below and make the table's columns match the field names."]


def pipedrive(p: Profile, source: str, name: str) -> Part:
    return [("name", p.name, ""),
            ("email", p.email, "required: the person is found by it")], [
        "  - type: pipedrive",
        "    token: ${PIPEDRIVE_TOKEN}             # your personal API token",
    ], ["Set the secret PIPEDRIVE_TOKEN (Personal preferences > API in Pipedrive)."]


def slack(p: Profile, source: str, name: str) -> Part:
    return [("text", p.message, "the message")], [
        "  - type: slack",
        "    webhook: ${SLACK_WEBHOOK_URL}         # the incoming webhook's address",
    ], ["Set the secret SLACK_WEBHOOK_URL (an incoming webhook of your Slack app)."]


WRITERS: dict[str, Callable[[Profile, str, str], Part]] = {
    "http": http, "csv": csv, "google_sheets": google_sheets, "hubspot": hubspot,
    "mailchimp": mailchimp, "airtable": airtable, "pipedrive": pipedrive, "slack": slack,
}


def other(kind: str) -> Callable[[Profile, str, str], Part]:
    """A destination type added by a plugin: its required options, as secrets to set."""
    def write(p: Profile, source: str, name: str) -> Part:
        cls = destination_types()[kind]
        to = [f"  - type: {kind}"]
        names = []
        for option in sorted(cls.required):
            secret = re.sub(r"[^A-Z0-9_]", "_", f"{kind}_{option}".upper())
            names.append(secret)
            to.append(f"    {option}: ${{{secret}}}")
        to.append(f"    # other options: {', '.join(sorted(cls.options - cls.required)) or 'none'}")
        notes = [f"Set the secrets {', '.join(names)}, or write the values here."] if names else []
        return common_fields(p), to, notes
    return write


def template(platform: str, source: str, destination: str, name: str) -> str:
    """The text of a new recipe ``name`` for events of ``source`` (a ``platform`` source)."""
    p = profile_for(platform)
    writer = WRITERS.get(destination) or other(destination)
    fields, to, notes = writer(p, source, name)
    lines = [f"# {name}: {p.label} events from the source {source!r}, sent to {destination}."]
    for note in notes:
        lines += ["# " + part for part in textwrap.wrap(note, 86)]
    if p.generic:
        lines.append("# The field paths below are guesses: pick the real ones from a received "
                     "event with the field picker.")
    lines.append("# Pick a received event beside the editor to see what would be sent.")
    lines.append(f"source: {scalar(source)}")
    if p.events:
        events = ", ".join(json.dumps(e) for e in p.events)
        lines.append(f"{'events: [' + events + ']':<40} # {p.events_note}")
    else:
        lines.append("# events: [\"order.created\"]              # optional: only these event types")
    if p.for_each:
        lines.append(f"{'for_each: ' + scalar(p.for_each):<40} # {p.for_each_note}")
    lines += field_lines(fields)
    lines.append("to:")
    lines += to
    return "\n".join(line.rstrip() for line in lines) + "\n"
