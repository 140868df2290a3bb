"""A small Dockerfile reader and runner: executes a Dockerfile's build steps on this machine.

There is no container engine here, so the image's install steps run in a sandbox folder instead:
every absolute path the Dockerfile names (WORKDIR, ENV values, COPY destinations) is mapped
under one sandbox root, shared by all stages exactly as the image's file system would be, and
RUN steps execute with bash in that environment. Steps that would change the machine itself
(creating system users) are checked, not run.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    op: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (before the first FROM) and the stages with their instructions."""
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.I)
            if not m:
                raise ValueError(f"line {number}: every stage must be named (FROM x AS name)")
            stages.append(Stage(base=m.group(1), name=m.group(2)))
        elif not stages:
            if op != "ARG":
                raise ValueError(f"line {number}: only ARG may precede FROM")
            key, _, value = args.strip().partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append(Instruction(op, args.strip(), number))
    return global_args, stages


def key_values(args: str) -> dict[str, str]:
    """ENV/ARG/LABEL key=value pairs (shell-quoted values allowed)."""
    out: dict[str, str] = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"use KEY=value form: {token!r}")
        out[key] = value
    return out


def expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), value)


def dockerignore_filter(context: Path) -> Callable[[str], bool]:
    """Whether a context-relative path is sent to the build (last matching rule wins)."""
    rules: list[tuple[bool, str]] = []
    for raw in (context / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, line.lstrip("!").rstrip("/")))

    def included(rel: str) -> bool:
        keep = True
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for negate, pattern in rules:
            pat = pattern[3:] if pattern.startswith("**/") else pattern
            for candidate in prefixes if not pattern.startswith("**/") else parts:
                if fnmatch.fnmatchcase(candidate, pat):
                    keep = negate
                    break
        return keep

    return included


def copy_context(repo: Path, dest: Path) -> None:
    """The build context as docker would send it: the repository minus .dockerignore."""
    included = dockerignore_filter(repo)
    for dirpath, dirnames, filenames in os.walk(repo):
        rel_dir = os.path.relpath(dirpath, repo)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in list(dirnames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = Path(dirpath) / name
            if full.is_symlink():  # COPY keeps symlinks as symlinks
                dirnames.remove(name)
                if included(rel):
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    (dest / rel).symlink_to(os.readlink(full))
            elif name == ".git" or not _any_included(included, rel):
                dirnames.remove(name)
        for name in filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if included(rel):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(dirpath) / name, dest / rel, follow_symlinks=False)


def _any_included(included: Callable[[str], bool], rel: str) -> bool:
    # A folder excluded by "*" may still hold re-included paths ("!herwa/" is itself the folder).
    return included(rel) or included(rel + "/x")


@dataclass
class Sandbox:
    """The image's file system, mapped under ``root``; ``env`` of the stage being run."""

    root: Path
    context: Path
    log: list[str] = field(default_factory=list)

    def map(self, path: str) -> Path:
        if not path.startswith("/"):
            raise ValueError(f"not absolute: {path}")
        return self.root / path.lstrip("/")

    def map_value(self, value: str) -> str:
        """Absolute paths inside an ENV value (colon lists too) moved under the root."""
        parts = value.split(":")
        return ":".join(str(self.map(p)) if p.startswith("/") else p for p in parts)


def shim_dir(root: Path) -> Path:
    """`python` as the base image would have it: this machine's Python 3.11 interpreter."""
    shims = root / "_shims"
    shims.mkdir(exist_ok=True)
    base = (
        Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    )
    for name in ("python", "python3"):
        target = shims / name
        if not target.exists():
            target.symlink_to(base)
    return shims


def run_shell(command: str, env: dict[str, str], cwd: Path, timeout: float) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=lambda: os.umask(0o022),
    )
    if result.returncode != 0:
        raise AssertionError(
            f"RUN failed ({result.returncode}): {command}\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )
