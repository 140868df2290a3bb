"""What a shard runner works with: the pod's shared parts, named one by one, so that a shard,
its gateway handlers and its backfill depend on these and never on the pod that owns them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from herwa.bot.backfill import Backfiller
from herwa.bot.buffer import FlushBuffer
from herwa.bot.commands import CommandDeps
from herwa.bot.directory import Directory
from herwa.bot.generations import Generations
from herwa.bot.metadata import MetadataWriter
from herwa.bot.presence import PresenceGrants
from herwa.bot.shard_state import ShardState
from herwa.bot.tombstones import Tombstones
from herwa.bot.voice import VoiceTracker
from herwa.config import BotSettings


@dataclass(frozen=True)
class ShardDeps:
    settings: BotSettings
    token: str
    shard_count: int
    message_content: bool  # the MESSAGE_CONTENT intent is configured
    buffer: FlushBuffer
    directory: Directory
    voice: VoiceTracker
    tombstones: Tombstones
    state: ShardState
    metadata: MetadataWriter
    backfiller: Backfiller
    # Wait for this shard's IDENTIFY slot (Redis: one IDENTIFY per bucket and window).
    identify_slot: Callable[[int], Awaitable[None]]
    # The shard's gateway loop ended with an error: the pod closes it and opens it again.
    failed: Callable[[int], None]
    # Between the shard's handlers and its gateway: which fleet generation records
    # (resharding, bot/generations.py).
    fleet: Generations
    # Which servers' presence transitions are recorded (bot/presence.py).
    presence: PresenceGrants
    # None only in tests that exercise capture alone; a deployed pod always serves commands.
    commands: CommandDeps | None = None
