# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore drill's sample: which files, their hashes when archived, and the comparison after a restore.

layer 0: may import nothing of grus.backup (standard library only).

Private to grus.backup. Right before ``borg create`` the backup job picks a bounded sample of the
export (the fixed canaries, then random regular files up to a count and a byte cap), hashes each
(SHA-256) and, once the archive exists, records the sample under the archive's name in
``<state_dir>/drill-records.json`` (the last ``RECORDS_KEPT`` archives, written atomically, mode 0600).
The drill (``_restore_drill``) extracts exactly those paths of that archive and compares: so it proves
the archive holds the data as it was when archived, not as the export is today.

A file whose size or modification time (in ns) in the archive differs from the record changed between
the sampling and borg reading it: it is counted as ``changed`` (not verified, not a failure). A file
with the recorded size and time but other bytes is a ``mismatch``; a sampled file that the restore did
not bring back is ``missing``. Both fail the drill, and so does a drill that verified nothing.

The record also holds each file's owner and mode (``uid``, ``gid``, ``mode``: the whole ``st_mode``, so
setuid, setgid and sticky bits count). A restored file whose owner or mode differ is an ``attributes``
failure, checked before the size and time: a restore that cannot set owners or modes (a sandbox that
forbids chown, or the setuid bit, as the drill unit's once did) leaves the modification time unset too,
and would otherwise pass for a file that merely changed. Records written before these keys existed are
compared on what they hold. A chmod or chown in the seconds between sampling and borg reading the file
also shows as ``attributes``: the next archive's drill tells the two apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import tempfile
import time

RECORDS_FILE = "drill-records.json"
RECORDS_KEPT = 6  # one day of backups: the drill takes the newest archive that has a record
RECORD_FORMAT = 1
DEFAULT_SAMPLE_FILES = 20
DEFAULT_SAMPLE_BYTES = 64 * 1024**2
CANDIDATES_PER_FILE = 4  # random candidates drawn per wanted file, so the byte cap can skip big ones
HASH_BLOCK = 1024**2

PASSED = "passed"
# Every result of a drill, the bad ones in the order they are told (the first that applies wins).
RESULTS = (PASSED, "no_record", "error", "damaged", "missing", "mismatch", "attributes", "nothing_verified")
ATTRIBUTES = ("uid", "gid", "mode")  # compared after a restore when the record holds them


class SampleError(Exception):
    """A sample or record that cannot be used; the message names the problem."""


def check_relative(path) -> str:
    """A path relative to the export (a canary, a recorded path): normalised; absolute or ``..`` refused."""
    text = str(path or "").strip()
    normal = os.path.normpath(text) if text else ""
    if not text or os.path.isabs(text) or normal == "." or normal.split(os.sep, maxsplit=1)[0] == "..":
        raise SampleError(f"{path!r} is not a path relative to the export (no leading /, no ..)")
    return normal


def archive_path(export: str, rel: str) -> str:
    """Where borg stores ``<export>/<rel>``: the absolute path without its leading ``/``."""
    return os.path.normpath(os.path.join(export, rel)).lstrip("/")


def file_digest(path: str) -> tuple:
    """``(sha256 hex, bytes read)`` of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def measure(export: str, rel: str) -> dict | None:
    """The record of one regular file (``None``: not a regular file, or it changed while it was hashed)."""
    path = os.path.join(export, rel)
    before = os.lstat(path)
    if not stat.S_ISREG(before.st_mode):
        return None
    sha256, _read = file_digest(path)
    after = os.lstat(path)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return None
    return {
        "path": rel,
        "size": after.st_size,
        "mtime_ns": after.st_mtime_ns,
        "sha256": sha256,
        "uid": after.st_uid,
        "gid": after.st_gid,
        "mode": after.st_mode,
    }


def candidates(export: str, count: int, rng, skip=lambda _path: False, leave_out=()) -> list:
    """Up to ``count`` regular files under ``export`` (relative paths), drawn uniformly (reservoir).

    Symlinks are not followed; a directory or file for which ``skip(path)`` is true (the job's excludes)
    is left out, and so are ``leave_out`` (the canaries). One pass, no stat of files not drawn.
    """
    chosen: list = []
    seen = 0
    left_out = set(leave_out)
    for dirpath, dirnames, filenames in os.walk(export):
        dirnames[:] = sorted(d for d in dirnames if not skip(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, export)
            if rel in left_out or skip(path) or os.path.islink(path):
                continue
            seen += 1
            if len(chosen) < count:
                chosen.append(rel)
            else:
                at = rng.randrange(seen)
                if at < count:
                    chosen[at] = rel
    return chosen


def _skipped(export: str, rel: str, skip) -> bool:
    """Whether ``skip`` (the excludes) leaves out ``<export>/<rel>`` or any directory above it in the export."""
    parts = rel.split(os.sep)
    return any(skip(os.path.join(export, *parts[:depth])) for depth in range(1, len(parts) + 1))


def take_sample(
    export: str, canaries=(), max_files=DEFAULT_SAMPLE_FILES, max_bytes=DEFAULT_SAMPLE_BYTES, skip=None, rng=None
):
    """The drill's sample of ``export``: ``{"export", "files": [...], "bytes", "problems": [...]}``.

    Every canary is in it (a missing, excluded, non-regular or changing canary is a problem, which the
    job reports as a warning); then up to ``max_files`` random regular files, each only while the
    sample's total stays within ``max_bytes``.
    """
    skip = skip or (lambda _path: False)
    rng = rng or random.SystemRandom()
    files, problems = [], []
    total = 0
    rels = []
    for given in canaries:
        rel = check_relative(given)
        rels.append(rel)
        try:
            entry = None if _skipped(export, rel, skip) else measure(export, rel)
        except OSError as exc:
            problems.append(f"drill canary {rel} cannot be read in {export}: {exc.strerror or exc}")
            continue
        if entry is None:
            problems.append(
                f"drill canary {rel} in {export} is excluded from the backup, not a regular file, or changed while "
                "it was hashed; it is not in this archive's drill record"
            )
            continue
        entry["canary"] = True
        files.append(entry)
        total += entry["size"]
    drawn = candidates(export, max(0, max_files) * CANDIDATES_PER_FILE, rng, skip, leave_out=rels)
    rng.shuffle(drawn)
    taken = 0
    for rel in drawn:
        if taken >= max_files:
            break
        try:
            size = os.lstat(os.path.join(export, rel)).st_size
            if total + size > max_bytes:
                continue
            entry = measure(export, rel)
        except OSError:
            continue  # gone since the walk: a sync still moving things; another file will do
        if entry is None or total + entry["size"] > max_bytes:
            continue
        files.append(entry)
        total += entry["size"]
        taken += 1
    return {"export": os.path.normpath(export), "files": files, "bytes": total, "problems": problems}


# ---- the record on disk -----------------------------------------------------------------------------


def records_path(state_dir: str) -> str:
    return os.path.join(state_dir, RECORDS_FILE)


def read_records(state_dir: str) -> list:
    """The recorded samples, oldest first; ``[]`` when there is no file. A garbled file is an error."""
    path = records_path(state_dir)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise SampleError(f"cannot read the drill records {path}: {exc}") from exc
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) and r.get("archive") for r in records):
        raise SampleError(f"the drill records {path} are not in the expected format")
    return records


def write_records(state_dir: str, records: list) -> None:
    """Atomically (temp file, fsync, rename) and root-only (0600, in a 0700 directory)."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-drill-", dir=state_dir)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"format": RECORD_FORMAT, "records": records}, handle, indent=1, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, records_path(state_dir))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def record_sample(state_dir: str, archive: str, sample: dict, now=None, keep=RECORDS_KEPT) -> dict:
    """Add ``archive``'s sample to the records (replacing one of the same name), keep the last ``keep``."""
    try:
        records = read_records(state_dir)
    except SampleError:
        records = []  # a garbled file is replaced: the new record is what the next drill needs
    record = {
        "archive": archive,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "export": sample["export"],
        "files": sample["files"],
    }
    records = [r for r in records if r.get("archive") != archive] + [record]
    write_records(state_dir, records[-keep:])
    return record


# ---- the comparison after a restore -------------------------------------------------------------------


def compare(record: dict, root: str) -> dict:
    """Compare the files restored under ``root`` (borg's layout: ``root/<export without />/<path>``).

    Returns the paths verified, with wrong attributes (owner or mode differ from the record; ``attribute_
    details`` says how), changed (size or mtime differ: changed between sampling and archiving), mismatched
    (same size and time, other bytes) and missing, and the bytes read.
    """
    outcome = {
        "verified": [],
        "attributes": [],
        "attribute_details": [],
        "changed": [],
        "mismatch": [],
        "missing": [],
        "bytes": 0,
    }
    for entry in record.get("files", []):
        rel = check_relative(entry.get("path"))
        path = os.path.join(root, archive_path(record["export"], rel))
        try:
            st = os.lstat(path)
        except OSError:
            outcome["missing"].append(rel)
            continue
        if not stat.S_ISREG(st.st_mode):
            outcome["missing"].append(rel)
            continue
        wrong = attribute_differences(entry, st)
        if wrong:
            outcome["attributes"].append(rel)
            outcome["attribute_details"].append(f"{rel}: {wrong}")
            continue
        if (st.st_size, st.st_mtime_ns) != (entry.get("size"), entry.get("mtime_ns")):
            outcome["changed"].append(rel)
            continue
        try:
            sha256, read = file_digest(path)
        except OSError:
            outcome["missing"].append(rel)
            continue
        outcome["bytes"] += read
        outcome["verified" if sha256 == entry.get("sha256") else "mismatch"].append(rel)
    return outcome


def attribute_differences(entry: dict, st) -> str:
    """How a restored file's owner and mode differ from the record ("" when they agree or were not recorded)."""
    found = {"uid": st.st_uid, "gid": st.st_gid, "mode": st.st_mode}
    wrong = []
    for key in ATTRIBUTES:
        if key in entry and entry[key] != found[key]:  # absent: a record from before owners and modes
            wrong.append(f"{key} {_shown(key, found[key])} (recorded {_shown(key, entry[key])})")
    return ", ".join(wrong)


def _shown(key: str, value) -> str:
    return f"{value:o}" if key == "mode" and isinstance(value, int) else str(value)


def verdict(outcome: dict) -> str:
    """The drill's result from a comparison: missing, mismatch, attributes, nothing_verified, or passed."""
    if outcome["missing"]:
        return "missing"
    if outcome["mismatch"]:
        return "mismatch"
    if outcome.get("attributes"):
        return "attributes"
    if not outcome["verified"]:
        return "nothing_verified"
    return PASSED
