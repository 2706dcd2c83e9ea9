# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a borg 1.x repository's segment files without the key: what each transaction put and deleted.

layer 0: may import nothing of grus.backup (standard library only).

Private to grus.backup and pure standard library (the repository host ships it beside its compaction job).

Borg 1.x segment format (borg 1.4 ``borg/repository.py``, ``LoggedIO``): the magic ``BORG_SEG``, then
entries ``crc32(4) size(4) tag(1)``; PUT (0) and DELETE (1) carry the 32-byte object id next, PUT its
(encrypted) data after it; COMMIT (2) is the bare 9-byte header. ``size`` counts the whole entry. Borg 1.4
has no other tag (PUT2 with an xxh64 is borg 2's format). The id of a transaction is the number of the
segment holding its COMMIT (what borg writes to ``transactions``); after a rollback numbers repeat.

A put that supersedes a live object is written by borg as DELETE + PUT of the same id (the manifest, every
transaction): that is a rewrite, not a deletion. Replaying every segment in order (as borg does when it
rebuilds its index) gives the live objects before each transaction, so each deletion can be measured
against what was there.

The manifest is the object whose id is 32 zero bytes (borg 1.x ``Manifest.MANIFEST_ID``; measured on a
borg 1.4.0 repository: the first PUT of ``borg init`` and the DELETE + PUT of every transaction). It lives as
long as the repository, so "every live object" means every one but the manifest: ``borg delete
--glob-archives '*'`` of a repository with two small archives deletes 12 of 13 live objects, 100 % of its data.
"""

from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass, field

MAGIC = b"BORG_SEG"
TAG_PUT = 0
TAG_DELETE = 1
TAG_COMMIT = 2
HEADER = struct.Struct("<IIB")  # crc32, size (whole entry), tag
KEY_SIZE = 32
MANIFEST_ID = bytes(KEY_SIZE)
# A transaction deleting at least this share of the live objects other than the manifest is suspicious at
# any size: the floor of ``Thresholds.min_objects`` keeps a small prune quiet, not the loss of everything.
# The 20-day prune simulation (tests/integration/test_compaction.py) peaks at a few per cent; deleting one
# of two small archives is about half. Never below ``Thresholds.max_share``: above 1 that turns both rules off.
TOTAL_DELETION_SHARE = 0.9
MAX_ENTRY_SIZE = 20 * 1024 * 1024 + 41  # borg's MAX_OBJECT_SIZE: a bigger size means a damaged header


class SegmentError(Exception):
    """A segment file that is not a borg 1.x segment (wrong magic, unknown tag, impossible size)."""


@dataclass
class Entry:
    tag: int
    key: bytes | None
    size: int
    offset: int


@dataclass
class Transaction:
    """One committed transaction: every entry from after the previous COMMIT up to its own."""

    ordinal: int  # 1-based position among the transactions found in the segments read
    number: int  # borg's transaction id: the segment holding the COMMIT
    first_segment: int
    last_segment: int
    commit_offset: int
    time: float  # mtime of the commit segment (borg closes it right after the COMMIT)
    objects_put: int = 0
    bytes_put: int = 0
    objects_rewritten: int = 0  # DELETE + PUT of the same id (manifest updates)
    objects_deleted: int = 0
    bytes_deleted: int = 0
    live_objects_before: int = 0
    live_bytes_before: int = 0
    live_data_objects_before: int = 0  # the live objects but the manifest
    suspicious: bool = False
    reason: str = ""

    @property
    def deleted_share(self) -> float:
        return self.objects_deleted / self.live_objects_before if self.live_objects_before else 0.0

    @property
    def deleted_data_share(self) -> float:
        """The share of the live objects other than the manifest (which a transaction never deletes for good)."""
        return self.objects_deleted / self.live_data_objects_before if self.live_data_objects_before else 0.0

    @property
    def label(self) -> str:
        """Number and segment range: unique where a number alone is not (after a rollback)."""
        return f"{self.number}:{self.first_segment}-{self.last_segment}"

    def as_dict(self) -> dict:
        data = asdict(self)
        data["deleted_share"] = round(self.deleted_share, 6)
        data["deleted_data_share"] = round(self.deleted_data_share, 6)
        data["label"] = self.label
        return data


@dataclass
class Thresholds:
    """Suspicious: a transaction deleting at least ``min_objects`` objects AND ``max_share`` of the live ones,
    or, at any size, at least ``total_share`` (never below ``max_share``) of the live objects but the manifest."""

    max_share: float = 0.2
    min_objects: int = 100

    @property
    def total_share(self) -> float:
        return max(TOTAL_DELETION_SHARE, self.max_share)


def segment_files(repo: str) -> list[tuple[int, str]]:
    """(number, path) of every segment file under ``repo/data``, in number order; empty files do not exist for borg."""
    data = os.path.join(repo, "data")
    found = []
    if not os.path.isdir(data):
        return found
    for sub in os.listdir(data):
        subdir = os.path.join(data, sub)
        if not sub.isdigit() or not os.path.isdir(subdir):
            continue
        for name in os.listdir(subdir):
            path = os.path.join(subdir, name)
            if name.isdigit() and os.path.isfile(path) and os.path.getsize(path) > 0:
                found.append((int(name), path))
    return sorted(found)


def read_entries(path: str) -> tuple[list[Entry], bool]:
    """The entries of one segment (data skipped, never read) and whether the file ended cleanly.

    A torn last entry (a write cut short) ends the list: borg discards such an uncommitted tail itself.
    """
    entries = []
    with open(path, "rb") as fd:
        if fd.read(len(MAGIC)) != MAGIC:
            raise SegmentError(f"{path}: not a borg 1.x segment (magic)")
        size_left = os.fstat(fd.fileno()).st_size - len(MAGIC)
        offset = len(MAGIC)
        while size_left > 0:
            entry = _read_entry(fd, path, offset, size_left)
            if entry is None:
                return entries, False
            entries.append(entry)
            offset += entry.size
            size_left -= entry.size
            fd.seek(offset)
    return entries, True


def _read_entry(fd, path: str, offset: int, size_left: int) -> Entry | None:
    header = fd.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    _crc, size, tag = HEADER.unpack(header)
    if tag not in (TAG_PUT, TAG_DELETE, TAG_COMMIT):
        raise SegmentError(f"{path} offset {offset}: unknown tag {tag} (not a borg 1.x segment entry)")
    minimum = HEADER.size if tag == TAG_COMMIT else HEADER.size + KEY_SIZE
    if size < minimum or size > MAX_ENTRY_SIZE:
        raise SegmentError(f"{path} offset {offset}: impossible entry size {size}")
    if size > size_left:
        return None
    key = fd.read(KEY_SIZE) if tag != TAG_COMMIT else None
    return Entry(tag, key, size, offset)


@dataclass
class _Replay:
    live: dict = field(default_factory=dict)  # object id -> entry size of its PUT
    transactions: list = field(default_factory=list)
    pending: list = field(default_factory=list)  # (segment, entry) since the last COMMIT
    first_segment: int | None = None


def read_transactions(repo: str, thresholds: Thresholds | None = None) -> list[Transaction]:
    """Every committed transaction in the repository's segments, classified; an uncommitted tail is ignored."""
    thresholds = thresholds or Thresholds()
    replay = _Replay()
    for number, path in segment_files(repo):
        entries, _clean = read_entries(path)
        mtime = os.stat(path).st_mtime
        for entry in entries:
            if replay.first_segment is None:
                replay.first_segment = number
            replay.pending.append(entry)
            if entry.tag == TAG_COMMIT:
                _commit(replay, number, entry.offset, mtime, thresholds)
    return replay.transactions


def _commit(replay: _Replay, number: int, offset: int, mtime: float, thresholds: Thresholds) -> None:
    txn = Transaction(
        ordinal=len(replay.transactions) + 1,
        number=number,
        first_segment=replay.first_segment,
        last_segment=number,
        commit_offset=offset,
        time=mtime,
        live_objects_before=len(replay.live),
        live_bytes_before=sum(replay.live.values()),
        live_data_objects_before=len(replay.live) - (MANIFEST_ID in replay.live),
    )
    deleted: dict = {}
    for entry in replay.pending:
        _apply(replay.live, deleted, txn, entry)
    txn.objects_deleted = len(deleted)
    txn.bytes_deleted = sum(deleted.values())
    classify(txn, thresholds)
    replay.transactions.append(txn)
    replay.pending = []
    replay.first_segment = None


def _apply(live: dict, deleted: dict, txn: Transaction, entry: Entry) -> None:
    if entry.tag == TAG_PUT:
        if entry.key in deleted:  # DELETE then PUT of one id in one transaction: a rewrite
            del deleted[entry.key]
            txn.objects_rewritten += 1
        else:
            txn.objects_put += 1
            txn.bytes_put += entry.size
        live[entry.key] = entry.size
    elif entry.tag == TAG_DELETE and entry.key in live:
        deleted[entry.key] = live.pop(entry.key)


def classify(txn: Transaction, thresholds: Thresholds) -> None:
    """Mark a transaction that deletes more than a prune plausibly does, or (nearly) everything."""
    if txn.objects_deleted and txn.deleted_data_share >= thresholds.total_share:
        txn.suspicious = True
        txn.reason = (
            f"deleted {txn.objects_deleted} of {txn.live_objects_before} live objects "
            f"({txn.deleted_data_share:.0%} of all but the manifest, {txn.bytes_deleted} bytes) in one transaction: "
            f"a deletion of {thresholds.total_share:.0%} or more of a repository is suspicious at any size"
        )
    elif txn.objects_deleted >= thresholds.min_objects and txn.deleted_share >= thresholds.max_share:
        txn.suspicious = True
        txn.reason = (
            f"deleted {txn.objects_deleted} of {txn.live_objects_before} live objects "
            f"({txn.deleted_share:.0%}, {txn.bytes_deleted} bytes) in one transaction; a prune deletes less "
            f"than {thresholds.max_share:.0%} (at least {thresholds.min_objects} objects counts)"
        )


def read_transactions_log(repo: str) -> list[tuple[int, str]]:
    """The ``transactions`` file as (number, UTC time) pairs, in order (numbers repeat after a rollback)."""
    path = os.path.join(repo, "transactions")
    pairs = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fd:
            lines = fd.read().splitlines()
    except FileNotFoundError:
        return pairs
    for line in lines:
        head, _sep, when = line.partition(", UTC time ")
        number = head.removeprefix("transaction ")
        if number.isdigit():
            pairs.append((int(number), when.strip()))
    return pairs
