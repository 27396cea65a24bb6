"""The trimmed ICU data library (packaging/icu_data.py, used by build.spec on Linux) answers every ICU
question Qt asks exactly like the original: collation, case mapping, time-zone ids and names, in
several locales. Qt is run in a child process with the trimmed library preloaded (same soname, so
QtCore's ICU uses it instead of the wheel's), and its answers are compared with a run on the original.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
icu_data = runpy.run_path(str(ROOT / "packaging" / "icu_data.py"))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PySide6 ships ICU on Linux")

_PROBE = r"""
import json, sys
from PySide6.QtCore import QCollator, QLocale, QTimeZone, QDateTime
words = ["Äpfel", "apple", "Zebra", "zürich", "Øre", "ça", "cote", "côte", "coté", "Ångström", "ß", "ss",
         "Ärger", "İstanbul", "ılık", "中文", "日本", "한국어", "ελληνικά", "кириллица", "10", "9", "a-b", "ab"]
answers = {}
for name in ("C", "en_US", "de_DE", "sv_SE", "tr_TR", "fr_FR", "ja_JP", "zh_CN", "da_DK"):
    collator = QCollator(QLocale(name))
    answers[f"sort {name}"] = sorted(words, key=collator.sortKey)
    answers[f"upper {name}"] = QLocale(name).toUpper("istanbul ıi straße")
    answers[f"lower {name}"] = QLocale(name).toLower("İSTANBUL I ΣΊΣΥΦΟΣ")
    answers[f"compare {name}"] = QLocale(name).toString(0) and collator.compare("côte", "coté")
when = QDateTime.fromSecsSinceEpoch(1_700_000_000)
for zone in (b"Europe/Berlin", b"America/New_York", b"Asia/Kolkata", b"Australia/Lord_Howe"):
    tz = QTimeZone(zone)
    for name in ("en_US", "de_DE", "ja_JP"):
        locale = QLocale(name)
        answers[f"{zone.decode()} {name}"] = [
            tz.displayName(when, kind, locale).strip()
            for kind in (QTimeZone.NameType.LongName, QTimeZone.NameType.ShortName,
                         QTimeZone.NameType.OffsetName, QTimeZone.NameType.DefaultName)
        ]
answers["zones"] = len(QTimeZone.availableTimeZoneIds())
answers["icu"] = [line.split()[-1] for line in open("/proc/self/maps") if "libicudata" in line][:1]
json.dump(answers, sys.stdout)
"""


def _qt_answers(preload: Path | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["QT_QPA_PLATFORM"] = "offscreen"
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def _wheel_icu_data() -> Path:
    pyside = pytest.importorskip("PySide6")
    found = sorted((Path(pyside.__file__).parent / "Qt" / "lib").glob("libicudata.so.*"))
    if not found:
        pytest.skip("this PySide6 wheel ships no ICU data library")
    return found[0]


def test_qt_answers_the_same_with_the_trimmed_icu_data(tmp_path: Path) -> None:
    original = _wheel_icu_data()
    trimmed = tmp_path / original.name
    trimmed.write_bytes(original.read_bytes())
    removed, before, after = icu_data["trim_library"](trimmed)
    assert removed > 1000
    assert after < before - 13 * 2**20  # about 14 MiB of the 31 MiB

    expected, got = _qt_answers(None), _qt_answers(trimmed)
    assert got.pop("icu") == [str(trimmed)]  # the trimmed library was the one loaded
    assert expected.pop("icu") == [str(original.resolve())]
    assert got == expected
    assert expected["sort sv_SE"] != expected["sort de_DE"]  # locale collation data really was used
    assert expected["upper tr_TR"] != expected["upper en_US"]
    assert expected["Europe/Berlin de_DE"] != expected["Europe/Berlin en_US"]


def test_the_package_format_round_trips_and_refuses_other_data(tmp_path: Path) -> None:
    items = {"icudt99l/b.res": b"B" * 20, "icudt99l/a.res": b"A" * 16, "icudt99l/coll/c.res": b"C"}
    header = b"\x20\x00\xda\x27\x14\x00\x00\x00\x00\x00\x02\x00CmnD\x01\x00\x00\x00\x63\x00\x00\x00"
    header += b"\0" * (32 - len(header))
    package = icu_data["write_package"](header, items)
    read_header, read_items = icu_data["read_package"](package)
    assert read_header == header
    assert {name: data.rstrip(b"\0") for name, data in read_items.items()} == items
    assert list(read_items) == sorted(items)  # ICU finds items by binary search on the names
    with pytest.raises(ValueError, match="magic"):
        icu_data["read_package"](b"\0" * 64)
    not_icu = tmp_path / "libnot.so"
    not_icu.write_bytes(Path(sys.executable).read_bytes())
    with pytest.raises((ValueError, subprocess.CalledProcessError)):
        icu_data["trim_library"](not_icu)
