"""The sharded capture bot (``herwa bot``).

Module map: ``capture`` (raw gateway payload → staging rows, pure functions), ``channel_types``
(Discord's channel types and the stored kinds), ``directory`` (what the bot knows about guilds
and channels), ``buffer`` (bounded in-process buffer flushed to Postgres with COPY), ``voice``
(open voice sessions), ``client`` (the per-shard discord.py client with raw parsers),
``gateway`` (a shard's handler table: capture, then hand off), ``shard_state`` (a shard's state
in Postgres, fenced by its epoch), ``metadata`` (guild and channel rows), ``sharding`` (Redis
membership, rendezvous assignment, leases, identify lock), ``deps`` (what a shard works with),
``shard`` (one shard's lifecycle), ``backfill``, ``snapshots``, ``metrics``, ``app`` (the pod:
lifecycle and coordination; only ``cli`` imports it) and ``cli``.
"""
