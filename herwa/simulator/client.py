"""Point the real discord.py client at a simulator (or any Discord-compatible server)."""

from herwa.discord_api import point_discord_at, restore_discord_defaults

__all__ = ["point_discord_at", "restore_discord_defaults"]
