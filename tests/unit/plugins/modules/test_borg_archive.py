"""Unit tests for grus.backup.borg_archive with borg replaced by a fake runner (no borg runs here)."""

from __future__ import annotations

import json
import os
import time

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _borg_repo, _borg_validate, _borg_version
from ansible_collections.grus.backup.plugins.module_utils._runner import Result
from ansible_collections.grus.backup.plugins.modules import borg_archive
from conftest import borg_log_line, borg_subcommand

SECRET = "s3cret-passphrase-for-archive-tests"  # noqa: S105 - a test value
REPO = "ssh://backup@sarus.example.net/srv/borg/antigone"


subcommand = borg_subcommand
log_line = borg_log_line


def archive_id(name):
    return (name.encode().hex() * 64)[:64]


class FakeBorg:
    """Archives kept in a list; answers version, list, create, delete, prune, extract like borg 1.4 does."""

    def __init__(self):
        self.archives = []  # dicts: name, time, id
        self.items = {}  # archive name -> items for --json-lines
        self.calls = []
        self.fail = {}
        self.create_rc = 0
        self.prune_would_delete = None  # names; None: everything but the newest

    def add(self, name, day):
        self.archives.append({"name": name, "time": f"2026-11-{day:02d}T04:00:00.000000", "id": archive_id(name)})

    def __call__(self, argv, env=None, cwd=None, timeout=None, stdin_data=None, inherit_env=True, secrets=()):
        argv = list(argv)
        self.calls.append({"argv": argv, "env": dict(env or {}), "cwd": cwd})
        for secret in secrets:
            if secret and any(secret in a for a in argv):
                raise ValueError("secret in argv")
        if argv[1:] == ["--version"]:
            return Result(argv, 0, "borg 1.4.0\n", "")
        sub = subcommand(argv)
        if sub in self.fail:
            return self.fail[sub]
        return getattr(self, "do_" + sub)(argv, cwd)

    @property
    def subcommands(self):
        return [subcommand(c["argv"]) if c["argv"][1:] != ["--version"] else "version" for c in self.calls]

    def calls_of(self, sub):
        return [c for c in self.calls if c["argv"][1:] != ["--version"] and subcommand(c["argv"]) == sub]

    def do_list(self, argv, cwd):
        target = argv[argv.index("--") + 1]
        if "::" in target:
            name = target.split("::", 1)[1]
            if name not in {a["name"] for a in self.archives}:
                return Result(argv, 31, "", log_line(f"Archive {name} does not exist", "Archive.DoesNotExist"))
            return Result(argv, 0, "".join(json.dumps(i) + "\n" for i in self.items.get(name, [])), "")
        data = {
            "repository": {"id": "c" * 64, "location": target},
            "encryption": {"mode": "keyfile-blake2"},
            "archives": self.archives,
        }
        return Result(argv, 0, json.dumps(data), "")

    def do_create(self, argv, cwd):
        name = argv[argv.index("--") + 1].split("::", 1)[1].replace("{now}", "2026-11-23T04:00")
        if "--dry-run" not in argv and name in {a["name"] for a in self.archives}:
            return Result(argv, 30, "", log_line(f"Archive {name} already exists", "Archive.AlreadyExists"))
        if "--dry-run" in argv:
            paths = argv[argv.index("--") + 2 :]
            return Result(
                argv,
                0,
                "",
                "".join(json.dumps({"type": "file_status", "status": "-", "path": p}) + "\n" for p in paths),
            )
        self.add(name, 23)
        stats = {"original_size": 10, "compressed_size": 9, "deduplicated_size": 9, "nfiles": 1}
        out = {
            "archive": {
                "name": name,
                "id": archive_id(name),
                "start": "2026-11-23T04:00:00.000000",
                "end": "2026-11-23T04:00:01.000000",
                "duration": 1.0,
                "stats": stats,
            }
        }
        err = ""
        if self.create_rc:
            err = log_line("/srv/a: file changed while we backed it up", "FileChangedWarning", "WARNING")
        return Result(argv, self.create_rc, json.dumps(out), err)

    def do_delete(self, argv, cwd):
        targets = argv[argv.index("--") + 1 :]
        # REPO::NAME (one archive) or REPO NAME... (the names a prune planned)
        names = {targets[0].split("::", 1)[1]} if "::" in targets[0] else set(targets[1:])
        assert names, "borg delete without an archive deletes the repository"
        self.archives = [a for a in self.archives if a["name"] not in names]
        return Result(argv, 0, "", "")

    def do_prune(self, argv, cwd):
        ordered = sorted(self.archives, key=lambda a: a["time"], reverse=True)
        doomed = self.prune_would_delete if self.prune_would_delete is not None else [a["name"] for a in ordered[1:]]
        lines = []
        for n, archive in enumerate(ordered, 1):
            tail = f"{archive['name']:<36} Mon, 2026-11-01 04:00:00 [{archive['id']}]"
            if archive["name"] in doomed:
                action = "Would prune:" if "--dry-run" in argv else f"Pruning archive ({n}/{len(doomed)}):"
            else:
                action = f"Keeping archive (rule: daily #{n}):"
            lines.append(log_line(f"{action:<44} {tail}", levelname="INFO", name="borg.output.list"))
        if "--dry-run" not in argv:
            self.archives = [a for a in self.archives if a["name"] not in doomed]
        return Result(argv, 0, "", "".join(lines))

    def do_extract(self, argv, cwd):
        name = argv[argv.index("--") + 1].split("::", 1)[1]
        if name not in {a["name"] for a in self.archives}:
            return Result(argv, 31, "", log_line(f"Archive {name} does not exist", "Archive.DoesNotExist"))
        patterns = argv[argv.index("--") + 2 :]
        unmatched = [p for p in patterns if not any(i["path"].startswith(p) for i in self.items.get(name, []))]
        if "--dry-run" not in argv:
            strip = int(argv[argv.index("--strip-components") + 1]) if "--strip-components" in argv else 0
            for item in self.items[name]:
                target = _borg_validate.strip_path(item["path"], strip)
                if not target or (patterns and not any(item["path"].startswith(p) for p in patterns)):
                    continue
                path = os.path.join(cwd, target)
                if item["type"] == "d":
                    os.makedirs(path, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "w") as handle:
                        handle.write("x" * item["size"])
                    mtime = time.mktime(time.strptime(item["mtime"][:19], "%Y-%m-%dT%H:%M:%S"))
                    os.utime(path, (mtime, mtime))
        if unmatched:
            warnings = "".join(
                log_line(f"Include pattern '{p}' never matched.", "IncludePatternNeverMatchedWarning", "WARNING")
                for p in unmatched
            )
            return Result(argv, 101, "", warnings)
        return Result(argv, 0, "", "")


@pytest.fixture
def fake(monkeypatch):
    borg = FakeBorg()
    monkeypatch.setattr(_borg_repo, "run", borg)
    monkeypatch.setattr(_borg_version, "run", borg)
    monkeypatch.setattr(_borg_version, "VERSION_CACHE", "")  # never write to the home of whoever runs the tests

    def fake_stream(argv, on_line, env=None, cwd=None, inherit_env=True, secrets=()):
        result = borg(argv, env=env, cwd=cwd, secrets=secrets)
        for line in result.stdout.splitlines(keepends=True):
            on_line(line)
        return Result(result.argv, result.rc, "", result.stderr)

    monkeypatch.setattr(_borg_repo, "stream", fake_stream)
    yield borg
    for call in borg.calls:
        assert not any(SECRET in arg for arg in call["argv"]), call["argv"]
        if call["argv"][1:] != ["--version"]:
            assert call["env"]["BORG_PASSPHRASE"] == SECRET


@pytest.fixture
def run_module(call_module):
    def runner(args, check=False, diff=False, names_repo=True):
        args = dict({"repo": REPO, "passphrase": SECRET}, **args)
        result = call_module(borg_archive.main, args, check=check, diff=diff, secret=SECRET)
        if result["failed"] and names_repo:
            assert REPO in result["msg"], result["msg"]
        return result

    return runner


# ---------------------------------------------------------------------- present


def test_missing_source_fails_before_borg_runs(fake, run_module, tmp_path):
    result = run_module({"name": "a", "paths": [str(tmp_path), str(tmp_path / "gone")]})
    assert result["failed"] and result["cause"] == "source_missing"
    assert str(tmp_path / "gone") in result["msg"]
    assert fake.calls == []


def test_create_builds_the_command(fake, run_module, tmp_path):
    result = run_module(
        {
            "name": "nightly",
            "paths": [str(tmp_path)],
            "exclude": ["*.tmp"],
            "exclude_if_present": [".nobackup"],
            "one_file_system": True,
            "files_cache": "mtime,size",
            "comment": "by ansible",
            "timestamp": "2026-11-23T04:00:00",
            "lock_wait": 5,
        }
    )
    assert result["changed"] is True and not result["failed"]
    assert result["archive"]["name"] == "nightly" and result["archive"]["stats"]["nfiles"] == 1
    # no listing first: borg itself refuses an existing name before reading any file
    assert fake.subcommands == ["version", "create"]
    argv = fake.calls_of("create")[0]["argv"]
    assert argv[:4] == ["/usr/bin/borg", "--log-json", "--lock-wait", "5"]
    for option, value in [
        ("--compression", "lz4"),
        ("--files-cache", "mtime,size"),
        ("--exclude", "*.tmp"),
        ("--exclude-if-present", ".nobackup"),
        ("--comment", "by ansible"),
        ("--timestamp", "2026-11-23T04:00:00"),
    ]:
        assert argv[argv.index(option) + 1] == value
    assert "--one-file-system" in argv and "--json" in argv
    assert argv[-2:] == [f"{REPO}::nightly", str(tmp_path)]


def test_existing_fixed_name_is_ok_not_a_second_archive(fake, run_module, tmp_path):
    fake.add("nightly", 22)
    result = run_module({"name": "nightly", "paths": [str(tmp_path)]})
    assert result["changed"] is False and result["archive"]["name"] == "nightly"
    assert result["archive"]["time"] == "2026-11-22T04:00:00.000000" and not result["failed"]
    # borg refused the name (rc 30), then the existing archive was read for the result
    assert fake.subcommands == ["version", "create", "list"]
    assert [a["name"] for a in fake.archives] == ["nightly"]
    result = run_module({"name": "nightly", "paths": [str(tmp_path)]}, check=True)
    assert result["changed"] is False and fake.subcommands[-1] == "list"


def test_placeholder_name_always_creates(fake, run_module, tmp_path):
    fake.add("db-2026-11-22T04:00", 22)
    result = run_module({"name": "db-{now}", "paths": [str(tmp_path)]})
    assert result["changed"] is True
    assert fake.subcommands == ["version", "create"]


def test_check_mode_creates_nothing_and_diff_uses_dry_run(fake, run_module, tmp_path):
    result = run_module({"name": "a", "paths": [str(tmp_path)]}, check=True)
    assert result["changed"] is True and result["archive"] is None
    assert "create" not in fake.subcommands
    result = run_module({"name": "a", "paths": [str(tmp_path)]}, check=True, diff=True)
    creates = fake.calls_of("create")
    assert len(creates) == 1 and "--dry-run" in creates[0]["argv"] and "--list" in creates[0]["argv"]
    assert str(tmp_path) in result["diff"]["after"]
    assert fake.archives == []


def test_create_warning_is_surfaced(fake, run_module, tmp_path):
    fake.create_rc = 1
    result = run_module({"name": "a", "paths": [str(tmp_path)]})
    assert result["changed"] and not result["failed"]
    assert result["warnings"] == [f"borg warning on repository {REPO}: /srv/a: file changed while we backed it up"]


def test_create_failure_lock_timeout(fake, run_module, tmp_path):
    fake.fail["create"] = Result([], 73, "", log_line("Failed to create/acquire the lock (timeout).", "LockTimeout"))
    result = run_module({"name": "a", "paths": [str(tmp_path)], "lock_wait": 1})
    assert result["failed"] and result["cause"] == "lock_timeout"
    assert "lock_wait seconds" in result["msg"] and fake.archives == []


# ---------------------------------------------------------------------- absent


def test_absent(fake, run_module):
    fake.add("old", 1)
    assert run_module({"name": "old", "state": "absent"}, check=True)["changed"] is True
    assert fake.calls_of("delete") == []
    result = run_module({"name": "old", "state": "absent"})
    assert result["changed"] is True
    assert fake.calls_of("delete")[0]["argv"][-2:] == ["--", f"{REPO}::old"]
    assert any("only logical" in w for w in result["warnings"])  # remote: cannot tell, so says when
    assert run_module({"name": "old", "state": "absent"})["changed"] is False
    assert len(fake.calls_of("delete")) == 1


def test_absent_on_local_append_only_repo_warns(fake, run_module, tmp_path):
    (tmp_path / "config").write_text("[repository]\nappend_only = 1\n")
    fake.add("old", 1)
    result = run_module({"name": "old", "state": "absent", "repo": str(tmp_path)})
    assert result["changed"] and result["append_only"] is True
    assert any("is append-only: the delete is only logical" in w for w in result["warnings"])


def test_absent_refuses_placeholder(fake, run_module):
    result = run_module({"name": "x-{now}", "state": "absent"})
    assert result["failed"] and fake.calls == []


# ---------------------------------------------------------------------- pruned


@pytest.mark.parametrize("bad", [{"keep_within": "14days"}, {"keep_daily": -1}, {}, {"keep_daily": 0}])
def test_malformed_retention_fails_before_borg(fake, run_module, bad):
    result = run_module(dict({"state": "pruned"}, **bad))
    assert result["failed"] and result["cause"] == "invalid_input"
    assert fake.calls == []


def test_prune_plan_and_apply(fake, run_module):
    for day in (1, 2, 3):
        fake.add(f"n-{day}", day)
    result = run_module({"state": "pruned", "keep_daily": 1, "match_archives": "n-"}, check=True, diff=True)
    assert result["changed"] is True
    assert [a["name"] for a in result["pruned"]] == ["n-2", "n-1"]
    assert [a["name"] for a in result["kept"]] == ["n-3"]
    assert result["diff"]["before"] == "n-1\nn-2\nn-3\n" and result["diff"]["after"] == "n-3\n"
    assert len(fake.archives) == 3
    prunes = fake.calls_of("prune")
    assert len(prunes) == 1 and "--dry-run" in prunes[0]["argv"]
    assert prunes[0]["argv"][prunes[0]["argv"].index("--glob-archives") + 1] == "n-*"

    result = run_module({"state": "pruned", "keep_daily": 1, "match_archives": "n-"})
    assert result["changed"] is True and [a["name"] for a in result["pruned"]] == ["n-2", "n-1"]
    assert [a["name"] for a in fake.archives] == ["n-3"]
    # the dry run plans, then exactly the planned names are deleted (no second prune)
    assert ["--dry-run" in c["argv"] for c in fake.calls_of("prune")] == [True, True]
    deletes = fake.calls_of("delete")
    assert len(deletes) == 1 and deletes[0]["argv"][-4:] == ["--", REPO, "n-2", "n-1"]
    assert all("compact" not in c["argv"] for c in fake.calls)

    result = run_module({"state": "pruned", "keep_daily": 1, "match_archives": "n-"})
    assert result["changed"] is False and result["pruned"] == []


def test_prune_deletes_only_what_the_plan_saw(fake, run_module):
    """An archive that crosses the retention boundary between the plan and the deletion stays."""
    for day in (1, 2, 3):
        fake.add(f"n-{day}", day)
    real_prune = fake.do_prune

    def prune_then_age(argv, cwd):
        out = real_prune(argv, cwd)
        fake.prune_would_delete = ["n-1", "n-2"]  # what a second prune would now also want
        return out

    fake.prune_would_delete = ["n-1"]
    fake.do_prune = prune_then_age
    result = run_module({"state": "pruned", "keep_daily": 2, "max_deletions": 1, "match_archives": "n-"})
    assert result["changed"] is True and [a["name"] for a in result["pruned"]] == ["n-1"]
    assert [a["name"] for a in fake.archives] == ["n-2", "n-3"]


def test_max_deletions_guard_deletes_nothing(fake, run_module):
    for day in range(1, 6):
        fake.add(f"n-{day}", day)
    result = run_module({"state": "pruned", "keep_last": 1, "max_deletions": 2, "match_archives": "n-"})
    assert result["failed"] and result["cause"] == "max_deletions"
    assert "would delete 4 archives" in result["msg"]
    assert [("--dry-run" in c["argv"]) for c in fake.calls_of("prune")] == [True]
    assert fake.calls_of("delete") == [] and len(fake.archives) == 5


# ---------------------------------------------------------------------- extracted


def items(mtime="2026-11-20T10:00:00.000000"):
    return [
        {"path": "srv", "type": "d", "size": 0, "mtime": mtime},
        {"path": "srv/data", "type": "d", "size": 0, "mtime": mtime},
        {"path": "srv/data/a.txt", "type": "-", "size": 5, "mtime": mtime},
        {"path": "srv/data/b.txt", "type": "-", "size": 7, "mtime": mtime},
    ]


@pytest.mark.parametrize(
    ("extra", "cause"),
    [
        ({"dest": "/"}, "unsafe_dest"),
        ({"dest": "/tmp/../"}, "unsafe_dest"),
        ({"paths": ["../../etc"]}, "invalid_input"),
        ({"paths": ["/etc"]}, "invalid_input"),
        ({"strip_components": -1}, "invalid_input"),
    ],
)
def test_extract_refuses_before_borg(fake, run_module, tmp_path, extra, cause):
    fake.add("a", 1)
    result = run_module(dict({"name": "a", "state": "extracted", "dest": str(tmp_path / "out")}, **extra))
    assert result["failed"] and result["cause"] == cause
    assert fake.calls == []


def test_extract_into_a_file_is_refused(fake, run_module, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = run_module({"name": "a", "state": "extracted", "dest": str(target)})
    assert result["failed"] and "not a directory" in result["msg"]
    assert fake.calls == [] and target.read_text() == "x"


def test_extract_round(fake, run_module, tmp_path):
    fake.add("a", 1)
    fake.items["a"] = items()
    dest = tmp_path / "restore"
    args = {"name": "a", "state": "extracted", "dest": str(dest), "strip_components": 1}
    result = run_module(args, check=True, diff=True)
    assert result["changed"] and not dest.exists()
    assert [("--dry-run" in c["argv"]) for c in fake.calls_of("extract")] == [True]
    assert result["diff"]["after"] == "data\ndata/a.txt\ndata/b.txt\n"
    before = len(fake.calls)
    result = run_module(args)
    assert result["changed"] and result["files_restored"] == 2 and result["bytes_restored"] == 12
    assert result["restore_dir"] == str(dest) and result["archive"] == {"name": "a"}
    # into an empty dest: borg extract alone, no listing before or after
    assert fake.subcommands[before:] == ["version", "extract"]
    call = fake.calls_of("extract")[-1]
    assert call["cwd"] == str(dest)
    assert call["argv"][call["argv"].index("--strip-components") + 1] == "1"
    assert (dest / "data" / "b.txt").read_text() == "x" * 7
    assert oct(dest.stat().st_mode & 0o777) == "0o700"
    again = run_module(args)
    assert again["changed"] is False and again["files_restored"] == 0
    assert len(fake.calls_of("extract")) == 2
    assert run_module(args, check=True)["changed"] is False


def test_extract_into_non_empty_dest_needs_force(fake, run_module, tmp_path):
    fake.add("a", 1)
    fake.items["a"] = items()
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "other").write_text("keep")
    args = {"name": "a", "state": "extracted", "dest": str(dest)}
    result = run_module(args)
    assert result["failed"] and result["cause"] == "dest_not_empty"
    assert fake.calls_of("extract") == []
    result = run_module(dict(args, force=True))
    assert result["changed"] and (dest / "srv/data/a.txt").exists() and (dest / "other").read_text() == "keep"


def test_extract_unknown_archive(fake, run_module, tmp_path):
    result = run_module({"name": "nope", "state": "extracted", "dest": str(tmp_path / "o")})
    assert result["failed"] and result["cause"] == "archive_missing"
    assert "archive nope does not exist in repository" in result["msg"]
    assert not (tmp_path / "o").exists()


def test_extract_paths_matching_nothing(fake, run_module, tmp_path):
    fake.add("a", 1)
    fake.items["a"] = []
    result = run_module({"name": "a", "state": "extracted", "dest": str(tmp_path / "o"), "paths": ["srv/x"]})
    assert result["failed"] and result["cause"] == "nothing_matched"
    assert not (tmp_path / "o").exists()  # the directory the call made is gone again
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_module({"name": "a", "state": "extracted", "dest": str(empty), "paths": ["srv/x"]})
    assert result["failed"] and result["cause"] == "nothing_matched"
    assert empty.is_dir() and not list(empty.iterdir())  # an existing empty dest is left as it was


# ---------------------------------------------------------------------- listed


def test_listed(fake, run_module):
    fake.add("a", 1)
    fake.add("b", 2)
    fake.items["a"] = items()
    result = run_module({"state": "listed"})
    assert result["changed"] is False and [a["name"] for a in result["archives"]] == ["a", "b"]
    result = run_module({"state": "listed", "name": "a", "max_files": 3, "paths": ["srv"]})
    assert result["files_total"] == 4 and len(result["files"]) == 3 and result["files_truncated"] is True
    call = fake.calls_of("list")[-1]["argv"]
    assert call[-2:] == [f"{REPO}::a", "srv"]
    result = run_module({"state": "listed", "name": "a", "max_files": 0})
    assert len(result["files"]) == 4 and result["files_truncated"] is False
    assert run_module({"state": "listed", "name": "zzz"})["cause"] == "archive_missing"


def test_state_requirements(fake, run_module):
    # Ansible's own argument checks, before the module code runs.
    assert "missing: dest" in run_module({"state": "extracted", "name": "a"}, names_repo=False)["msg"]
    assert "missing: name" in run_module({"state": "absent"}, names_repo=False)["msg"]
    assert fake.calls == []


# ---------------------------------------------------------------------- bad input (issue 16 item 7)


def test_prune_without_match_archives_is_refused_and_star_is_the_opt_in(fake, run_module):
    fake.add("antigone-1", 1)
    fake.add("balearica-1", 2)
    fake.add("antigone-2", 3)
    result = run_module({"state": "pruned", "keep_last": 1})
    assert result["failed"] and result["cause"] == "invalid_input"
    assert "state=pruned needs match_archives" in result["msg"] and "every prefix" in result["msg"]
    assert fake.calls == [] and len(fake.archives) == 3
    everything = run_module({"state": "pruned", "keep_last": 1, "match_archives": "*"}, check=True)
    assert not everything["failed"] and everything["changed"]
    assert all("--glob-archives" in c["argv"] and "*" in c["argv"] for c in fake.calls_of("prune"))
    assert len(fake.archives) == 3  # check mode


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"name": "", "paths": ["/"]}, "name is empty"),
        ({"name": "", "state": "absent"}, "name is empty"),
        ({"name": " ", "state": "extracted", "dest": "/tmp/x"}, "name is empty"),
        ({"name": "", "state": "listed"}, "leave name out to list the archives"),
        ({"name": "a", "paths": ["/"], "timestamp": "2099-01-01T00:00:00"}, "lies in the future"),
        ({"name": "a", "paths": ["/"], "compression": "zstd,30"}, "invalid compression 'zstd,30'"),
        ({"name": "a", "paths": ["/"], "compression": "gzip"}, "unknown algorithm 'gzip'"),
        ({"name": "a", "paths": ["/"], "files_cache": "ctime,inode"}, "invalid files_cache 'ctime,inode'"),
        ({"name": "a", "state": "listed", "max_files": -1}, "max_files=-1 is negative"),
        ({"name": "a", "paths": ["/"], "lock_wait": -1}, "lock_wait=-1 is negative"),
        ({"state": "listed", "lock_wait": -10}, "lock_wait=-10 is negative"),
        ({"state": "pruned", "keep_within": "0d", "match_archives": "a-"}, "zero interval"),
    ],
)
def test_bad_input_is_refused_before_borg_runs(fake, run_module, args, fragment):
    result = run_module(args)
    assert result["failed"] and result["cause"] == "invalid_input", result
    assert fragment in result["msg"]
    assert fake.calls == []


def test_an_empty_repo_is_refused_before_borg_runs(fake, call_module, monkeypatch):
    monkeypatch.setenv("BORG_REPO", "/srv/borg/someone-elses")
    result = call_module(borg_archive.main, {"repo": "", "passphrase": SECRET, "state": "listed"}, secret=SECRET)
    assert result["failed"] and result["cause"] == "invalid_input"
    assert "repo is empty" in result["msg"] and "someone-elses" not in result["msg"]
    assert fake.calls == []
