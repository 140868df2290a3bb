"""Slash-command options as Discord builds them from a command's registration: the random
traffic's invocations draw their option values here."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from herwa.json_types import Json
from herwa.simulator._world import EVERYONE_PERMISSIONS, Guild

# Application command option types (https://discord.com/developers/docs/interactions/
# application-commands#application-command-object-application-command-option-type).
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = range(3, 12)


@dataclass(frozen=True)
class Invocation:
    options: list[Json]
    resolved: Json


def build_invocation(command: Json, guild: Guild, rng: random.Random) -> Invocation | None:
    """Options for one invocation of a registered command, shaped as Discord builds them from
    the registration: one subcommand (inside its group) when the command has any, every
    required option and some optional ones, values of the declared type within the declared
    choices, ranges and lengths, and users, channels and roles in ``resolved``. None when the
    command needs an option the simulator cannot supply (an attachment)."""
    resolved: Json = {}
    options = command.get("options") or []
    subs = [o for o in options if o.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP)]
    if not subs:
        leaf = _leaf_options(options, guild, rng, resolved)
        return None if leaf is None else Invocation(leaf, resolved)
    sub = rng.choice(subs)
    if sub["type"] == SUB_COMMAND_GROUP:
        inner = rng.choice(sub.get("options") or [{"type": SUB_COMMAND, "name": "?"}])
        leaf = _leaf_options(inner.get("options") or [], guild, rng, resolved)
        if leaf is None:
            return None
        nested = [{"type": SUB_COMMAND, "name": inner["name"], "options": leaf}]
        group = {"type": SUB_COMMAND_GROUP, "name": sub["name"], "options": nested}
        return Invocation([group], resolved)
    leaf = _leaf_options(sub.get("options") or [], guild, rng, resolved)
    if leaf is None:
        return None
    return Invocation([{"type": SUB_COMMAND, "name": sub["name"], "options": leaf}], resolved)


def _leaf_options(
    declared: list[Json], guild: Guild, rng: random.Random, resolved: Json
) -> list[Json] | None:
    out: list[Json] = []
    for option in declared:
        if not option.get("required") and rng.random() < 0.5:
            continue
        value = _option_value(option, guild, rng, resolved)
        if value is None:
            if option.get("required"):
                return None
            continue
        out.append({"type": option["type"], "name": option["name"], "value": value})
    return out


def _option_value(option: Json, guild: Guild, rng: random.Random, resolved: Json) -> Any:
    kind = option["type"]
    if option.get("choices"):
        return rng.choice(option["choices"])["value"]
    if kind == STRING:
        low = int(option.get("min_length") or 1)
        high = max(low, min(int(option.get("max_length") or 24), 24))
        return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(low, high)))
    if kind in (INTEGER, NUMBER):
        low = option.get("min_value", 1)
        high = option.get("max_value", max(low, 1) + 30)
        return rng.randint(int(low), int(high)) if kind == INTEGER else rng.uniform(low, high)
    if kind == BOOLEAN:
        return rng.random() < 0.5
    if kind in (USER, MENTIONABLE):
        member = rng.choice(list(guild.members.values()))
        resolved.setdefault("users", {})[str(member.user.id)] = member.user.payload()
        resolved.setdefault("members", {})[str(member.user.id)] = {
            **member.payload(with_user=False),
            "permissions": EVERYONE_PERMISSIONS,
        }
        return str(member.user.id)
    if kind == CHANNEL:
        wanted = option.get("channel_types")
        channels = [c for c in guild.channels.values() if not wanted or c.type in wanted]
        if not channels:
            return None
        channel = rng.choice(channels)
        resolved.setdefault("channels", {})[str(channel.id)] = {
            "id": str(channel.id),
            "name": channel.name,
            "type": channel.type,
            "permissions": EVERYONE_PERMISSIONS,
            **({"parent_id": str(channel.parent_id)} if channel.parent_id else {}),
        }
        return str(channel.id)
    if kind == ROLE:
        # Every guild has its @everyone role, whose id is the guild's.
        resolved.setdefault("roles", {})[str(guild.id)] = {
            "id": str(guild.id),
            "name": "@everyone",
            "permissions": EVERYONE_PERMISSIONS,
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        return str(guild.id)
    return None  # ATTACHMENT, or a type this simulator does not know


# Discord's limits on an autocomplete answer and on a choice
# (https://discord.com/developers/docs/interactions/application-commands#autocomplete).
MAX_CHOICES = 25
MAX_CHOICE_NAME = 100
MAX_STRING_CHOICE = 100
_SAFE_NUMBER = 2**53
AUTOCOMPLETE_TYPES = (STRING, INTEGER, NUMBER)


def focused_option(command: Json, options: list[Json]) -> Json:
    """The registered option of the one option marked ``focused`` in an autocomplete
    interaction's ``options`` (inside its subcommand and group). Discord sends autocomplete
    only for an option registered with ``autocomplete``, exactly one focused at a time: anything
    else is a caller's mistake and raises ValueError."""
    declared = command.get("options") or []
    sent = options
    while len(sent) == 1 and sent[0].get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP):
        name = sent[0].get("name")
        match = [o for o in declared if o.get("name") == name and o.get("type") == sent[0]["type"]]
        if not match:
            raise ValueError(f"/{command.get('name')} has no subcommand {name!r}")
        declared, sent = match[0].get("options") or [], sent[0].get("options") or []
    focused = [o for o in sent if o.get("focused")]
    if len(focused) != 1:
        raise ValueError("an autocomplete interaction has exactly one focused option")
    name = focused[0].get("name")
    option: Json | None = next((o for o in declared if o.get("name") == name), None)
    if option is None or not option.get("autocomplete"):
        raise ValueError(f"option {name!r} of /{command.get('name')} has no autocomplete")
    return option


def check_choices(option: Json, data: Json) -> str | None:
    """Why Discord would refuse ``data`` as the autocomplete answer for ``option``; None if
    it would take it."""
    choices = data.get("choices")
    if not isinstance(choices, list):
        return "choices: a list is required"
    if len(choices) > MAX_CHOICES:
        return f"choices: must be {MAX_CHOICES} or fewer in length"
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            return f"choices.{i}: an object is required"
        name = choice.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_CHOICE_NAME:
            return f"choices.{i}.name: must be between 1 and {MAX_CHOICE_NAME} in length"
        value = choice.get("value")
        kind = option.get("type")
        if kind == STRING:
            if not isinstance(value, str) or len(value) > MAX_STRING_CHOICE:
                return f"choices.{i}.value: a string of at most {MAX_STRING_CHOICE} characters"
        elif kind in (INTEGER, NUMBER):
            numeric = (int,) if kind == INTEGER else (int, float)
            if (
                isinstance(value, bool)
                or not isinstance(value, numeric)
                or not -_SAFE_NUMBER <= value <= _SAFE_NUMBER
            ):
                wanted = "an integer" if kind == INTEGER else "a number"
                return f"choices.{i}.value: {wanted} of at most 2**53 is required"
        else:
            return f"options: type {kind} has no autocomplete"
    return None


def check_registration(command: Json) -> str | None:
    """Why Discord would refuse to register ``command``'s options, as far as autocomplete
    goes: only string, integer and number options complete, and never beside ``choices``."""
    pending = list(command.get("options") or [])
    while pending:
        option = pending.pop()
        pending.extend(option.get("options") or [])
        if not option.get("autocomplete"):
            continue
        if option.get("type") not in AUTOCOMPLETE_TYPES:
            return f"option {option.get('name')!r}: autocomplete is for strings and numbers"
        if option.get("choices"):
            return f"option {option.get('name')!r}: autocomplete cannot be set with choices"
    return None
