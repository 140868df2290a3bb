"""GuildSubscription specs fuzzed through the operator's model and reconcile (real stores).

Whatever a spec holds — wrong types, huge or unicode keys, overflowing numbers, extra fields —
the operator never raises: a spec it cannot use ends as ``InvalidSpec`` with a message naming
the field, and the status it writes stays small.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herwa.operator.model import (
    MAX_MESSAGE,
    Reason,
    SpecError,
    guild_of,
    merge_conditions,
    parse_spec,
)
from herwa.operator.reconcile import OperatorRuntime, Subscription, reconcile

FIELDS = ("guildId", "tier", "featureOverrides", "quotaOverrides", "expiresAt", "suspended")

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
guild_ids = (
    st.integers(min_value=0, max_value=2**70).map(str)
    | st.sampled_from(["9223372036854775807", "9223372036854775808", "99999999999999999999"])
    # Arabic-Indic digits: str.isdigit() accepts them, int() reads them, Postgres would not.
    | st.text(alphabet="0123456789\u0660\u0661\u0662", min_size=15, max_size=21)
    | json_values
)
names = (
    st.sampled_from(["overview", "growth", "export", "queries_per_month", "history_days"])
    | st.text(max_size=80)
    | st.text(min_size=1000, max_size=5000)
)
specs = st.fixed_dictionaries(
    {},
    optional={
        "guildId": guild_ids,
        "tier": st.sampled_from(["free", "pro", "enterprise", "platinum"]) | json_values,
        "featureOverrides": st.dictionaries(names, st.booleans() | json_values, max_size=70)
        | json_values,
        "quotaOverrides": st.dictionaries(
            names,
            st.integers(min_value=-5, max_value=2**64) | json_values,
            max_size=40,
        )
        | json_values,
        "expiresAt": st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
        | json_values,
        "suspended": st.booleans() | json_values,
    },
).flatmap(
    lambda spec: st.dictionaries(st.text(max_size=300), json_values, max_size=2).map(
        lambda extra: {**extra, **spec}
    )
)


@settings(max_examples=400, deadline=None)
@given(specs)
def test_the_model_accepts_or_names_the_field(raw: dict[str, Any]) -> None:
    try:
        spec = parse_spec(raw)
    except SpecError as exc:
        message = str(exc)
        assert message.startswith("spec.")
        assert len(message) <= MAX_MESSAGE
        return
    assert 0 < spec.guild <= 2**63 - 1
    assert guild_of(raw) == spec.guild
    assert all(0 <= v <= 2**63 - 1 for v in spec.quota_overrides.values())
    assert len(spec.feature_overrides) <= 64
    assert all(len(k) <= 64 for k in [*spec.feature_overrides, *spec.quota_overrides])


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=specs)
async def test_reconcile_never_raises_and_keeps_status_small(
    runtime: OperatorRuntime, raw: dict[str, Any]
) -> None:
    sub = Subscription("fuzz", "s", str(uuid.uuid4()), 1, raw)
    outcome = await reconcile(runtime, sub, [], trigger="create")
    try:
        parse_spec(raw)
    except SpecError:
        assert (outcome.state, outcome.reason) == ("invalid", Reason.INVALID_SPEC)
    else:
        # The stores are up: a usable spec is granted or names what the platform lacks.
        assert outcome.state in {"active", "expired", "suspended", "invalid", "unknown_tier"}
    assert outcome.message
    status = {"conditions": merge_conditions(None, outcome.conditions, 1)}
    assert len(json.dumps(status)) < 16_384
    if outcome.guild_id is not None:
        await runtime.pool.execute("DELETE FROM entitlements WHERE guild_id = $1", outcome.guild_id)


@pytest.mark.parametrize("key", ["\x00", "\ud800", "a" * 1_000_000, "é" * 40])
def test_unprintable_and_huge_keys_are_quoted_not_copied(key: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"guildId": "81384788765712384", "featureOverrides": {key: True}})
    message = str(err.value)
    assert message.isprintable()
    assert len(message) < 400
    message.encode()  # no lone surrogate: the message must survive a JSON status patch
