"""The ceiling the bot's own benchmark is compared against.

Prints how many MESSAGE_CREATE per second (1) the simulator can push to a consumer that only
counts frames, and (2) a bare discord.py client can consume, counting in ``on_message``. Each
consumer runs in its own process, like a bot pod; the simulator runs in this one. Events are
generated and serialised before the clock starts (``prepare_burst``), so the figures measure
delivery and parsing, not the scenario engine.

    .venv/bin/python benchmarks/simulator_ceiling.py [--messages 100000] [--zlib]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable

import orjson

from herwa.simulator import GatewayConfig, Simulator, SimulatorConfig

HERE = os.path.dirname(os.path.abspath(__file__))


# -- consumers (child processes) -----------------------------------------------------------
async def raw_consumer(ws_url: str, token: str, expected: int, compress: bool) -> None:
    import zlib

    import aiohttp

    url = ws_url + "?v=10&encoding=json" + ("&compress=zlib-stream" if compress else "")
    inflator = zlib.decompressobj()
    marker = b'"t":"MESSAGE_CREATE"'
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        await ws.receive()  # HELLO
        await ws.send_str(
            orjson.dumps(
                {
                    "op": 2,
                    "d": {
                        "token": token,
                        "intents": (1 << 9) | (1 << 15) | 1,
                        "properties": {"os": "linux", "browser": "bench", "device": "bench"},
                    },
                }
            ).decode()
        )
        print("ready", flush=True)
        count = 0
        first = 0.0
        async for msg in ws:
            data = msg.data
            if compress:
                data = inflator.decompress(data)
            elif isinstance(data, str):
                data = data.encode()
            if marker in data:
                if count == 0:
                    first = time.perf_counter()
                count += 1
                if count == expected:
                    break
        elapsed = time.perf_counter() - first
        print(orjson.dumps({"count": count, "seconds": elapsed}).decode(), flush=True)


async def discord_consumer(
    api_base: str, ws_url: str, token: str, expected: int, compress: bool
) -> None:
    import discord

    from herwa.simulator import point_discord_at

    point_discord_at(api_base, ws_url)
    intents = discord.Intents.default()
    intents.message_content = True
    client = discord.Client(
        intents=intents, chunk_guilds_at_startup=False, guild_ready_timeout=0.2, max_messages=None
    )
    state = {"count": 0, "first": 0.0}
    done = asyncio.Event()

    @client.event
    async def on_ready() -> None:
        print("ready", flush=True)

    @client.event
    async def on_message(message: discord.Message) -> None:
        if state["count"] == 0:
            state["first"] = time.perf_counter()
        state["count"] += 1
        if state["count"] == expected:
            done.set()

    task = asyncio.create_task(client.start(token))
    await done.wait()
    elapsed = time.perf_counter() - state["first"]
    print(orjson.dumps({"count": state["count"], "seconds": elapsed}).decode(), flush=True)
    await client.close()
    await task


# -- driver --------------------------------------------------------------------------------
def benchmark_simulator(compress: bool = False) -> Simulator:
    return Simulator(
        SimulatorConfig(
            guilds=8,
            seed=1,
            record_deliveries=False,
            store_history=False,
            gateway=GatewayConfig(resume_buffer=1000, honour_compression=compress),
        )
    )


async def consume(
    sim: Simulator,
    kind: str,
    messages: int,
    *,
    compress: bool = False,
    preexec_fn: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """Push ``messages`` MESSAGE_CREATEs to a ``kind`` consumer in its own process; returns
    (simulator push rate, consumer receive rate) in messages per second."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--consumer",
        kind,
        "--messages",
        str(messages),
        "--api-base",
        sim.api_base,
        "--ws-url",
        sim.ws_url,
        "--token",
        sim.config.token,
        *(["--zlib"] if compress else []),
        stdout=asyncio.subprocess.PIPE,
        cwd=HERE,
        preexec_fn=preexec_fn,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line.strip() != b"ready":
        raise RuntimeError(f"consumer failed: {line!r}")
    await asyncio.sleep(0.5)
    prepared = sim.prepare_burst(messages, family="message")
    push_rate = await sim.push_prepared(prepared)
    result = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 600))
    await proc.wait()
    return push_rate, float(result["count"] / result["seconds"])


async def run_case(kind: str, messages: int, compress: bool) -> tuple[float, float]:
    sim = benchmark_simulator(compress)
    await sim.start()
    try:
        return await consume(sim, kind, messages, compress=compress)
    finally:
        await sim.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--zlib", action="store_true", help="zlib-stream compression")
    ap.add_argument("--consumer", choices=("raw", "discord"))
    ap.add_argument("--api-base")
    ap.add_argument("--ws-url")
    ap.add_argument("--token")
    args = ap.parse_args()
    if args.consumer == "raw":
        asyncio.run(raw_consumer(args.ws_url, args.token, args.messages, args.zlib))
        return 0
    if args.consumer == "discord":
        asyncio.run(
            discord_consumer(args.api_base, args.ws_url, args.token, args.messages, args.zlib)
        )
        return 0
    try:
        import discord.utils

        json_lib = "orjson" if discord.utils.HAS_ORJSON else "json"
    except AttributeError:
        json_lib = "?"
    print(
        f"MESSAGE_CREATE ceiling, {args.messages} messages, {os.cpu_count()} CPUs, "
        f"{'zlib-stream' if args.zlib else 'uncompressed'}, discord.py parses with {json_lib}"
    )
    push, raw = asyncio.run(run_case("raw", args.messages, args.zlib))
    print(f"  simulator -> frame-counting consumer: push {push:,.0f}/s, received {raw:,.0f}/s")
    push, dpy = asyncio.run(run_case("discord", args.messages, args.zlib))
    print(f"  simulator -> discord.py on_message:   push {push:,.0f}/s, received {dpy:,.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
