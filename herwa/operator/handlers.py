"""kopf handlers: thin adapters from kopf's kwargs to :mod:`herwa.operator.reconcile`.

The handler functions are plain module-level coroutines, so tests call them directly with the
kwargs kopf would pass; :func:`build_registry` wires them to a registry for one operator run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from herwa.operator import metrics
from herwa.operator.model import (
    GROUP,
    PLURAL,
    VERSION,
    Claim,
    condition,
    guild_of,
    merge_conditions,
)
from herwa.operator.reconcile import (
    STORE_ERRORS,
    OperatorRuntime,
    ReconcileOutcome,
    Subscription,
    reconcile,
    revoke,
)
from herwa.telemetry import tracer

log = logging.getLogger(__name__)
FINALIZER = f"{GROUP}/revoke-entitlement"
ANNOTATION_PREFIX = f"operator.{GROUP}"


def _retry_delay(retry: int) -> float:
    # Short first retries so a brief outage heals fast; capped so a long one costs little.
    return float(min(60, 2 + 3 * retry))


def _emit(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    try:
        kopf.event(body, type=type_, reason=reason, message=message)  # type: ignore[arg-type]
    except LookupError:  # called outside a running operator (unit tests): log only
        log.info("event %s %s: %s", type_, reason, message)


def by_guild(spec: Mapping[str, Any], meta: Mapping[str, Any], **_: Any) -> dict[str, Claim]:
    """The index ``by_guild``: guild id → the claims of every GuildSubscription on it."""
    guild = guild_of(spec)
    if guild is None:
        return {}
    return {
        str(guild): Claim(
            created=str(meta.get("creationTimestamp", "")),
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            uid=str(meta.get("uid")),
            deleting=bool(meta.get("deletionTimestamp")),
        )
    }


def _claims(index: Mapping[str, Iterable[Claim]] | None, spec: Mapping[str, Any]) -> list[Claim]:
    guild = guild_of(spec)
    if index is None or guild is None:
        return []
    try:
        return list(index[str(guild)])
    except KeyError:
        return []


async def _reconcile_object(
    trigger: str,
    body: Mapping[str, Any],
    meta: Mapping[str, Any],
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    patch: kopf.Patch,
    memo: Any,
    index: Mapping[str, Iterable[Claim]] | None,
    retry: int,
) -> ReconcileOutcome:
    rt: OperatorRuntime = memo.runtime
    sub = Subscription(
        namespace=str(meta["namespace"]),
        name=str(meta["name"]),
        uid=str(meta["uid"]),
        generation=int(meta.get("generation") or 0),
        spec=dict(spec),
    )
    started = time.perf_counter()
    with tracer("herwa.operator").start_as_current_span("guildsubscription.reconcile") as span:
        span.set_attribute("herwa.trigger", trigger)
        span.set_attribute("k8s.namespace.name", sub.namespace)
        span.set_attribute("herwa.subscription", sub.name)
        outcome = await reconcile(rt, sub, _claims(index, spec), trigger=trigger)
        span.set_attribute("herwa.outcome", outcome.state)
        if outcome.guild_id is not None:
            span.set_attribute("herwa.guild_id", str(outcome.guild_id))
    metrics.RECONCILE_SECONDS.labels(trigger).observe(time.perf_counter() - started)
    metrics.RECONCILES.labels(trigger, outcome.state).inc()
    for store in outcome.repaired:
        metrics.DRIFT_REPAIRS.labels(store).inc()
    metrics.BOOK.known_tiers = frozenset(t.name for t in rt.platform.tiers)
    metrics.BOOK.record(sub.uid, outcome.tier, outcome.state)

    before = condition(status, "Ready")
    conditions = merge_conditions(status.get("conditions"), outcome.conditions, sub.generation)
    patch.status["observedGeneration"] = sub.generation
    patch.status["conditions"] = conditions
    patch.status["state"] = outcome.state
    if before is None or (before.get("status"), before.get("reason")) != (
        "True" if outcome.ready else "False",
        outcome.reason,
    ):
        _emit(
            body,
            "Normal" if outcome.ready or outcome.state in ("suspended", "expired") else "Warning",
            outcome.reason,
            outcome.message,
        )
    for type_, reason, message in outcome.events:
        _emit(body, type_, reason, message)
    if outcome.retry:
        raise kopf.TemporaryError(outcome.message, delay=_retry_delay(retry))
    return outcome


async def on_change(
    *,
    body: Mapping[str, Any],
    meta: Mapping[str, Any],
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    patch: kopf.Patch,
    memo: Any,
    reason: str = "update",
    by_guild: Mapping[str, Iterable[Claim]] | None = None,
    retry: int = 0,
    **_: Any,
) -> None:
    """create / update / resume: write the entitlement and the command cache."""
    trigger = str(reason) if str(reason) in ("create", "update", "resume") else "update"
    await _reconcile_object(trigger, body, meta, spec, status, patch, memo, by_guild, retry)


async def on_timer(
    *,
    body: Mapping[str, Any],
    meta: Mapping[str, Any],
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    patch: kopf.Patch,
    memo: Any,
    by_guild: Mapping[str, Iterable[Claim]] | None = None,
    retry: int = 0,
    **_: Any,
) -> None:
    """Repair drift (a lost cache, a hand-edited row), apply expiry, retry a lost conflict."""
    await _reconcile_object("timer", body, meta, spec, status, patch, memo, by_guild, retry)


async def on_delete(
    *,
    body: Mapping[str, Any],
    meta: Mapping[str, Any],
    spec: Mapping[str, Any],
    memo: Any,
    retry: int = 0,
    **_: Any,
) -> None:
    """Revoke the entitlement (the guild falls back to the default tier); the finalizer stays
    until this succeeds."""
    rt: OperatorRuntime = memo.runtime
    uid = str(meta["uid"])
    started = time.perf_counter()
    with tracer("herwa.operator").start_as_current_span("guildsubscription.revoke"):
        try:
            guilds = await revoke(rt, uid, guild_of(spec))
        except STORE_ERRORS as exc:
            metrics.RECONCILES.labels("delete", "unavailable").inc()
            message = f"cannot revoke: Postgres or Redis unavailable ({type(exc).__name__})"
            _emit(body, "Warning", "StoreUnavailable", message)
            raise kopf.TemporaryError(message, delay=_retry_delay(retry)) from exc
    metrics.RECONCILE_SECONDS.labels("delete").observe(time.perf_counter() - started)
    metrics.RECONCILES.labels("delete", "revoked").inc()
    metrics.BOOK.forget(uid)
    if guilds:
        _emit(
            body,
            "Normal",
            "Revoked",
            f"entitlement removed for guild {', '.join(map(str, guilds))}; "
            f"it falls back to the default tier {rt.platform.default_tier}",
        )


def configure_settings(
    settings: kopf.OperatorSettings,
    *,
    peering_name: str | None,
    clusterwide: bool,
    priority: int,
) -> None:
    """Storage keys, finalizer and peering: the same for every replica."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Scanning watches CRDs and namespaces: rights the operator would need only for that.
    settings.scanning.disabled = True
    # Our own events are explicit; handler log lines should not become Events as well.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    if peering_name:
        settings.peering.name = peering_name
        settings.peering.mandatory = True
        settings.peering.clusterwide = clusterwide
        # Equal priorities would make every replica pause; distinct random ones elect one.
        settings.peering.priority = priority
        settings.peering.stealth = True
    else:
        settings.peering.standalone = True


def build_registry(drift_check_seconds: float) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # KUBECONFIG or the pod's ServiceAccount token, through the kubernetes client.
        return kopf.login_via_client(**kwargs)

    kopf.index(*resource, registry=registry, id="by_guild")(by_guild)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*resource, registry=registry, id="reconcile", field="spec")(
            on_change
        ) if decorator is kopf.on.update else decorator(
            *resource, registry=registry, id="reconcile"
        )(on_change)
    kopf.on.delete(*resource, registry=registry, id="revoke")(on_delete)
    kopf.timer(
        *resource,
        registry=registry,
        id="drift",
        interval=drift_check_seconds,
        initial_delay=min(drift_check_seconds, 10.0),
        idle=None,
    )(on_timer)
    return registry
