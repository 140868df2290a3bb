"""`herwa demo` end to end, as a user runs it: a real subprocess, a small community.

The demo starts its own embedded servers, simulator and two bot processes; the test checks the
report it writes (every stage's numbers equal the simulator's ledger, the charts decode) and that
no process it started is left afterwards — after a normal run and after a Ctrl-C.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "--guilds",
    "20",
    "--history-days",
    "3",
    "--messages-per-day",
    "300",
    "--duration",
    "8",
    "--rate",
    "150",
    "--seed",
    "3",
    # A small showcase server: the default one (thousands of members) takes a minute more.
    "--showcase-members",
    "300",
    "--showcase-messages-per-day",
    "400",
    "--showcase-weeks",
    "3",
]
# Voice is stamped by the bot's receive time: these two are compared within a stated slack.
VOICE_TIMES = {"voice seconds", "/overview voice time (minutes)"}
STAGES = [
    "stack",
    "migrate",
    "seed",
    "simulator",
    "bots",
    "backfill",
    "traffic",
    "capture",
    "etl",
    "commands",
    "shutdown",
]


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Outside pytest's tmp tree: as root, Postgres runs as an unprivileged user that must be
    # able to traverse every parent of its data dir (see tests/support/services.py).
    path = Path(tempfile.mkdtemp(prefix="herwa-demo-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def demo(workdir: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERWA_")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "herwa.cli",
            "demo",
            *SMALL,
            "--data-dir",
            str(workdir / "data"),
            "--results",
            str(workdir / "results"),
            *extra,
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processes_using(path: Path) -> list[str]:
    """Every live process whose command line or environment mentions ``path`` (the servers get
    their data dir on the command line; bots get the endpoints, not the path, so their pids are
    checked from the report)."""
    found = []
    needle = str(path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and running(int(entry.name)):
            text = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {text}")
    return found


def assert_all_gone(report: dict[str, Any], workdir: Path) -> None:
    pids = report["shutdown"]["pids"]
    assert any(k.startswith("bot ") for k in pids)
    assert any(k.startswith("server ") for k in pids)
    assert [k for k, pid in pids.items() if running(pid)] == []
    assert report["shutdown"]["left_running"] == []
    assert processes_using(workdir) == []


def test_small_demo_reconciles_and_cleans_up(workdir: Path) -> None:
    started = time.monotonic()
    proc = demo(workdir)
    out, _ = proc.communicate(timeout=150)
    took = time.monotonic() - started
    assert proc.returncode == 0, out
    report = json.loads((workdir / "results" / "report.json").read_text())
    assert report["outcome"] == "ok"
    assert report["ok"]
    assert [s["name"] for s in report["stages"]] == STAGES
    assert all(s["ok"] for s in report["stages"]), report["stages"]

    # Every number of every stage equals the ledger (voice seconds within the stated slack).
    checks = report["checks"]
    assert {c["stage"] for c in checks} == {"capture", "etl", "commands"}
    assert [c for c in checks if not c["ok"]] == []
    for c in checks:
        assert abs(c["expected"] - c["actual"]) <= c["tolerance"], c
        # /online's hours: a presence update sent within half a second of an hour boundary
        # may be received in the next hour; each such member is the tolerance (usually 0).
        if c["what"] not in VOICE_TIMES and not c["what"].startswith("/online"):
            assert c["tolerance"] == 0, c
            assert c["expected"] == c["actual"], c
    by_what = {(c["stage"], c["what"]): c for c in checks}
    ledger = report["ledger"]["totals"]
    # The ledger's own totals, independently of the checks' bookkeeping.
    assert by_what[("capture", "messages (all kinds)")]["actual"] == ledger["messages"] > 0
    assert ledger["historical_messages"] > 0  # the backfill had something to do
    assert by_what[("capture", "message edits")]["actual"] == ledger["edits"] > 0
    assert by_what[("capture", "message deletions")]["actual"] == ledger["deletes"] > 0
    assert by_what[("capture", "member joins")]["actual"] == ledger["joins"] > 0
    assert by_what[("capture", "member leaves")]["actual"] == ledger["leaves"] > 0
    assert by_what[("capture", "voice sessions")]["actual"] == ledger["voice_sessions"] > 0
    assert by_what[("capture", "reactions added")]["actual"] == ledger["reactions_added"] > 0
    assert by_what[("capture", "reactions removed")]["actual"] == ledger["reactions_removed"] > 0
    assert by_what[("etl", "message_reactions → message_reactions")]["actual"] == (
        ledger["reactions_added"] + ledger["reactions_removed"]
    )
    assert ("commands", "/overview reactions") in by_what  # equal to the ledger, as above
    assert by_what[("etl", "message_events → messages")]["actual"] == ledger["messages"]
    # /config timezone for the showcase server, then four analytics commands, /online and a
    # refusal.
    assert by_what[("commands", "command invocations (usage → ClickHouse)")]["actual"] == 7
    # What the slash commands answered, each number against the ledger (the checks above):
    # every message of the range is in /overview and in the heatmap, cohorts were formed.
    shown = by_what[("commands", "/overview messages")]["actual"]
    assert shown > 0
    assert by_what[("commands", "/heatmap total messages")]["actual"] == shown
    assert by_what[("commands", "/overview active members")]["actual"] > 0
    assert by_what[("commands", "/growth member count (last)")]["actual"] > 0
    assert any(c["what"].startswith("/retention cohort ") for c in checks)
    # The charts are the showcase server's: the top tier, its time zone, its weeks of
    # newcomers; a cohort's weeks that lie ahead are left blank (a dash), not counted as 0.
    showcase = next(s for s in report["stages"] if s["name"] == "simulator")["numbers"]
    showcase = showcase["showcase"]
    assert showcase["members"] > 300
    answers = {c["command"]: c for c in report["commands"] if c["tier"] == "enterprise"}
    assert {c["guild_id"] for c in answers.values()} == {showcase["guild_id"]}
    assert f"({showcase['timezone']})" in answers["retention"]["text"]
    weeks_begun = [c for c in checks if c["what"].endswith("weeks begun")]
    assert len(weeks_begun) >= 3
    assert min(c["actual"] for c in weeks_begun) < 3 == max(c["actual"] for c in weeks_begun)
    assert "week 2: -" in answers["retention"]["text"]
    members = [by_what[("commands", f"/growth member count ({e})")] for e in ("first", "last")]
    assert members[0]["actual"] < members[1]["actual"]  # the showcase grew over its weeks
    # Presence: transitions of the pro and enterprise guilds only, row by row, and /online.
    transitions = by_what[("capture", "presence transitions (granted guilds)")]
    assert transitions["actual"] == transitions["expected"] > 0
    assert by_what[("capture", "presence rows equal to the ledger's")]["actual"] > 0
    assert by_what[("capture", "presence rows of guilds without the feature")]["actual"] == 0
    assert by_what[("etl", "presence_events → presence_events")]["actual"] > 0
    assert by_what[("commands", "/online peak members")]["actual"] > 0
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["backfill"]["numbers"]["backfilled"] == ledger["historical_messages"]
    assert stages["traffic"]["numbers"]["gateway_events_captured"] > 0
    # Two bot processes shared the four shards, each connected exactly once.
    bots = stages["bots"]["numbers"]
    assert len(bots) == 2
    assert all(b["shards"] for b in bots.values())
    assert sorted(s for b in bots.values() for s in b["shards"]) == [0, 1, 2, 3]

    # The charts are the PNGs the slash commands returned; they decode, and the page shows them.
    results = workdir / "results"
    assert set(report["images"]) == {"heatmap", "retention", "growth"}
    page = (results / "index.html").read_text()
    for name, file in report["images"].items():
        data = (results / file).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            assert img.format == "PNG", name
            assert min(img.size) > 200, (name, img.size)
        assert f"src='{file}'" in page
    assert "The showcase server (guild " in page
    assert "| ✓ |" in (results / "report.md").read_text()
    denied = [c for c in report["commands"] if c["tier"] == "free"]
    assert denied
    assert not denied[0]["files"]
    assert "pro" in denied[0]["text"]

    assert {b["exit_code"] for b in report["shutdown"]["bots"].values()} == {0}
    assert_all_gone(report, workdir)
    assert f"Results: {results}" in out
    print(f"small demo took {took:.1f}s")

    # A second run on the same data dir reuses the servers and still reconciles exactly.
    proc = demo(workdir, "--results", str(workdir / "results2"))
    out, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, out
    second = json.loads((workdir / "results2" / "report.json").read_text())
    assert second["ok"]
    assert [c for c in second["checks"] if not c["ok"]] == []
    migrate = next(s for s in second["stages"] if s["name"] == "migrate")["numbers"]
    assert migrate["applied"] == {"postgres": 0, "clickhouse": 0}  # the schema was reused
    assert migrate["rows_cleared"] > 0  # the first run's events were emptied
    assert_all_gone(second, workdir)


def test_ctrl_c_stops_everything(workdir: Path) -> None:
    proc = demo(workdir, "--duration", "120")
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "sim clock" in line:  # live traffic flows: bots, simulator and servers all up
            break
    else:
        raise AssertionError("".join(seen))
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + out
    report = json.loads((workdir / "results" / "report.json").read_text())
    assert report["outcome"] == "interrupted"
    assert {b["exit_code"] for b in report["shutdown"]["bots"].values()} == {0}
    assert_all_gone(report, workdir)
