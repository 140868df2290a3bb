"""JSON over HTTP as the simulator's REST and control endpoints answer it.

Responses carry ``Content-Type: application/json`` exactly: discord.py treats anything else
(even with ``; charset=utf-8``) as text and login fails.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from herwa.json_types import Json


def json_response(
    data: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def error(status: int, message: str, code: int = 0) -> web.Response:
    return json_response({"message": message, "code": code}, status)


async def json_body(request: web.Request) -> Json:
    """The request's JSON object; an empty one when it has no body."""
    if not request.can_read_body:
        return {}
    data: Json = await request.json(loads=orjson.loads)
    return data
