"""_rollback's transaction, exhaustively: a link or a rename failing at every possible call, and a process
"killed" after every possible rename (its in-process undo skipped, then a fresh revert), leave the directory
tree exactly as it was (same files, same inodes, same contents). A stand-in repository of plain files: the
real-borg proof is tests/integration/test_rollback_faults.py."""

from __future__ import annotations

import contextlib
import os

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _rollback, _segments


def tree(root) -> dict:
    state = {}
    for top, dirs, files in os.walk(root):
        for name in dirs:
            state[os.path.relpath(os.path.join(top, name), root)] = "dir"
        for name in files:
            path = os.path.join(top, name)
            with open(path, "rb") as fd:
                state[os.path.relpath(path, root)] = (os.stat(path).st_ino, fd.read())
    return state


def segment(path, body: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fd:
        fd.write(_segments.MAGIC + body)


@pytest.fixture
def layout(tmp_path):
    """repo: segments 1-6 (5 and 6 after the target), index files; source: 1-3 shared, 4 its own, 7 in data/1."""
    repo, source = tmp_path / "repo", tmp_path / "snap"
    for n in range(1, 7):
        segment(repo / "data" / "0" / str(n), b"repo %d" % n)
    for name in ("config", "index.6", "hints.6", "integrity.6", "nonce"):
        (repo / name).write_text(name)
    (source / "data" / "0").mkdir(parents=True)
    for n in (1, 2, 3):
        os.link(repo / "data" / "0" / str(n), source / "data" / "0" / str(n))
    segment(source / "data" / "0" / "4", b"snapshot 4")
    segment(source / "data" / "1" / "7", b"snapshot 7")
    keep = {n: f"data/0/{n}" for n in (1, 2, 3, 4)} | {7: "data/1/7"}
    return {"repo": str(repo), "source": str(source), "keep": {str(k): v for k, v in keep.items()}}


def apply(plan) -> str:
    return _rollback.apply(plan, lock=contextlib.nullcontext())


def expected_after(plan) -> None:
    repo = plan["repo"]
    assert sorted(n for n, _p in _segments.segment_files(repo)) == [1, 2, 3, 4, 7]
    assert sorted(os.listdir(repo)) == ["config", "data", "nonce"]


def test_apply_swaps_exactly_the_planned_segments(layout):
    said = apply(layout)
    assert "removed 3 segment(s), restored 2" in said  # 4 (another inode), 5, 6 go; 4 and 7 come
    expected_after(layout)
    assert (
        os.stat(os.path.join(layout["repo"], "data/1/7")).st_ino
        == os.stat(os.path.join(layout["source"], "data/1/7")).st_ino
    )


def count_ops(layout) -> int:
    remove, add, index = _rollback.changes(
        layout["repo"], layout["source"], {int(k): v for k, v in layout["keep"].items()}
    )
    return len(remove) + len(add) + len(index) + 2 + 1  # config aside and back, data/1 made


def failing_at(monkeypatch, name: str, nth: int, exc: BaseException, after: bool = False) -> None:
    """The Nth link or rename of the rollback raises; ``after``: it happened first (killed before its record)."""
    real, calls = getattr(os, name), [0]

    def faulty(*args, **kwargs):
        if "grus-rollback" in str(args[0]) + str(args[1]):
            calls[0] += 1
            if calls[0] == nth:
                if after:
                    real(*args, **kwargs)
                raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, faulty)


@pytest.mark.parametrize("name", ["link", "rename"])
def test_a_failure_at_every_call_changes_nothing(layout, monkeypatch, name):
    before = tree(layout["repo"])
    total = count_ops(layout) - 1 if name == "rename" else 2  # the mkdir is not a rename; 2 links staged
    for nth in range(1, total + 1):
        with monkeypatch.context() as patch:
            failing_at(patch, name, nth, OSError(5, "injected", "x"))
            with pytest.raises(_rollback.RollbackError) as caught:
                apply(layout)
        assert caught.value.unchanged, nth
        assert "Nothing was changed" in str(caught.value) or "every change was undone" in str(caught.value)
        assert tree(layout["repo"]) == before, nth
    apply(layout)
    expected_after(layout)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs in that process."""


@pytest.mark.parametrize("after", [False, True], ids=["before-the-rename", "after-the-rename"])
def test_a_kill_at_every_rename_is_reverted_by_the_next_run(layout, monkeypatch, after):
    before = tree(layout["repo"])
    renames = count_ops(layout) - 1
    for nth in range(1, renames + 1):
        with monkeypatch.context() as patch:
            failing_at(patch, "rename", nth, Killed(), after=after)
            patch.setattr(_rollback, "_undo_after_failure", lambda repo: None)  # a killed process undoes nothing
            with pytest.raises((Killed, _rollback.RollbackError)):  # its in-process undo is skipped
                apply(layout)
        assert _rollback.pending(layout["repo"])
        said = _rollback.revert(layout["repo"])
        assert said and "change(s) undone, the repository is as it was" in said, said
        assert tree(layout["repo"]) == before, nth
    apply(layout)
    expected_after(layout)


def test_a_revert_killed_half_way_is_finished_by_the_next(layout, monkeypatch):
    before = tree(layout["repo"])
    with monkeypatch.context() as patch:
        failing_at(patch, "rename", 8, Killed())
        patch.setattr(_rollback, "_undo_after_failure", lambda repo: None)
        with pytest.raises((Killed, _rollback.RollbackError)):
            apply(layout)
    for nth in range(1, 8):  # the revert itself killed at each of its renames, then run again
        with monkeypatch.context() as patch:
            failing_at(patch, "rename", nth, Killed())
            with pytest.raises(Killed):
                _rollback.revert(layout["repo"])
        with monkeypatch.context() as patch:
            failing_at(patch, "rename", 10_000, Killed())
            assert _rollback.revert(layout["repo"])
        assert tree(layout["repo"]) == before, nth
        with monkeypatch.context() as patch:  # the same half-done rollback again, for the next nth
            failing_at(patch, "rename", 8, Killed())
            patch.setattr(_rollback, "_undo_after_failure", lambda repo: None)
            with pytest.raises((Killed, _rollback.RollbackError)):  # its in-process undo is skipped
                apply(layout)
    assert _rollback.revert(layout["repo"])
    assert tree(layout["repo"]) == before


def test_an_unreadable_or_foreign_source_is_refused_before_anything(layout):
    before = tree(layout["repo"])
    bad = os.path.join(layout["source"], "data/1/7")
    with open(bad, "wb") as fd:
        fd.write(b"not a segment")
    with pytest.raises(_rollback.RollbackError) as caught:
        apply(layout)
    assert f"{bad}: not a borg segment (no magic)" in str(caught.value) and caught.value.unchanged
    os.unlink(bad)
    with pytest.raises(_rollback.RollbackError) as caught:
        apply(layout)
    assert f"{bad}: cannot be read (No such file or directory)" in str(caught.value)
    assert tree(layout["repo"]) == before and not _rollback.pending(layout["repo"])


def test_a_work_directory_without_journal_is_only_removed(layout):
    before = tree(layout["repo"])
    os.makedirs(os.path.join(layout["repo"], "grus-rollback", "staged"))
    assert "stopped before it changed anything" in _rollback.revert(layout["repo"])
    assert tree(layout["repo"]) == before
