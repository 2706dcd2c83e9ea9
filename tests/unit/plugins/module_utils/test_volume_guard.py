"""Unit tests for the shrink guard: volumes measured, signs of destruction, the hold on disk."""

from __future__ import annotations

import json
import os

import pytest
from ansible_collections.grus.backup.plugins.module_utils._volume_guard import (
    HOLD_FILE,
    REWRITE_FLOOR_BYTES,
    excluded,
    measure_volumes,
    previous_volumes,
    read_hold,
    record_volumes,
    release_hold,
    rewrite_sign,
    set_hold,
    shrink_signs,
)

MIB = 1024 * 1024


def make_volume(root, client, volume, files=3, size=10):
    directory = root / client / volume / "sub"
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (directory / f"f{i}").write_bytes(b"x" * size)
    return str(root / client / volume)


def test_measure_counts_files_and_bytes_per_volume_and_leaves_out_the_excluded(tmp_path):
    data = make_volume(tmp_path, "balearica", "data", files=4, size=100)
    www = make_volume(tmp_path, "antigone", "www", files=1, size=7)
    make_volume(tmp_path, "balearica", "connection-logs", files=9, size=1000)
    (tmp_path / "balearica" / ".grus-sync.json").write_text("{}")  # a file beside the volumes
    os.symlink("/etc", tmp_path / "balearica" / "data" / "link")  # not followed
    exclude = [f"sh:{tmp_path}/*/connection-logs"]
    assert measure_volumes([str(tmp_path)], exclude) == {
        data: {"files": 4, "bytes": 400},
        www: {"files": 1, "bytes": 7},
    }


def test_excluded_reads_sh_fm_and_plain_patterns():
    assert excluded("/e/c/connection-logs", ["sh:/e/*/connection-logs"])
    assert excluded("/e/c/connection-logs", ["fm:/e/*/connection-logs/"])
    assert excluded("/e/c/tmp", ["/e/c/tmp"])
    assert not excluded("/e/c/data", ["sh:/e/*/connection-logs"])


PREVIOUS = {"/e/b/data": {"files": 100, "bytes": 1000}, "/e/b/www": {"files": 10, "bytes": 50}}


def test_no_sign_when_volumes_grow_or_shrink_within_the_share():
    current = {"/e/b/data": {"files": 50, "bytes": 500}, "/e/b/www": {"files": 30, "bytes": 900}}
    assert shrink_signs(PREVIOUS, current, 0.5) == []


def test_a_vanished_volume_is_a_sign():
    signs = shrink_signs(PREVIOUS, {"/e/b/www": {"files": 10, "bytes": 50}}, 0.5)
    assert signs == ["volume /e/b/data vanished (it held 100 files, 1000 bytes)"]


def test_a_volume_emptied_by_files_or_by_bytes_is_a_sign():
    current = {"/e/b/data": {"files": 100, "bytes": 10}, "/e/b/www": {"files": 0, "bytes": 0}}
    signs = shrink_signs(PREVIOUS, current, 0.5)
    assert signs == [
        "volume /e/b/data lost 99% of its bytes (1000 -> 10; limit 50%)",
        "volume /e/b/www lost 100% of its files (10 -> 0; limit 50%)",
        "volume /e/b/www lost 100% of its bytes (50 -> 0; limit 50%)",
    ]


def test_an_empty_volume_that_stays_empty_is_no_sign():
    assert shrink_signs({"/v": {"files": 0, "bytes": 0}}, {"/v": {"files": 0, "bytes": 0}}, 0.5) == []


def test_mostly_new_data_is_a_sign_unless_first_run_or_small_or_new_volumes():
    big = 100 * MIB
    current = {"/e/b/data": {"files": 10, "bytes": big}}
    previous = {"/e/b/data": {"files": 10, "bytes": big}}
    rewritten = {"original_size": big, "deduplicated_size": 90 * MIB}
    sign = rewrite_sign(previous, current, rewritten, 0.5)
    assert sign is not None and sign.startswith("90% of the archive")
    assert rewrite_sign(previous, current, {"original_size": big, "deduplicated_size": MIB}, 0.5) is None
    assert rewrite_sign({}, current, rewritten, 0.5) is None  # the guard's first run
    small = {"original_size": REWRITE_FLOOR_BYTES - 1, "deduplicated_size": REWRITE_FLOOR_BYTES - 1}
    assert rewrite_sign(previous, current, small, 0.5) is None
    # A volume seen for the first time brings new data of its own: that is not a rewrite.
    with_new = {**current, "/e/b/new": {"files": 5, "bytes": 80 * MIB}}
    added = {"original_size": big + 80 * MIB, "deduplicated_size": 80 * MIB + MIB}
    assert rewrite_sign(previous, with_new, added, 0.5) is None


def test_volumes_are_recorded_atomically_and_read_back(tmp_path):
    state = str(tmp_path / "state")
    assert previous_volumes(state) == {}
    record_volumes(state, "a-1", PREVIOUS)
    assert previous_volumes(state) == PREVIOUS
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["volumes.json"]  # no temp file left
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"


def test_a_hold_accumulates_reasons_until_released(tmp_path):
    state = str(tmp_path)
    assert read_hold(state) is None
    first = set_hold(state, "a-1", ["volume /v vanished"])
    second = set_hold(state, "a-2", ["volume /w vanished"])
    assert second["since"] == first["since"] and second["archive"] == "a-1"
    assert read_hold(state)["reasons"] == ["a-1: volume /v vanished", "a-2: volume /w vanished"]
    assert release_hold(state) is True
    assert read_hold(state) is None
    assert release_hold(state) is False


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]"])
def test_an_unreadable_hold_file_still_holds(tmp_path, content):
    (tmp_path / HOLD_FILE).write_text(content)
    hold = read_hold(str(tmp_path))
    assert hold is not None and "cannot be read" in hold["reasons"][0]
    assert json.loads(json.dumps(hold))  # serialisable for the report
