"""Unit tests for the key-free segment reader and the deletion classifier, on segment bytes built here.

The bytes follow borg 1.4's LoggedIO (``write_put``, ``write_delete``, ``write_commit``): magic ``BORG_SEG``,
entries ``crc32 size tag [id] [data]`` with the crc over everything after it. Real repositories are read in
``tests/integration/test_compaction.py``.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _segments
from ansible_collections.grus.backup.plugins.module_utils._segments import (
    SegmentError,
    Thresholds,
    read_entries,
    read_transactions,
    read_transactions_log,
)


def entry(tag: int, key: bytes = b"", data: bytes = b"") -> bytes:
    body = struct.pack("<IB", 9 + len(key) + len(data), tag) + key + data
    return struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF) + body


def put(n: int, size: int = 100) -> bytes:
    return entry(0, n.to_bytes(32, "big"), b"x" * size)


def delete(n: int) -> bytes:
    return entry(1, n.to_bytes(32, "big"))


COMMIT = entry(2)


class Repo:
    def __init__(self, root: Path):
        self.root = root
        self.next = 0
        (root / "data" / "0").mkdir(parents=True)

    def segment(self, *entries: bytes, mtime: float | None = None) -> int:
        number = self.next
        path = self.root / "data" / "0" / str(number)
        path.write_bytes(b"BORG_SEG" + b"".join(entries))
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        self.next += 1
        return number

    def transaction(self, *entries: bytes) -> int:
        """Data in one segment, the commit in the next (as borg does for a final commit)."""
        self.segment(*entries)
        return self.segment(COMMIT)


@pytest.fixture
def repo(tmp_path) -> Repo:
    return Repo(tmp_path / "repo")


def test_entries_are_read_without_the_data(repo):
    repo.segment(put(1, 5000), delete(1), COMMIT)
    entries, clean = read_entries(str(repo.root / "data" / "0" / "0"))
    assert clean
    assert [(e.tag, e.size, e.offset) for e in entries] == [(0, 5041, 8), (1, 41, 5049), (2, 9, 5090)]
    assert entries[0].key == (1).to_bytes(32, "big") and entries[2].key is None


def test_a_torn_last_entry_ends_the_segment_and_its_transaction_is_not_committed(repo):
    repo.transaction(put(1))
    repo.segment(put(2), put(3)[:30])  # a write cut short, no commit
    entries, clean = read_entries(str(repo.root / "data" / "0" / "2"))
    assert not clean and len(entries) == 1
    (txn,) = read_transactions(str(repo.root))
    assert (txn.number, txn.objects_put) == (1, 1)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"ATTICSEG" + COMMIT, "magic"),
        (b"BORG_SEG" + entry(3, b"k" * 32), "unknown tag 3"),
        (b"BORG_SEG" + struct.pack("<IIB", 0, 3, 0), "impossible"),
    ],
)
def test_what_is_not_a_borg_1_segment_is_refused(repo, content, message):
    (repo.root / "data" / "0" / "0").write_bytes(content)
    with pytest.raises(SegmentError, match=message):
        read_transactions(str(repo.root))


def test_puts_rewrites_and_deletions_are_told_apart(repo):
    repo.transaction(put(0, 50), *(put(n) for n in range(1, 11)))  # manifest 0 and 10 objects
    # a prune: the manifest rewritten (DELETE + PUT of one id), two objects deleted
    number = repo.transaction(delete(0), put(0, 60), delete(3), delete(4))
    first, prune = read_transactions(str(repo.root))
    assert (first.objects_put, first.bytes_put, first.objects_deleted) == (11, 50 + 41 + 10 * 141, 0)
    assert (prune.number, prune.first_segment, prune.last_segment, prune.label) == (number, 2, 3, f"{number}:2-3")
    assert (prune.objects_put, prune.objects_rewritten, prune.objects_deleted, prune.bytes_deleted) == (0, 1, 2, 282)
    assert prune.live_objects_before == 11 and round(prune.deleted_share, 3) == round(2 / 11, 3)


def test_a_delete_of_an_object_already_gone_counts_nothing(repo):
    repo.transaction(put(1))
    repo.transaction(delete(1))
    repo.transaction(delete(1))  # borg keeps DELETEs that still shadow a PUT after compaction
    assert [t.objects_deleted for t in read_transactions(str(repo.root))] == [0, 1, 0]


def test_a_mass_delete_is_suspicious_and_a_prune_is_not(repo):
    repo.transaction(*(put(n) for n in range(300)))
    repo.transaction(*(delete(n) for n in range(10)))  # 3 %: a prune
    repo.transaction(*(delete(n) for n in range(10, 300)))  # everything else
    _first, prune, mass = read_transactions(str(repo.root), Thresholds(max_share=0.2, min_objects=100))
    assert not prune.suspicious
    assert mass.suspicious and "deleted 290 of 290 live objects (100%" in mass.reason


def test_the_floor_spares_a_small_prune_of_a_small_repository(repo):
    repo.transaction(put(0, 50), *(put(n) for n in range(1, 11)))  # manifest and 10 objects
    repo.transaction(delete(0), put(0, 60), *(delete(n) for n in range(1, 6)))  # half of them
    assert not read_transactions(str(repo.root), Thresholds(0.2, 100))[-1].suspicious
    assert read_transactions(str(repo.root), Thresholds(0.2, 5))[-1].suspicious


def test_a_total_deletion_is_suspicious_at_any_size_the_manifest_aside(repo):
    """The demo's delete of every archive: 12 of 13 live objects, the 13th the manifest (rewritten)."""
    repo.transaction(put(0, 50), *(put(n) for n in range(1, 13)))
    repo.transaction(delete(0), put(0, 60), *(delete(n) for n in range(1, 13)))
    total = read_transactions(str(repo.root), Thresholds(0.2, 100))[-1]
    assert (total.objects_deleted, total.live_objects_before, total.live_data_objects_before) == (12, 13, 12)
    assert total.objects_rewritten == 1 and total.deleted_data_share == 1.0
    assert total.suspicious and "deleted 12 of 13 live objects (100% of all but the manifest" in total.reason
    assert "suspicious at any size" in total.reason
    # One object, the only one: still everything.
    repo.transaction(put(20))
    repo.transaction(delete(0), put(0, 60), delete(20))
    assert read_transactions(str(repo.root), Thresholds(0.2, 100))[-1].suspicious
    # Above 1, max_share turns the audit off (tests that compact a deleted repository on purpose).
    assert not any(t.suspicious for t in read_transactions(str(repo.root), Thresholds(2, 100)))


@pytest.mark.parametrize(("deleted", "suspicious"), [(8, False), (9, True), (10, True)])
def test_nearly_everything_is_the_total_deletion_share(repo, deleted, suspicious):
    assert _segments.TOTAL_DELETION_SHARE == 0.9
    repo.transaction(put(0, 50), *(put(n) for n in range(1, 11)))
    repo.transaction(delete(0), put(0, 60), *(delete(n) for n in range(1, deleted + 1)))
    assert read_transactions(str(repo.root), Thresholds(0.2, 100))[-1].suspicious is suspicious


def test_intermediate_commits_in_one_segment_are_transactions_of_their_own(repo):
    repo.segment(put(1), COMMIT, put(2), COMMIT)
    one, two = read_transactions(str(repo.root))
    assert (one.number, one.commit_offset, two.number, two.ordinal) == (0, 8 + 141, 0, 2)
    assert one.label == two.label == "0:0-0"  # hence the ordinal


def test_segments_are_read_in_number_order_across_directories_and_empty_ones_skipped(repo):
    (repo.root / "data" / "1").mkdir()
    (repo.root / "data" / "1" / "1000").write_bytes(b"BORG_SEG" + delete(1) + COMMIT)
    repo.transaction(put(1))
    (repo.root / "data" / "0" / "5").write_bytes(b"")  # truncated before unlink: borg treats it as absent
    assert [n for n, _path in _segments.segment_files(str(repo.root))] == [0, 1, 1000]
    assert [t.objects_deleted for t in read_transactions(str(repo.root))] == [0, 1]


def test_the_transaction_time_is_the_commit_segments_mtime(repo):
    repo.segment(put(1), mtime=1000)
    repo.segment(COMMIT, mtime=2000)
    assert read_transactions(str(repo.root))[0].time == 2000


def test_the_transactions_log_keeps_repeated_numbers(repo):
    (repo.root / "transactions").write_text(
        "transaction 1, UTC time 2026-01-01T00:00:00.1\ntransaction 5, UTC time 2026-01-01T01:00:00.1\n"
        "transaction 5, UTC time 2026-01-02T01:00:00.1\ngarbage\n"
    )
    assert read_transactions_log(str(repo.root)) == [
        (1, "2026-01-01T00:00:00.1"),
        (5, "2026-01-01T01:00:00.1"),
        (5, "2026-01-02T01:00:00.1"),
    ]
    assert read_transactions_log(str(repo.root / "nowhere")) == []
