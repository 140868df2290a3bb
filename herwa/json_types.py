"""The one name for a decoded JSON object: gateway and REST payloads, the simulator's wire
format, the demo's report. Its values are whatever JSON holds, checked where they are read."""

from typing import Any

Json = dict[str, Any]
