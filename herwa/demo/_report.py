"""The results folder: report.json (machine-readable), report.md and index.html (the charts)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from herwa.demo._checks import Check
from herwa.demo._console import StageRecord
from herwa.json_types import Json


def write(results: Path, report: Json) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (results / "report.md").write_text(markdown(report))
    (results / "index.html").write_text(page(report))


def build(
    *,
    options: Json,
    stages: list[StageRecord],
    checks: list[Check],
    commands: list[Json],
    images: dict[str, str],
    ledger: Json | None,
    shutdown: Json | None,
    outcome: str,
    started_at: str,
    finished_at: str,
    version: str,
) -> Json:
    return {
        "herwa_version": version,
        "outcome": outcome,  # ok | failed | interrupted | running (--keep-running)
        "ok": outcome in ("ok", "running") and all(c.ok for c in checks),
        "started_at": started_at,
        "finished_at": finished_at,
        "options": options,
        "stages": [
            {
                "name": s.name,
                "title": s.title,
                "seconds": s.seconds,
                "ok": s.ok,
                "summary": s.summary,
                "numbers": s.numbers,
            }
            for s in stages
        ],
        "checks": [c.as_dict() for c in checks],
        "commands": commands,
        "images": images,
        "ledger": ledger,
        "shutdown": shutdown,
    }


def _mark(ok: object) -> str:
    return "✓" if ok is True else ("✗" if ok is False else "…")


def _fmt(value: object) -> str:
    if isinstance(value, float) and value != int(value):
        return f"{value:,.3f}"
    if isinstance(value, (int, float)):
        return f"{int(value):,}"
    return str(value)


def markdown(report: Json) -> str:
    lines = [
        f"# Herwa demo — {report['outcome']}",
        "",
        f"Started {report['started_at']}, finished {report['finished_at']}.",
        "",
        "## Stages",
        "",
        "| | stage | seconds | result |",
        "|---|---|---:|---|",
    ]
    for s in report["stages"]:
        lines.append(f"| {_mark(s['ok'])} | {s['title']} | {s['seconds']:.1f} | {s['summary']} |")
    lines += [
        "",
        "## Reconciliation",
        "",
        "| | stage | what | expected | actual | tolerance |",
        "|---|---|---|---:|---:|---:|",
    ]
    for c in report["checks"]:
        lines.append(
            f"| {_mark(c['ok'])} | {c['stage']} | {c['what']} | {_fmt(c['expected'])} "
            f"| {_fmt(c['actual'])} | {_fmt(c['tolerance']) if c['tolerance'] else ''} |"
        )
    if report["commands"]:
        lines += ["", "## Slash commands", ""]
        for cmd in report["commands"]:
            lines.append(
                f"- `/{cmd['command']}` in a {cmd['tier']}-tier guild "
                f"({cmd['seconds']:.1f}s): {cmd['summary']}"
            )
    if report["images"]:
        lines += ["", "## Charts", ""]
        if showcase := _showcase(report, markup=False):
            lines += [showcase, ""]
        lines += [f"![{name}]({file})" for name, file in report["images"].items()]
    lines.append("")
    return "\n".join(lines)


def page(report: Json) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{_mark(s['ok'])}</td><td>{e(s['title'])}</td><td>{s['seconds']:.1f}</td>"
        f"<td>{e(s['summary'])}</td></tr>"
        for s in report["stages"]
    )
    checks = "".join(
        f"<tr class='{'ok' if c['ok'] else 'bad'}'><td>{_mark(c['ok'])}</td><td>{e(c['stage'])}"
        f"</td><td>{e(c['what'])}</td><td>{_fmt(c['expected'])}</td><td>{_fmt(c['actual'])}</td>"
        f"<td>{_fmt(c['tolerance']) if c['tolerance'] else ''}</td></tr>"
        for c in report["checks"]
    )
    commands = "".join(
        f"<li><code>/{e(c['command'])}</code> in a {e(c['tier'])}-tier guild "
        f"({c['seconds']:.1f}s): {e(c['summary'])}</li>"
        for c in report["commands"]
    )
    showcase = _showcase(report)
    figures = "".join(
        f"<figure><img src='{e(file)}' alt='{e(name)}'><figcaption>/{e(name)}</figcaption></figure>"
        for name, file in report["images"].items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Herwa demo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 1100px; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .25rem .6rem; text-align: left; }}
td:nth-child(4), td:nth-child(5), td:nth-child(6) {{ text-align: right; }}
tr.bad {{ background: #fdd; }}
figure {{ display: inline-block; margin: .5rem; }} img {{ max-width: 520px; }}
</style></head><body>
<h1>Herwa demo — {e(report["outcome"])}</h1>
<p>Started {e(report["started_at"])}, finished {e(report["finished_at"])}.</p>
<h2>Charts (PNG attachments of the slash commands)</h2>{showcase}{figures or "<p>none</p>"}
<h2>Stages</h2><table><tr><th></th><th>stage</th><th>s</th><th>result</th></tr>{rows}</table>
<h2>Reconciliation with the simulator's ledger</h2>
<table><tr><th></th><th>stage</th><th>what</th><th>expected</th><th>actual</th>
<th>±</th></tr>{checks}</table>
<h2>Slash commands</h2><ul>{commands}</ul>
</body></html>
"""


def _showcase(report: Json, *, markup: bool = True) -> str:
    """One sentence on the server the charts are of, when it is the showcase server."""
    numbers = {s["name"]: s["numbers"] for s in report["stages"]}
    world = (numbers.get("simulator") or {}).get("showcase")
    if not world:
        return ""
    past = (numbers.get("traffic") or {}).get("showcase") or {}
    text = (
        f"The showcase server (guild {world['guild_id']}, {world['timezone']}): "
        f"{world['members']:,} members at the start, {world['historical_messages']:,} "
        "messages of channel history"
    )
    if past:
        text += (
            f", {past['newcomers']:,} newcomers with {past['newcomer_messages']:,} messages "
            f"over {report['options'].get('showcase_weeks', '?')} weeks"
        )
    text += ", then the replayed traffic."
    return f"<p>{html.escape(text)}</p>" if markup else text
