"""The architecture's boundaries, the types and the code style are checks, not wishes.

Runs import-linter (the layer and import contracts in ``pyproject.toml``; docs/architecture.md says what
each one enforces), mypy over the client (core, widgets, command line), the server, the scripts and the
benchmarks (``[tool.mypy]``) and ``ruff check`` over the whole tree, as ``.ci/run`` does. In CI (``CI`` set, as every CI service does) a missing tool fails
the run instead of skipping it; locally a missing tool skips with the command that installs it.
Also checks that the wheel ships the desktop app's resources where ``pacs_mask_desktop/ui/resources.py``
reads them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def in_ci() -> bool:
    """Whether this run is CI's: ``CI`` set to anything but empty/false/0 (GitHub, GitLab, .ci/run)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def tool(name: str) -> str:
    """The tool installed next to this interpreter (the project's venv), else on PATH.

    Missing: a failure in CI (the check must run there), a skip with the install command elsewhere.
    """
    bin_dir = Path(sys.executable).parent
    for candidate in (bin_dir / name, bin_dir / f"{name}.exe"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        missing(name)
    return found


def missing(name: str) -> NoReturn:
    """A checker is not installed: fail in CI (the check must run there), else skip saying how to install."""
    message = f"{name} is not installed (pip install -e '.[test]')"
    if in_ci():
        pytest.fail(f"{message}; CI must run this check, not skip it")
    pytest.skip(message)


def run(*command: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def contract(contract_id: str) -> dict[str, Any]:
    """The import-linter contract with ``id = contract_id`` from pyproject.toml."""
    for entry in PYPROJECT["tool"]["importlinter"]["contracts"]:
        if entry.get("id") == contract_id:
            return entry
    raise AssertionError(f"pyproject.toml has no import-linter contract with id {contract_id!r}")


def children(package: str) -> set[str]:
    """The direct submodules and subpackages of a top-level package of this repository."""
    names = set()
    for path in (REPO / package).iterdir():
        if path.name.startswith((".", "_")) and path.name != "__main__.py":
            continue
        if path.is_dir() and any(path.glob("*.py")):
            names.add(f"{package}.{path.name}")
        elif path.suffix == ".py":
            names.add(f"{package}.{path.stem}")
    return names


def test_import_contracts_hold() -> None:
    result = run(tool("lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_types_check() -> None:
    """mypy over the client, the server, the scripts and the benchmarks, as pyproject.toml configures it."""
    result = run(tool("mypy"), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_passes() -> None:
    result = run(tool("ruff"), "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_in_ci_a_missing_tool_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The architecture checks cannot quietly turn into skips in CI."""
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run this check"):
        tool("no-such-checker")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        tool("no-such-checker")


def test_the_client_may_import_only_the_contract_of_the_server() -> None:
    """Every part of the server but ``server.contract`` is on the client's forbidden list.

    A new server package or module has to be added to the contract in pyproject.toml (or made part
    of ``server.contract`` when the client really needs it): this fails until it is.
    """
    forbidden = set(contract("client-only-contract")["forbidden_modules"])
    expected = children("server") - {"server.contract"}
    assert forbidden == expected, (
        f"missing from the contract: {sorted(expected - forbidden)}; "
        f"no longer in the server: {sorted(forbidden - expected)}"
    )


def test_the_contract_is_pure() -> None:
    """``server.contract`` uses only the standard library and msgspec, so the client can import it lean.

    (Its imports of the rest of ``server`` and of the client are the layer contracts' business.)
    """
    try:
        import grimp  # import-linter's graph builder, installed with it
    except ImportError:
        missing("grimp (it comes with import-linter)")
    graph = grimp.build_graph("server", include_external_packages=True)
    external = {
        imported.split(".")[0]
        for module in graph.find_descendants("server.contract") | {"server.contract"}
        for imported in graph.find_modules_directly_imported_by(module)
        if not imported.startswith("server")
    }
    assert external - sys.stdlib_module_names - {"msgspec"} == set()


def test_every_top_level_module_is_in_a_layer() -> None:
    """The layer contracts are exhaustive (import-linter then refuses an unplaced module): keep it so."""
    for contract_id in ("client-layers", "server-layers"):
        assert contract(contract_id).get("exhaustive") is True, contract_id


def test_the_wheel_ships_the_resources(tmp_path: Path) -> None:
    """``pip wheel`` of the project puts resources/ inside the package, where importlib.resources reads it.

    Built from a copy of the files the build reads (the source tree is never written to); ~15 s.
    """
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pacs_mask_desktop", "server", "resources"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = {
        f"pacs_mask_desktop/resources/{path.relative_to(REPO / 'resources').as_posix()}"
        for path in (REPO / "resources").rglob("*")
        if path.is_file()
    }
    assert shipped, "resources/ is empty"
    assert shipped <= names, f"not in the wheel: {sorted(shipped - names)}"
    assert not any(name.startswith("resources/") for name in names), "resources/ must not be top-level"
    # Installed (a wheel unpacked is its installed layout), the app reads them from the package.
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from pacs_mask_desktop.ui import resources\n"
        "print(resources.resource(*resources.STYLESHEET))\n"
        "print(resources.resource(*resources.APP_ICON))\n"
        "print(len(resources.load_stylesheet()))\n"
    )
    read = subprocess.run(
        [sys.executable, "-c", probe, str(site)], capture_output=True, text=True, timeout=60, check=False
    )
    assert read.returncode == 0, read.stdout + read.stderr
    stylesheet, icon, length = read.stdout.split()
    assert Path(stylesheet) == site / "pacs_mask_desktop" / "resources" / "styles" / "dark.qss"
    assert Path(icon) == site / "pacs_mask_desktop" / "resources" / "icons" / "app.png"
    assert int(length) == len((REPO / "resources" / "styles" / "dark.qss").read_text(encoding="utf-8"))
