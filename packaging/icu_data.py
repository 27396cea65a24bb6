"""Trim the ICU data library Qt loads (``libicudata.so.<major>``, 31 MiB in the PySide6 wheel on Linux).

Why: QtCore links ICU and uses it for exactly these things (its imported ICU functions, read with
``readelf --dyn-syms libQt6Core.so.6``): case mapping (``u_strToUpper/Lower``), collation (``ucol_*``:
QCollator, ``QString::localeAwareCompare``), named text encodings (``ucnv_*``: QStringConverter) and
time-zone ids and names (``ucal_*``: QTimeZone). The data library also carries what only other ICU
services read, which Qt never calls (:data:`UNUSED` lists them with the ICU service each belongs to):
break-iterator rules and dictionaries, unit, currency, language and country display names,
transliterators, number spell-out rules, Unicode character names, the spoof checker's and StringPrep's
tables. :func:`trim_library` removes those items (ICU supports such subsets: its own build has a data
filter for this); every item Qt's functions read stays (collation, converters, time zones and their
names, locales with their number formats, supplemental data, normalization). The library must stay
the one of the ICU version Qt was built with, which is why the system's libicu cannot replace it.

How: the library holds one ICU "common data" package (the symbol ``icudt<major>_dat``): a header, a
table of contents (name offset, data offset) and the items. :func:`trim_library` reads it out of the
ELF file, writes a package with only the kept items and links a new library exporting the same symbol
under the same soname (GNU ``as`` and ``ld``, from binutils like ``strip``).
Used by build.spec (Linux builds); tests/test_icu_data.py checks that Qt answers the same with the
trimmed library as with the original.
"""

from __future__ import annotations

import itertools
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

#: Item name prefixes (inside the package's ``icudt<major>l/`` folder) that no ICU function QtCore
#: calls reads; see the module docstring.
UNUSED = (
    "brkitr/",  # break iterators (ubrk_*): Qt finds text boundaries with its own Unicode tables
    "unit/",  # measurement unit names (MeasureFormat)
    "curr/",  # currency names (NumberFormat)
    "lang/",  # language and script names (LocaleDisplayNames)
    "region/",  # country names: only LocaleDisplayNames and "generic location" zone names read them
    "translit/",  # transliterators (utrans_*)
    "rbnf/",  # number spell-out rules
    "unames.icu",  # Unicode character names (u_charName)
    "confusables.cfu",  # spoof checker (uspoof_*)
    "rfc",  # StringPrep profiles (usprep_*: rfc3491.spp ...): Qt's IDNA is its own
)
_MAGIC = b"\xda\x27"
_ALIGN = 16


def _pad(data: bytearray) -> None:
    data.extend(b"\0" * (-len(data) % _ALIGN))


def read_package(blob: bytes) -> tuple[bytes, dict[str, bytes]]:
    """(header, {item name: item bytes}) of an ICU common data package; ValueError if it is not one."""
    if len(blob) < 32 or blob[2:4] != _MAGIC:
        raise ValueError("not ICU data: the header's magic bytes are missing")
    header_size = struct.unpack_from("<H", blob, 0)[0]
    if blob[12:16] != b"CmnD" or blob[8] != 0:
        raise ValueError("not a little-endian ICU common data package (format CmnD)")
    toc = header_size
    (count,) = struct.unpack_from("<I", blob, toc)
    entries = [struct.unpack_from("<II", blob, toc + 4 + 8 * index) for index in range(count)]
    starts = sorted({data for _name, data in entries} | {len(blob) - toc})
    ends = dict(itertools.pairwise(starts))
    items: dict[str, bytes] = {}
    for name_offset, data_offset in entries:
        end = blob.index(b"\0", toc + name_offset)
        name = blob[toc + name_offset : end].decode("ascii")
        items[name] = blob[toc + data_offset : toc + ends[data_offset]]
    return blob[:header_size], items


def write_package(header: bytes, items: dict[str, bytes]) -> bytes:
    """An ICU common data package of ``items`` (sorted by name, as ICU's binary search needs)."""
    names = sorted(items)
    encoded = [name.encode("ascii") + b"\0" for name in names]
    toc_size = 4 + 8 * len(names)
    name_offsets: list[int] = []
    position = toc_size
    for text in encoded:
        name_offsets.append(position)
        position += len(text)
    body = b"".join(encoded)
    first = toc_size + len(body)  # the items start after the names, aligned (offsets count from the TOC)
    first += -first % _ALIGN
    data_offsets: list[int] = []
    data = bytearray()
    for name in names:
        data_offsets.append(first + len(data))
        data.extend(items[name])
        _pad(data)
    toc = bytearray(struct.pack("<I", len(names)))
    for name_offset, data_offset in zip(name_offsets, data_offsets, strict=True):
        toc.extend(struct.pack("<II", name_offset, data_offset))
    out = bytearray(header) + toc + body
    out.extend(b"\0" * (len(header) + first - len(out)))
    return bytes(out + data)


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def _data_symbol(library: Path) -> tuple[str, int, int]:
    """(name, file offset, size) of the ``icudt<major>_dat`` symbol in ``library`` (readelf)."""
    symbols = _run("readelf", "--dyn-syms", "-W", str(library))
    found = re.search(
        r":\s+([0-9a-f]+)\s+(0x[0-9a-f]+|\d+)\s+OBJECT\s+GLOBAL\s+\S+\s+\d+\s+(icudt\d+_dat)\b", symbols
    )
    if found is None:
        raise ValueError(f"{library.name} exports no icudt<major>_dat symbol: not an ICU data library")
    address, size, name = int(found.group(1), 16), int(found.group(2), 0), found.group(3)
    for line in _run("readelf", "-lW", str(library)).splitlines():
        fields = line.split()
        if fields[:1] == ["LOAD"]:
            offset, vaddr, filesz = int(fields[1], 16), int(fields[2], 16), int(fields[4], 16)
            if vaddr <= address and address + size <= vaddr + filesz:
                return name, address - vaddr + offset, size
    raise ValueError(f"{library.name}: the {name} symbol lies in no loaded segment")


def _soname(library: Path) -> str:
    found = re.search(r"\(SONAME\).*\[(.+)\]", _run("readelf", "-dW", str(library)))
    if found is None:
        raise ValueError(f"{library.name} has no SONAME")
    return found.group(1)


def link_library(package: bytes, symbol: str, soname: str, output: Path) -> None:
    """Write ``output``: a shared library exporting ``package`` as the read-only object ``symbol``."""
    with tempfile.TemporaryDirectory(prefix="icu-data-") as temp:
        folder = Path(temp)
        (folder / "data.dat").write_bytes(package)
        (folder / "data.s").write_text(
            f"\t.section .rodata\n\t.globl {symbol}\n\t.type {symbol}, @object\n\t.balign {_ALIGN}\n"
            f'{symbol}:\n\t.incbin "data.dat"\n\t.size {symbol}, . - {symbol}\n'
            '\t.section .note.GNU-stack,"",@progbits\n',
            encoding="ascii",
        )
        subprocess.run(["as", "-o", "data.o", "data.s"], cwd=folder, check=True, capture_output=True)
        subprocess.run(
            ["ld", "-shared", "-soname", soname, "-z", "noexecstack", "-o", "lib.so", "data.o"],
            cwd=folder,
            check=True,
            capture_output=True,
        )
        shutil.copyfile(folder / "lib.so", output)


def trim_library(library: Path, unused: tuple[str, ...] = UNUSED) -> tuple[int, int, int]:
    """Replace ``library`` (an ICU data library) by one without the items under ``unused``.

    Returns (items removed, bytes before, bytes after). Raises ValueError when the library is not an
    ICU data library or holds none of ``unused`` (a changed ICU layout must be looked at, not ignored).
    """
    symbol, offset, size = _data_symbol(library)
    with library.open("rb") as handle:
        handle.seek(offset)
        blob = handle.read(size)
    header, items = read_package(blob)
    prefix = next(iter(items)).split("/", 1)[0] + "/" if items else ""
    kept = {name: data for name, data in items.items() if not name[len(prefix) :].startswith(unused)}
    removed = len(items) - len(kept)
    if removed == 0:
        raise ValueError(f"{library.name}: none of {', '.join(unused)} found; the ICU data layout changed")
    before = library.stat().st_size
    link_library(write_package(header, kept), symbol, _soname(library), library)
    return removed, before, library.stat().st_size
