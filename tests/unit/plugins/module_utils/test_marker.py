"""The sync marker has one owner (_marker): what the sync client writes is what the key holder reads."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone

import yaml
from ansible_collections.grus.backup.plugins.module_utils import _marker, _rsync
from ansible_collections.grus.backup.plugins.module_utils._rsync_options import SyncOptions
from ansible_collections.grus.backup.plugins.modules import nfs_sync


def test_what_the_sync_writes_the_backup_reads_as_fresh_and_done(tmp_path):
    options = SyncOptions(src=str(tmp_path / "volumes"), dest=str(tmp_path / "copy"), lock=None, source_host="bal")
    started = time.time() - 30
    marker = _rsync.build_marker(options, ["www"], {"files": 3}, 0, started, time.time())
    path = _rsync.write_marker(options, marker)
    assert path == str(tmp_path / "copy" / _marker.DEFAULT_NAME)
    assert _marker.read(path)[0]["format"] == _marker.FORMAT == 2
    report, warning = _marker.judge(path, 60, datetime.now(timezone.utc))  # noqa: UP017
    assert warning is None and report["state"] == _marker.DONE and report["stale"] is False
    assert abs(report["clock_skew_seconds"]) <= 2


def test_running_and_failed_markers_are_reported_with_their_reason(tmp_path):
    options = SyncOptions(src="/srv/volumes", dest=str(tmp_path), lock=None, source_host="bal")
    _rsync.write_marker(options, _rsync.build_progress_marker(options, _marker.RUNNING, time.time()))
    path = str(tmp_path / _marker.DEFAULT_NAME)
    assert _marker.is_running(path)
    _report, warning = _marker.judge(path, 60, datetime.now(timezone.utc))  # noqa: UP017
    assert "the sync from bal" in warning and "has not finished" in warning
    _rsync.write_marker(options, _rsync.build_progress_marker(options, _marker.FAILED, time.time(), "partial: x"))
    report, warning = _marker.judge(path, 60, datetime.now(timezone.utc))  # noqa: UP017
    assert report["state"] == _marker.FAILED and "(partial: x;" in warning and not _marker.is_running(path)


def test_stale_missing_and_unreadable(tmp_path):
    path = tmp_path / _marker.DEFAULT_NAME
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)  # noqa: UP017
    path.write_text(json.dumps({"time": (now - timedelta(minutes=90)).strftime(_marker.TIME_FORMAT)}))
    report, warning = _marker.judge(str(path), 60, now)
    assert report["stale"] is True and report["age_minutes"] == 90.0 and "is stale" in warning
    path.write_text("[1, 2]")
    assert _marker.read(str(path)) == (None, "unreadable (not a JSON object)")
    assert _marker.read(str(tmp_path / "none")) == (None, "missing")
    assert "is missing" in _marker.judge(str(tmp_path / "none"), 60, now)[1]


def test_write_local_replaces_atomically_and_leaves_no_temporary_file(tmp_path):
    _marker.write_local(str(tmp_path), {"state": "running"})
    _marker.write_local(str(tmp_path), {"state": "done"})
    assert os.listdir(tmp_path) == [_marker.DEFAULT_NAME]
    assert _marker.state_of(_marker.read(str(tmp_path / _marker.DEFAULT_NAME))[0]) == _marker.DONE


def test_nfs_sync_documents_the_format_it_writes():
    returned = yaml.safe_load(nfs_sync.RETURN)["marker"]["sample"]
    assert returned["format"] == _marker.FORMAT and returned["state"] == _marker.DONE
    assert nfs_sync.ARGUMENT_SPEC["marker_name"]["default"] == _marker.DEFAULT_NAME
