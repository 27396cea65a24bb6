"""Write ``THIRD_PARTY_LICENSES``: every Python distribution the installer bundles, its licence and text.

Which distributions: the runtime dependencies of ``pyproject.toml`` (``[project] dependencies``, with
their environment markers evaluated for this machine) and everything they require, transitively, as
installed in the running environment; the extras a requirement names (``psycopg[binary]``) are
followed. That is what PyInstaller can bundle (build.spec runs this script at build time and ships
the file next to the executable). Test-only and build-only packages are not in it.

The licence of each: its metadata's ``License-Expression``, else a short ``License`` field, else its
``License ::`` classifiers. The text: every licence file the distribution installs (``License-File``
entries, or files named LICENSE / LICENCE / COPYING / NOTICE / AUTHORS).

``--check`` exits 1 when a runtime dependency is under the GPL or AGPL with no permissive (or LGPL)
alternative: the product is proprietary, so none may be bundled (tests/test_licenses.py runs it).

Usage: ``python scripts/third_party_licenses.py [--output THIRD_PARTY_LICENSES] [--check]``
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import cast

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
DEFAULT_OUTPUT = ROOT / "THIRD_PARTY_LICENSES"
_LICENSE_FILE = re.compile(r"(^|/)(LICEN[CS]E|COPYING|NOTICE|AUTHORS)[^/]*$", re.IGNORECASE)
_CODE_SUFFIXES = {".py", ".pyc", ".pyi", ".so", ".pyd", ".dll", ".dylib"}
_STRONG_COPYLEFT = re.compile(r"\bA?GPL|GNU (Affero )?General Public", re.IGNORECASE)
_WEAK_COPYLEFT = re.compile(r"\bLGPL|Lesser General Public|Library General Public", re.IGNORECASE)


#: Notices a wheel's metadata leaves out, by distribution name: appended to that distribution's texts.
#: None at present (python-gdcm, whose wheel carried only its packaging's licence and not those of
#: GDCM and the libraries compiled into it, is no longer bundled: core/jpeg_lossless.py replaced it).
SUPPLEMENTS: dict[str, str] = {}


@dataclass
class Bundled:
    """One distribution in the installer: name, version, licence and its licence files' text."""

    name: str
    version: str
    license: str
    texts: dict[str, str] = field(default_factory=dict)
    required_by: set[str] = field(default_factory=set)


def runtime_requirements(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """``[project] dependencies`` of ``pyproject``, markers not yet evaluated."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return [Requirement(text) for text in project.get("dependencies", [])]


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    environment = cast(dict[str, str], default_environment())  # a TypedDict of str values
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in extras | {""})


def bundled_distributions(requirements: list[Requirement] | None = None) -> dict[str, Bundled]:
    """The installed closure of ``requirements`` (default: the runtime dependencies), by name."""
    todo = [(req, "pyproject.toml") for req in (requirements or runtime_requirements())]
    found: dict[str, Bundled] = {}
    extras_seen: dict[str, set[str]] = {}
    while todo:
        requirement, parent = todo.pop()
        if not _applies(requirement, extras_seen.get(canonicalize_name(parent), set())):
            continue
        key = canonicalize_name(requirement.name)
        new_extras = set(requirement.extras) - extras_seen.get(key, set())
        if key in found:
            found[key].required_by.add(parent)
            if not new_extras:
                continue
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement.name} (required by {parent}) is not installed here") from None
        extras_seen.setdefault(key, set()).update(requirement.extras)
        if key not in found:
            found[key] = Bundled(dist.metadata["Name"], dist.version, license_of(dist), license_texts(dist))
        found[key].required_by.add(parent)
        for text in dist.requires or []:
            todo.append((Requirement(text), dist.metadata["Name"]))
    return dict(sorted(found.items()))


def add_module_distributions(found: dict[str, Bundled], modules: list[str]) -> dict[str, Bundled]:
    """Add the distributions providing ``modules`` (what PyInstaller actually bundled) to ``found``.

    Catches packages a frozen build picks up that are not declared dependencies (an optional import
    that happened to be installed). Standard-library modules map to no distribution and are skipped.
    """
    providers = metadata.packages_distributions()
    for top in sorted({re.split(r"[./\\]", module)[0] for module in modules}):
        for name in providers.get(top, []):
            key = canonicalize_name(name)
            if key not in found:
                dist = metadata.distribution(name)
                found[key] = Bundled(
                    dist.metadata["Name"], dist.version, license_of(dist), license_texts(dist)
                )
            found[key].required_by.add("bundled by PyInstaller")
    return dict(sorted(found.items()))


def _field(meta: metadata.PackageMetadata, name: str) -> str:
    """The first value of a metadata field, stripped ("" when absent)."""
    values = meta.get_all(name) or []
    return str(values[0]).strip() if values else ""


def license_of(dist: metadata.Distribution) -> str:
    """The licence as the distribution declares it (an SPDX expression where it gives one)."""
    meta = dist.metadata
    expression = _field(meta, "License-Expression")
    if expression:
        return expression
    declared = _field(meta, "License")
    first_line = declared.splitlines()[0].strip() if declared else ""
    if "\n" in declared and len(first_line) <= 60 and re.search(r"licen[cs]e", first_line, re.IGNORECASE):
        return first_line  # the whole text in the field: its title names it ("MIT License")
    if (
        declared
        and "\n" not in declared
        and len(declared) <= 100
        and declared.upper() not in ("LICENSE", "UNKNOWN")
    ):
        return declared
    classifiers = [
        c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")
    ]
    return " OR ".join(classifiers) if classifiers else "UNKNOWN (see the licence text)"


def license_texts(dist: metadata.Distribution) -> dict[str, str]:
    """``{file path: text}`` of the licence files the distribution installs."""
    declared = set(dist.metadata.get_all("License-File") or [])
    texts: dict[str, str] = {}
    for file in dist.files or []:
        path = str(file)
        if Path(path).suffix in _CODE_SUFFIXES:
            continue
        if _LICENSE_FILE.search(path) or path in declared or Path(path).name in declared:
            try:
                texts[path] = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
    return texts


def is_strong_copyleft(license: str) -> bool:
    """True when every alternative of ``license`` is GPL or AGPL (LGPL and permissive ones are not)."""
    alternatives = re.split(r"\s+OR\s+|\s*;\s*", license.strip("() "), flags=re.IGNORECASE)

    def gpl(alternative: str) -> bool:
        parts = re.split(r"\s+AND\s+|\s+WITH\s+", alternative.strip("() "), flags=re.IGNORECASE)
        return any(_STRONG_COPYLEFT.search(p) and not _WEAK_COPYLEFT.search(p) for p in parts)

    return all(gpl(alternative) for alternative in alternatives)


def render(bundled: dict[str, Bundled]) -> str:
    """The notice: a summary table, then each distribution's licence texts."""
    lines = [
        "Third-party software bundled with PACS Mask Upload",
        "=" * 50,
        "",
        "This product includes the following open-source Python distributions (and the native",
        "libraries inside their wheels, whose notices are part of the texts below). Generated by",
        "scripts/third_party_licenses.py from the build environment's package metadata.",
        "",
    ]
    width = max(len(f"{b.name} {b.version}") for b in bundled.values())
    lines += [f"{f'{b.name} {b.version}':<{width}}  {b.license}" for b in bundled.values()]
    for b in bundled.values():
        lines += ["", "", "-" * 78, f"{b.name} {b.version}", f"License: {b.license}", "-" * 78]
        if b.name in SUPPLEMENTS:
            lines += ["", SUPPLEMENTS[b.name]]
        if not b.texts:
            lines += ["", "(the distribution installs no licence file; its metadata names the licence above)"]
        for path, text in sorted(b.texts.items()):
            lines += ["", f"--- {path} ---", "", text.rstrip()]
    return "\n".join(lines) + "\n"


def write(output: Path = DEFAULT_OUTPUT, modules: list[str] | None = None) -> dict[str, Bundled]:
    """Write the notice to ``output`` and return what it lists.

    ``modules``: the module names a PyInstaller build bundles (build.spec passes them), whose
    distributions are listed too. Raises ``SystemExit`` when any listed one is GPL/AGPL-only.
    """
    bundled = bundled_distributions()
    if modules:
        bundled = add_module_distributions(bundled, modules)
    copyleft = [f"{b.name} ({b.license})" for b in bundled.values() if is_strong_copyleft(b.license)]
    if copyleft:
        raise SystemExit(f"GPL/AGPL software may not be bundled: {', '.join(copyleft)}")
    output.write_text(render(bundled), encoding="utf-8")
    return bundled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--check", action="store_true", help="only check: exit 1 on a GPL/AGPL runtime dependency"
    )
    args = parser.parse_args(argv)
    bundled = bundled_distributions()
    copyleft = {name: b for name, b in bundled.items() if is_strong_copyleft(b.license)}
    for b in copyleft.values():
        via = ", ".join(sorted(b.required_by))
        print(
            f"GPL/AGPL runtime dependency: {b.name} {b.version} ({b.license}), required by {via}",
            file=sys.stderr,
        )
    if args.check:
        print(f"{len(bundled)} runtime distributions, {len(copyleft)} GPL/AGPL", file=sys.stderr)
    else:
        args.output.write_text(render(bundled), encoding="utf-8")
        print(f"wrote {args.output} ({len(bundled)} distributions)", file=sys.stderr)
    return 1 if copyleft else 0


if __name__ == "__main__":
    raise SystemExit(main())
