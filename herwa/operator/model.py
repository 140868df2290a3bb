"""GuildSubscription as the operator sees it: the spec, claims on a guild, status conditions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
)

from herwa.platform import Name, QuotaName

GROUP = "herwa.dev"
VERSION = "v1alpha1"
PLURAL = "guildsubscriptions"
KIND = "GuildSubscription"
RESOURCE = f"{PLURAL}.{GROUP}"

CONDITION_TYPES = ("Ready", "EntitlementSynced", "CommandCacheSynced", "Conflict")

# Postgres keeps guild ids in a bigint: a larger id must be a spec error, not a store error.
INT64_MAX = 2**63 - 1
# The same bounds as the CRD's maxProperties: an API server without the schema, or an object
# written before it, must not turn a huge spec into a status patch the API server refuses.
MAX_FEATURE_OVERRIDES = 64
MAX_QUOTA_OVERRIDES = 32
# A condition message quotes what was wrong with the spec; quoted input is cut to this.
MAX_QUOTED = 64
MAX_MESSAGE = 2048


class Reason:
    """``reason`` values of the conditions (CamelCase, as Kubernetes convention asks)."""

    ACTIVE = "Active"
    SYNCED = "Synced"
    INVALID_SPEC = "InvalidSpec"
    UNKNOWN_TIER = "UnknownTier"
    CONFLICT = "ConflictingSubscription"
    NO_CONFLICT = "SoleClaim"
    EXPIRED = "Expired"
    SUSPENDED = "Suspended"
    STORE_UNAVAILABLE = "StoreUnavailable"


def _within_bigint(value: str) -> str:
    if int(value) > INT64_MAX:
        raise ValueError(f"must be at most {INT64_MAX}, the largest id a Postgres bigint holds")
    return value


class SubscriptionSpec(BaseModel):
    """The spec, checked again here: a CRD installed without its schema, or a field the schema
    cannot express (timezone-less dates), must still end as ``InvalidSpec``, never a crash."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    guild_id: Annotated[
        str,
        Field(alias="guildId", pattern=r"^[1-9][0-9]{16,18}$"),
        AfterValidator(_within_bigint),
    ]
    tier: Name
    feature_overrides: Annotated[
        dict[Name, StrictBool], Field(max_length=MAX_FEATURE_OVERRIDES)
    ] = Field(default_factory=dict, alias="featureOverrides")
    quota_overrides: Annotated[
        dict[QuotaName, Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]],
        Field(max_length=MAX_QUOTA_OVERRIDES),
    ] = Field(default_factory=dict, alias="quotaOverrides")
    expires_at: AwareDatetime | None = Field(None, alias="expiresAt")
    suspended: StrictBool = False

    @property
    def guild(self) -> int:
        return int(self.guild_id)


class SpecError(ValueError):
    pass


def quoted(value: object, limit: int = MAX_QUOTED) -> str:
    """``value`` for a message: printable, and cut to ``limit`` characters."""
    text = str(value)
    cut = text if len(text) <= limit else text[: limit - 1] + "…"
    return cut.encode("unicode_escape").decode("ascii") if not cut.isprintable() else cut


def bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def parse_spec(raw: Mapping[str, Any]) -> SubscriptionSpec:
    try:
        return SubscriptionSpec.model_validate(dict(raw))
    except ValidationError as exc:
        parts = []
        for error in exc.errors(include_url=False, include_input=False, include_context=False):
            # A key of an override map is part of the location: quoted, never copied whole.
            where = ".".join(quoted(p) for p in error["loc"])
            parts.append(f"spec.{where}: {error['msg']}")
        raise SpecError(bounded("; ".join(parts))) from None


def guild_of(raw: Mapping[str, Any]) -> int | None:
    """The guild id of a possibly invalid spec, when it has a usable one."""
    value = raw.get("guildId")
    if isinstance(value, str) and value.isascii() and value.isdigit() and 17 <= len(value) <= 19:
        guild = int(value)
        return guild if guild <= INT64_MAX else None
    return None


@dataclass(frozen=True, order=True)
class Claim:
    """One GuildSubscription's claim on a guild, as kept in the operator's in-memory index.

    Ordered oldest first: ``creationTimestamp`` (RFC 3339 in UTC sorts as text), then
    namespace and name so that two objects created in the same second still have one winner.
    """

    created: str
    namespace: str
    name: str
    uid: str
    deleting: bool = False

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def winner(claims: Iterable[Claim]) -> Claim | None:
    """The claim that owns the guild: the oldest one not being deleted."""
    live = [c for c in claims if not c.deleting]
    return min(live) if live else None


@dataclass(frozen=True)
class Condition:
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""


def merge_conditions(
    old: Iterable[Mapping[str, Any]] | None,
    new: Iterable[Condition],
    generation: int,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """New condition dicts, keeping ``lastTransitionTime`` where the status did not change."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    previous = {c.get("type"): c for c in old or () if isinstance(c, Mapping)}
    merged = []
    for cond in new:
        before = previous.get(cond.type)
        changed = before is None or before.get("status") != cond.status
        merged.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                # Never empty: kopf's status patch turns "" into null, which the schema refuses.
                "message": bounded(cond.message or cond.reason),
                "observedGeneration": generation,
                "lastTransitionTime": stamp
                if changed or before is None
                else before.get("lastTransitionTime", stamp),
            }
        )
    return merged


def condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in (status or {}).get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None
