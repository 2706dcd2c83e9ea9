"""The metrics writer: declared names and labels only, atomic file, last success kept, a missing library
never breaks a job; the ping client: the URL scheme, and a failed ping is a warning."""

from __future__ import annotations

import os
import stat
import sys
import urllib.error

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _metrics, _ping


def test_names_follow_prometheus_conventions():
    for name, (description, labels) in _metrics.METRICS.items():
        assert name.startswith("grus_backup_") and description.endswith(".")
        assert not name.endswith("_total"), "every sample is a gauge"
        assert "archive" not in labels and "name" not in labels, "no unbounded label"


def test_undeclared_names_or_labels_are_refused(tmp_path):
    metrics = _metrics.JobMetrics("backup", str(tmp_path))
    with pytest.raises(KeyError):
        metrics.set("grus_backup_nonsense", 1, task="x")
    with pytest.raises(KeyError):
        metrics.set("grus_backup_volume_files", 1, client="a")


def test_a_failed_run_keeps_the_last_success(tmp_path):
    clock = iter([100.0, 110.0, 200.0, 205.0]).__next__
    first = _metrics.JobMetrics("backup", str(tmp_path), clock=clock)
    assert first.finish(0) == []
    second = _metrics.JobMetrics("backup", str(tmp_path), clock=clock)
    assert second.finish(2) == []
    text = (tmp_path / "grus_backup_backup.prom").read_text()
    assert 'grus_backup_job_last_success_timestamp_seconds{repository="",task="backup"} 110.0' in text
    assert 'grus_backup_job_exit_status{repository="",task="backup"} 2.0' in text
    assert 'grus_backup_job_duration_seconds{repository="",task="backup"} 5.0' in text
    assert [p.name for p in tmp_path.iterdir()] == ["grus_backup_backup.prom"]  # no temporary file left


def test_the_file_is_readable_by_node_exporter_whatever_the_umask(tmp_path):
    # The hardened units run with UMask=0077; node_exporter reads the file as its own user.
    old = os.umask(0o077)
    try:
        assert _metrics.JobMetrics("check", str(tmp_path)).finish(0) == []
        path, warnings = _metrics.unit_failed(str(tmp_path), "grus-backup-check")
    finally:
        os.umask(old)
    assert warnings == []
    for name in ("grus_backup_check.prom", os.path.basename(path)):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["grus_backup_check.prom", os.path.basename(path)])


def test_a_missing_library_is_a_warning_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    warnings = _metrics.JobMetrics("sync", str(tmp_path)).finish(0)
    assert len(warnings) == 1 and "python3-prometheus-client" in warnings[0]
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_directory_is_a_warning(tmp_path):
    warnings = _metrics.JobMetrics("sync", str(tmp_path / "missing")).finish(0)
    assert len(warnings) == 1 and "no metrics written" in warnings[0]


def test_no_directory_no_metrics():
    assert _metrics.JobMetrics("sync", None).finish(2) == []


class FakeResponse:
    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        return False

    def read(self, _size):
        return b"OK"


def test_ping_urls_and_failures():
    calls = []

    def opener(request, timeout):
        calls.append((request.full_url, timeout))
        return FakeResponse()

    pinger = _ping.Pinger("https://hc.example.invalid/abc/", opener=opener)
    assert pinger.start() and pinger.finish(0) and pinger.finish(1)
    assert [url for url, _t in calls] == [
        "https://hc.example.invalid/abc/start",
        "https://hc.example.invalid/abc",
        "https://hc.example.invalid/abc/fail",
    ]
    assert all(t == _ping.DEFAULT_TIMEOUT for _u, t in calls)

    def broken(request, timeout):
        raise urllib.error.URLError("timed out")

    failing = _ping.Pinger("https://hc.example.invalid/secret-uuid", opener=broken)
    assert failing.start() is False
    assert "secret-uuid" not in failing.warnings[0] and "not affected" in failing.warnings[0]
    assert _ping.Pinger("file:///etc/passwd").warnings and not _ping.Pinger("ftp://x").url
    assert _ping.Pinger(None).start() is False
