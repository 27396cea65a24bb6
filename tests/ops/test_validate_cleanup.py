"""``validate`` and ``cleanup`` on local storage and on a real S3 server (``rclone serve s3``).

Groups are uploaded through the real flow (sign, PUT to storage, complete), then storage and the
database are broken behind the server's back: an object deleted, an object overwritten with other
bytes, objects no row accounts for, an abandoned pending group, a group stuck in ``deleting``. The CLI
must find each of them, ``cleanup`` must change nothing without ``--apply`` and repair them with it,
and a second ``validate`` must then pass.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete

from server.cli import main
from server.db.models import Mask
from server.jobs.validate import validate
from tests.ops.conftest import DATABASES, STORAGES, OpsEnv, backdate


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``pacs-mask-server`` in-process; return its exit code and stdout."""
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


def kinds(report: dict) -> dict[str, set[str]]:
    """``{kind: {key or group id}}`` of a JSON report."""
    found: dict[str, set[str]] = {}
    for finding in report["findings"]:
        found.setdefault(finding["kind"], set()).add(finding["key"] or finding["group_id"])
    return found


@pytest.mark.parametrize("db_kind", DATABASES)
@pytest.mark.parametrize("storage_kind", STORAGES)
def test_validate_finds_and_cleanup_repairs(ops: OpsEnv, capsys: pytest.CaptureFixture[str]) -> None:
    good = ops.upload_group(3)
    gone = ops.upload_group(3)
    bad = ops.upload_group(3, annotation_id=good.annotation_id)
    stale = ops.upload_group(2, complete=False, upload=1)
    idle = ops.upload_group(2, complete=False, upload=2)
    active = ops.upload_group(2, complete=False, upload=0)
    stuck = ops.upload_group(2)

    code, out = run_cli(capsys, "validate", "--json")
    assert code == 0, out
    assert json.loads(out)["ok"] is True

    ops.raw_delete(gone.keys[1])  # a registered slice whose object disappeared
    ops.raw_put(bad.keys[2], b"\x89PNG not what was uploaded")  # corrupted in place
    stray = f"mask/{good.annotation_id}/{uuid.uuid4()}/slice_0000.png"  # no such group
    extra = f"mask/{good.annotation_id}/{good.id}/extra.png"  # complete group does not list it
    for key in (stray, extra):
        ops.raw_put(key, b"orphan bytes")
    backdate(ops, stale, timedelta(hours=30))
    backdate(ops, idle, timedelta(hours=1))
    backdate(ops, stuck, timedelta(hours=2), status="deleting")

    code, out = run_cli(capsys, "validate", "--json")
    report = json.loads(out)
    assert code == 1
    assert report["ok"] is False
    assert kinds(report) == {
        "missing_object": {gone.keys[1]},
        "corrupt_object": {bad.keys[2]},
        "orphan_object": {stray, extra},
        "stale_pending": {stale.id},
        "pending_expired": {idle.id},
        "stuck_delete": {stuck.id},
    }
    corrupt = next(f for f in report["findings"] if f["kind"] == "corrupt_object")
    assert corrupt["detail"]["stored_size"] == len(b"\x89PNG not what was uploaded")
    assert corrupt["detail"]["expected_md5"] != corrupt["detail"]["stored_md5"]
    assert report["warnings"] == 1  # pending_expired warns, it does not fail the run

    code, text = run_cli(capsys, "validate")
    assert code == 1
    assert "missing_object" in text
    assert gone.keys[1] in text
    assert "fix:" in text

    before = ops.keys()
    code, plan = run_cli(capsys, "cleanup")
    assert code == 0
    assert "dry run" in plan
    assert "remove_broken_group" not in plan, "broken complete groups are only removed when asked"
    code, plan = run_cli(capsys, "cleanup", "--remove-broken")
    assert code == 0
    assert "remove_broken_group" in plan
    assert "delete_orphan_prefix" in plan
    assert ops.keys() == before, "a dry run changed storage"

    code, out = run_cli(capsys, "cleanup", "--apply", "--remove-broken", "--json")
    result = json.loads(out)
    assert code == 0, out
    done = {(a["action"], a["target"]) for a in result["actions"] if a["status"] == "done"}
    assert done == {
        ("remove_pending_group", stale.id),
        ("finish_delete", stuck.id),
        ("remove_broken_group", gone.id),
        ("remove_broken_group", bad.id),
        ("delete_orphan_prefix", stray.rsplit("/", 1)[0] + "/"),
        ("delete_orphan", extra),
    }

    code, out = run_cli(capsys, "validate", "--json")
    after = json.loads(out)
    assert code == 0, out
    assert kinds(after) == {"pending_expired": {idle.id}}
    remaining = set(ops.keys())
    assert set(good.keys) <= remaining
    assert set(idle.keys) <= remaining
    for removed in (gone, bad, stale, stuck):
        assert not set(removed.keys) & remaining
        assert ops.api("GET", f"/api/mask/{removed.id}").status_code == 404
    assert not {stray, extra} & remaining
    assert ops.api("GET", f"/api/mask/{active.id}").status_code == 200

    audit = ops.api("GET", "/api/audit", params={"actor": "job:cleanup"}).json()["items"]
    actions = {row["action"] for row in audit}
    assert {
        "cleanup.remove_pending_group",
        "cleanup.finish_delete",
        "cleanup.remove_broken_group",
        "cleanup.delete_orphan",
        "cleanup.delete_orphan_prefix",
        "cleanup.run",
        "group.delete",
    } <= actions
    broken = next(
        r for r in audit if r["action"] == "cleanup.remove_broken_group" and r["group_id"] == bad.id
    )
    assert broken["detail"]["broken_keys"] == [bad.keys[2]]
    assert len(broken["detail"]["slices"]) == 3  # the lost group's slice list stays on record


def test_cleanup_keeps_broken_complete_groups_unless_asked(
    ops: OpsEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    """A complete group with a lost object keeps its intact slices until a person asks to remove it."""
    broken = ops.upload_group(3)
    ops.raw_delete(broken.keys[0])

    code, out = run_cli(capsys, "cleanup", "--apply", "--json")
    result = json.loads(out)
    assert code == 0, out
    assert result["actions"] == []
    assert ops.api("GET", f"/api/mask/{broken.id}").status_code == 200
    assert set(broken.keys[1:]) <= set(ops.keys())

    code, out = run_cli(capsys, "cleanup", "--apply", "--remove-broken", "--json")
    assert code == 0, out
    assert [(a["action"], a["status"]) for a in json.loads(out)["actions"]] == [
        ("remove_broken_group", "done")
    ]
    assert ops.api("GET", f"/api/mask/{broken.id}").status_code == 404


def test_missing_rows_show_as_missing_slices_gaps_and_an_orphan(ops: OpsEnv) -> None:
    group = ops.upload_group(4)
    with ops.parts.db.session() as session:
        session.execute(delete(Mask).where(Mask.group_id == uuid.UUID(group.id), Mask.slice_index == 1))
    report = validate(ops.parts.db, ops.parts.storage, ops.settings)
    found = {(f.kind, f.key or f.group_id) for f in report.findings}
    assert found == {
        ("missing_slices", group.id),
        ("index_gap", group.id),
        ("orphan_object", group.keys[1]),
    }
    gap = next(f for f in report.findings if f.kind == "index_gap")
    assert gap.detail["missing_indexes"] == [1]


def test_pending_age_counts_from_the_last_signed_url(ops: OpsEnv) -> None:
    group = ops.upload_group(2, complete=False, upload=0)
    now = datetime.now(UTC)
    ttl = ops.settings.url_ttl_seconds

    def at(seconds):
        return validate(ops.parts.db, ops.parts.storage, ops.settings, now=now + timedelta(seconds=seconds))

    assert at(ttl - 60).findings == []
    assert [f.kind for f in at(ttl + 60).findings] == ["pending_expired"]
    assert [f.kind for f in at(ops.settings.stale_pending_hours * 3600 + 60).findings] == ["stale_pending"]
    # Signing again counts as activity: the group is no longer expired.
    signed = ops.api(
        "POST",
        f"/api/mask-group/{group.id}/signed-url",
        json={"slices": [{"filename": "late.png", "size": 3, "content_md5": "ICy5YqxZB1uWSwcVLSNLcA=="}]},
    )
    assert signed.status_code == 200
    assert validate(ops.parts.db, ops.parts.storage, ops.settings, now=datetime.now(UTC)).findings == []


def test_validate_one_group_and_bad_group_ids(ops: OpsEnv, capsys: pytest.CaptureFixture[str]) -> None:
    good = ops.upload_group(2)
    broken = ops.upload_group(2)
    ops.raw_delete(broken.keys[0])
    code, out = run_cli(capsys, "validate", "--group", good.id, "--json")
    assert code == 0
    assert json.loads(out)["scope"] == f"group {good.id}"
    code, out = run_cli(capsys, "validate", "--group", broken.id)
    assert code == 1
    assert broken.keys[0] in out
    assert run_cli(capsys, "validate", "--group", str(uuid.uuid4()))[0] == 2
    assert run_cli(capsys, "validate", "--group", "not-a-group")[0] == 2


def test_admin_api_runs_validate(ops: OpsEnv) -> None:
    group = ops.upload_group(2)
    assert ops.api("POST", "/api/admin/validate", token=ops.token("reviewer")).status_code == 403
    assert ops.client.post("/api/admin/validate").status_code == 401
    response = ops.api("POST", "/api/admin/validate")
    assert response.status_code == 200
    assert response.json()["ok"] is True
    ops.raw_delete(group.keys[1])
    body = ops.api("POST", "/api/admin/validate", params={"group_id": group.id}).json()
    assert body["ok"] is False
    assert body["counts"]["missing_object"] == 1
    assert body["findings"][0]["key"] == group.keys[1]
    assert ops.api("POST", "/api/admin/validate", params={"group_id": str(uuid.uuid4())}).status_code == 404
    audit = ops.api("GET", "/api/audit", params={"actor": "ops-admin"}).json()["items"]
    assert [row["detail"]["ok"] for row in audit if row["action"] == "job.validate"] == [False, True]


@pytest.mark.parametrize("db_kind", DATABASES)
def test_cleanup_skips_what_changed_since_the_plan(ops: OpsEnv) -> None:
    """Every action re-checks its condition: what changed between planning and applying is left alone."""
    from server.jobs.cleanup import apply_actions, plan

    pending = ops.upload_group(2, complete=False, upload=2)
    backdate(ops, pending, timedelta(hours=30))
    broken = ops.upload_group(2)
    body = b"".join(ops.parts.storage.open(broken.keys[0]))
    ops.raw_delete(broken.keys[0])
    stray = f"mask/{broken.annotation_id}/{broken.id}/stray.png"
    ops.raw_put(stray, b"stray")
    actions, _manual = plan(validate(ops.parts.db, ops.parts.storage, ops.settings), remove_broken=True)
    assert sorted(a.action for a in actions) == [
        "delete_orphan",
        "remove_broken_group",
        "remove_pending_group",
    ]

    # Meanwhile: the client signs again, the lost object is restored from a backup, and a row
    # now lists the stray object.
    signed = ops.api(
        "POST",
        f"/api/mask-group/{pending.id}/signed-url",
        json={"slices": [{"filename": "late.png", "size": 3, "content_md5": "ICy5YqxZB1uWSwcVLSNLcA=="}]},
    )
    assert signed.status_code == 200
    ops.raw_put(broken.keys[0], body)
    with ops.parts.db.session() as session:
        session.add(
            Mask(
                group_id=uuid.UUID(broken.id), filename="stray.png", storage_key=stray, slice_index=9, width=1,
                height=1, checksum="0" * 32, size_bytes=5, content_type="image/png",
            )
        )  # fmt: skip
    apply_actions(ops.parts, actions)
    assert {a.status for a in actions} == {"skipped"}, [(a.action, a.result) for a in actions]
    assert set(pending.keys) | set(broken.keys) | {stray} <= set(ops.keys())


def test_unreachable_database_exits_3(
    ops: OpsEnv, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACS_MASK_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    for command in (["validate"], ["cleanup", "--apply"]):
        capsys.readouterr()
        assert main(command) == 3
        assert "database cannot be reached" in capsys.readouterr().err
