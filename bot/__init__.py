"""The sharded capture bot (``herwa bot``).

Module map: ``capture`` (raw gateway payload → staging rows, pure functions), ``directory``
(what the bot knows about guilds and channels), ``buffer`` (bounded in-process buffer flushed to
Postgres with COPY), ``voice`` (open voice sessions), ``client`` (the per-shard discord.py client
with raw parsers), ``sharding`` (Redis membership, rendezvous assignment, leases, identify lock),
``shard`` (one shard's lifecycle), ``backfill``, ``snapshots``, ``metrics``, ``app`` (the pod)
and ``cli``.
"""
