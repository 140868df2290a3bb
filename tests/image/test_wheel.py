"""What `pip install herwa` gets: the product, without the development tools.

The wheel is built offline from a copy of the checkout's package sources (pyproject's own
selection, not the image's build context), then used the way an install would: its ``herwa``
command runs from the unpacked wheel, where the simulator, the embedded stack and the demo
are missing, and says so for their subcommands.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from herwa.cli import DEV_PACKAGES, SUBCOMMANDS, dev_package

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "herwa")


def _is_dev(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in DEV_PACKAGES)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    checkout = tmp / "checkout"
    checkout.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source,
                checkout / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        else:
            shutil.copy2(source, checkout / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(tmp / "wheels"),
            str(checkout),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (built,) = (tmp / "wheels").glob("herwa-*.whl")
    return built


def _modules(root: Path) -> Iterator[str]:
    """Every module of the herwa package in the checkout."""
    for dirpath, _dirs, files in os.walk(root / "herwa"):
        package = Path(dirpath).relative_to(root).as_posix().replace("/", ".")
        for name in files:
            if name.endswith(".py"):
                yield package if name == "__init__.py" else f"{package}.{name[:-3]}"


def test_dev_packages_are_the_ones_pyproject_leaves_out() -> None:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(find["packages"]["find"]["exclude"]) == sorted(f"{p}*" for p in DEV_PACKAGES)
    # Each is a package of the checkout and has a subcommand that needs it.
    for package in DEV_PACKAGES:
        assert (ROOT / package.replace(".", "/") / "__init__.py").is_file()
        assert package in {dev_package(name) for name in SUBCOMMANDS}


def test_wheel_holds_the_product_and_no_development_tool(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {
            name[: -len(".py")].replace("/", ".").removesuffix(".__init__")
            for name in zf.namelist()
            if name.startswith("herwa/") and name.endswith(".py")
        }
    modules = set(_modules(ROOT))
    dev = {m for m in modules if _is_dev(m)}
    assert set(DEV_PACKAGES) <= dev
    assert not in_wheel & dev, f"development tools in the wheel: {sorted(in_wheel & dev)}"
    assert not {m for m in in_wheel if _is_dev(m)}
    product = modules - dev
    for role in ("herwa.bot", "herwa.bot.commands", "herwa.etl", "herwa.analytics", "herwa.cli"):
        assert role in product
    missing = sorted(product - in_wheel)
    assert not missing, f"product modules missing from the wheel: {missing}"


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """A fresh venv with the wheel installed by pip, as `pip install herwa` would; its
    dependencies come from this venv's site-packages, added as a plain path (no .pth of
    that folder runs, so the checkout's editable install stays out)."""
    venv = wheel.parent / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (site,) = venv.glob("lib/python3.*/site-packages")
    deps = sysconfig.get_paths()["purelib"]
    (site / "herwa-test-dependencies.pth").write_text(deps + "\n")
    return venv


def _herwa(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERWA_", "PYTHON"))}
    return subprocess.run(
        [str(venv / "bin" / "herwa"), *args],
        env=env,
        cwd=venv,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_installed_wheel_names_the_missing_development_tools(installed: Path) -> None:
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import herwa.cli; print(herwa.cli.__file__)"],
        cwd=installed,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout
    listing = _herwa(installed, "--help")
    assert listing.returncode == 0, listing.stderr
    for name in SUBCOMMANDS:
        assert name in listing.stdout
        result = _herwa(installed, name, "--help")
        if dev_package(name):
            assert result.returncode == 2, result.stdout + result.stderr
            assert f"herwa {name}: a development tool, not part of this installation" in (
                result.stderr
            )
            assert "Traceback" not in result.stderr
        else:
            assert result.returncode == 0, f"herwa {name} --help: {result.stderr}"
            assert "usage: herwa " + name in result.stdout
