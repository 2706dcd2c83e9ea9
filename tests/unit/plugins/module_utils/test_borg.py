"""Unit tests for the borg module utilities (_borg_*.py, _argspec, _restore): argv and env building, the failure
table, parsers, validators, the connection and its operations.

The runner is replaced by a fake that records what it was asked to run; no borg runs here.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml
from ansible_collections.grus.backup.plugins.doc_fragments.borg import ModuleDocFragment
from ansible_collections.grus.backup.plugins.module_utils import (
    _borg_argv,
    _borg_failures,
    _borg_parse,
    _borg_repo,
    _borg_validate,
    _borg_version,
    _restore,
)
from ansible_collections.grus.backup.plugins.module_utils._runner import CommandNotFound, Result

SECRET = "correct-horse-battery-staple-42"  # noqa: S105 - a test value
REPO = "ssh://backup@sarus.example.net:2222/srv/borg/antigone"


class FakeRunner:
    """Records every call; answers with a queue of Results (or raises a queued exception)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, argv, env=None, cwd=None, timeout=None, stdin_data=None, inherit_env=True, secrets=()):
        self.calls.append({"argv": list(argv), "env": dict(env or {}), "cwd": cwd, "secrets": tuple(secrets)})
        # The real runner's guarantee, kept by the fake so that tests see it.
        for secret in secrets:
            if secret and any(secret in arg for arg in argv):
                raise ValueError("refusing to run: a secret value appears in the command line")
        answer = self.answers.pop(0) if self.answers else Result(argv, 0, "", "")
        if isinstance(answer, Raise):
            raise answer.error
        return answer


class Raise:
    """A queued answer that makes the fake runner raise instead of returning."""

    def __init__(self, error: Exception):
        self.error = error


def log_line(message, levelname="ERROR", msgid=None, name="borg.archiver"):
    entry = {"type": "log_message", "time": time.time(), "message": message, "levelname": levelname, "name": name}
    if msgid:
        entry["msgid"] = msgid
    return json.dumps(entry)


def result(rc=0, stdout="", stderr_lines=(), timed_out=False):
    return Result(["borg"], rc, stdout, "\n".join(stderr_lines) + "\n", timed_out=timed_out)


def replay(runner):
    """A stand-in for ``_runner.stream``: asks the fake runner, then hands its stdout over line by line."""

    def streamer(argv, on_line, env=None, cwd=None, secrets=()):
        out = runner(argv, env=env, cwd=cwd, secrets=secrets)
        for line in out.stdout.splitlines(keepends=True):
            on_line(line)
        return Result(out.argv, out.rc, "", out.stderr, timed_out=out.timed_out)

    return streamer


def conn(runner=None, **kwargs):
    kwargs.setdefault("passphrase", SECRET)
    return _borg_repo.BorgRepo(REPO, runner=runner, streamer=replay(runner) if runner else None, **kwargs)


# ------------------------------------------------------------------ versions


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("borg 1.4.0\n", (1, 4, 0)),
        ("borg 1.2.8", (1, 2, 8)),
        ("borg-linux64 1.2.9", (1, 2, 9)),
        ("borg 2.0.0b14", (2, 0, 0)),
    ],
)
def test_parse_borg_version(text, version):
    assert _borg_version.parse_borg_version(text) == version


def test_parse_borg_version_garbage():
    with pytest.raises(_borg_failures.BorgError):
        _borg_version.parse_borg_version("command not found")


@pytest.mark.parametrize("version", [(1, 4, 0), (1, 4, 3), (1, 4, 5), (1, 9, 0)])
def test_supported_versions(version):
    _borg_version.check_borg_version(version)


@pytest.mark.parametrize("version", [(1, 3, 9), (1, 2, 8), (1, 2, 4), (1, 1, 18), (1, 0, 13)])
def test_old_borg_refused_naming_the_cve(version):
    with pytest.raises(_borg_failures.BorgError) as err:
        _borg_version.check_borg_version(version)
    assert "CVE-2023-36811" in str(err.value)
    assert "1.4.0" in str(err.value)
    assert err.value.cause == "unsupported_version"


def test_borg2_refused():
    with pytest.raises(_borg_failures.BorgError, match="not supported"):
        _borg_version.check_borg_version((2, 0, 0))


def test_borg_version_runs_version_only():
    runner = FakeRunner(result(0, "borg 1.4.0\n"))
    assert _borg_version.borg_version("/usr/bin/borg", runner=runner) == "1.4.0"
    assert runner.calls[0]["argv"] == ["/usr/bin/borg", "--version"]


def test_borg_version_too_old_via_runner():
    with pytest.raises(_borg_failures.BorgError, match="CVE-2023-36811"):
        _borg_version.borg_version(runner=FakeRunner(result(0, "borg 1.2.4\n")))


def test_borg_missing():
    with pytest.raises(_borg_failures.BorgError) as err:
        _borg_version.borg_version(runner=FakeRunner(Raise(CommandNotFound("borg"))))
    assert err.value.cause == "borg_missing"


# ------------------------------------------------------------------ environment


def test_env_passphrase_only_in_env_and_prompts_answered_no():
    env = _borg_argv.borg_env(
        passphrase=SECRET,
        passcommand="cat /x",
        host_id="antigone@1",
        keys_dir="/k",
        base_dir="/b",
        remote_path="/usr/local/bin/borg",
        rsh="ssh -p 2222",
    )
    assert env["BORG_PASSPHRASE"] == SECRET
    assert env["BORG_PASSCOMMAND"] is None  # a passphrase wins; no ambiguity for borg
    assert env["BORG_NEW_PASSPHRASE"] is None
    assert env["BORG_PASSPHRASE_FD"] is None
    assert env["BORG_RSH"] == "ssh -p 2222"
    assert env["BORG_REMOTE_PATH"] == "/usr/local/bin/borg"
    assert env["BORG_HOST_ID"] == "antigone@1"
    assert env["BORG_KEYS_DIR"] == "/k"
    assert env["BORG_BASE_DIR"] == "/b"
    assert env["BORG_RELOCATED_REPO_ACCESS_IS_OK"] == "no"
    assert env["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] == "no"
    assert env["BORG_CHECK_I_KNOW_WHAT_I_AM_DOING"] == "NO"
    assert env["BORG_DELETE_I_KNOW_WHAT_I_AM_DOING"] == "NO"
    assert env["BORG_DISPLAY_PASSPHRASE"] == "no"  # noqa: S105 - a setting, not a password
    assert env["BORG_EXIT_CODES"] == "modern"


def test_env_passcommand_and_defaults():
    env = _borg_argv.borg_env(passcommand="cat /root/.config/borg/passphrase")
    assert env["BORG_PASSCOMMAND"] == "cat /root/.config/borg/passphrase"
    assert env["BORG_PASSPHRASE"] is None  # removes an inherited one
    assert "BatchMode=yes" in env["BORG_RSH"]
    assert "ServerAliveInterval" in env["BORG_RSH"]
    for key in ("BORG_REMOTE_PATH", "BORG_HOST_ID", "BORG_KEYS_DIR", "BORG_BASE_DIR"):
        assert env[key] is None


def test_env_reaches_the_child_without_stray_parent_secrets(monkeypatch):
    from ansible_collections.grus.backup.plugins.module_utils._runner import build_env

    monkeypatch.setenv("BORG_PASSPHRASE", "from-the-operator-shell")
    monkeypatch.setenv("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
    child = build_env(_borg_argv.borg_env(passcommand="cat /p"))
    assert "BORG_PASSPHRASE" not in child
    assert child["BORG_PASSCOMMAND"] == "cat /p"
    assert child["BORG_RELOCATED_REPO_ACCESS_IS_OK"] == "no"


# ------------------------------------------------------------------ shared options = doc fragment


def test_action_group_fragment_names_the_group():
    attrs = yaml.safe_load(ModuleDocFragment.ACTIONGROUP_BORG)["attributes"]["action_group"]
    assert "grus.backup.borg" in attrs["membership"]
    runtime_yml = os.path.join(os.path.dirname(_borg_repo.__file__), "..", "..", "meta", "runtime.yml")
    with open(runtime_yml) as handle:
        runtime = yaml.safe_load(handle)
    assert set(runtime["action_groups"]["borg"]) == {"borg_repo", "borg_archive"}


# ------------------------------------------------------------------ argv builders


def test_borg_argv_global_options():
    assert _borg_argv.borg_argv(["list"], borg="/usr/bin/borg", lock_wait=5) == [
        "/usr/bin/borg",
        "--log-json",
        "--lock-wait",
        "5",
        "list",
    ]
    assert _borg_argv.borg_argv(["list"], log_json=False) == ["borg", "list"]


def test_create_argv_everything():
    argv = _borg_argv.create_argv(
        REPO,
        "antigone-{now}",
        ["/srv/nfs", "/etc"],
        exclude=["/srv/nfs/connection-logs", "sh:**/*.tmp"],
        exclude_if_present=[".nobackup"],
        one_file_system=True,
        compression="zstd,3",
        files_cache="ctime,size",
        comment="nightly",
        timestamp="2026-11-23T04:00:00",
        lock_wait=30,
    )
    assert argv[:5] == ["borg", "--log-json", "--lock-wait", "30", "create"]
    assert "--json" in argv
    assert argv[argv.index("--compression") + 1] == "zstd,3"
    assert argv[argv.index("--files-cache") + 1] == "ctime,size"
    assert argv[argv.index("--exclude") : argv.index("--exclude") + 2] == ["--exclude", "/srv/nfs/connection-logs"]
    assert argv.count("--exclude") == 2
    assert argv[argv.index("--exclude-if-present") + 1] == ".nobackup"
    assert "--one-file-system" in argv
    assert argv[argv.index("--comment") + 1] == "nightly"
    assert argv[argv.index("--timestamp") + 1] == "2026-11-23T04:00:00"
    # positionals after "--" so that a name or path starting with "-" is never an option
    assert argv[argv.index("--") :] == ["--", f"{REPO}::antigone-{{now}}", "/srv/nfs", "/etc"]


def test_create_argv_defaults_and_dry_run():
    argv = _borg_argv.create_argv("/r", "a", ["/x"])
    assert argv[argv.index("--compression") + 1] == "lz4"
    assert "--files-cache" not in argv and "--dry-run" not in argv
    dry = _borg_argv.create_argv("/r", "a", ["/x"], dry_run=True, list_files=True, list_filter="AME")
    assert "--dry-run" in dry and "--list" in dry and "--json" not in dry  # borg refuses --json with --dry-run
    assert dry[dry.index("--filter") + 1] == "AME"


def test_create_argv_needs_paths():
    with pytest.raises(_borg_failures.BorgError):
        _borg_argv.create_argv("/r", "a", [])


def test_prune_argv():
    argv = _borg_argv.prune_argv(
        REPO, {"keep_within": "14d", "keep_daily": 7, "keep_weekly": 0}, match_archives="antigone-", dry_run=True
    )
    assert argv[:3] == ["borg", "--log-json", "prune"]
    assert "--dry-run" in argv and "--list" in argv
    assert argv[argv.index("--keep-within") + 1] == "14d"
    assert argv[argv.index("--keep-daily") + 1] == "7"
    assert "--keep-weekly" not in argv  # 0 means no rule
    assert argv[argv.index("--glob-archives") + 1] == "antigone-*"
    assert argv[-2:] == ["--", REPO]
    assert "compact" not in argv


def test_prune_argv_glob_kept_and_never_without_rule():
    argv = _borg_argv.prune_argv("/r", {"keep_last": 3}, match_archives="db-*-daily")
    assert argv[argv.index("--glob-archives") + 1] == "db-*-daily"
    with pytest.raises(_borg_failures.BorgError):
        _borg_argv.prune_argv("/r", {"keep_daily": 0})


def test_delete_extract_list_key_config_argv():
    assert _borg_argv.delete_argv("/r", "a 1")[-2:] == ["--", "/r::a 1"]
    with pytest.raises(_borg_failures.BorgError):
        _borg_argv.delete_argv("/r", "")
    ext = _borg_argv.extract_argv("/r", "a", ["srv/data"], strip_components=2, dry_run=True)
    assert ext[ext.index("--strip-components") + 1] == "2" and "--dry-run" in ext
    assert ext[-3:] == ["--", "/r::a", "srv/data"]
    with pytest.raises(_borg_failures.BorgError):
        _borg_argv.extract_argv("/r", "a", ["../etc"])
    assert _borg_argv.list_argv("/r")[-3:] == ["--json", "--", "/r"]
    assert _borg_argv.list_argv("/r", "a", ["srv"])[-4:] == ["--json-lines", "--", "/r::a", "srv"]
    assert _borg_argv.key_export_argv("/r", "/k")[-5:] == ["key", "export", "--", "/r", "/k"]
    assert _borg_argv.config_argv("/r", "append_only", 1)[-4:] == ["--", "/r", "append_only", "1"]
    assert _borg_argv.config_argv("/r", "storage_quota", delete=True)[-5:] == [
        "config",
        "--delete",
        "--",
        "/r",
        "storage_quota",
    ]


def test_delete_planned_argv_names_every_archive_and_never_none():
    argv = _borg_argv.delete_planned_argv("/r", ["a 1", "-b"], lock_wait=5)
    assert argv == ["borg", "--log-json", "--lock-wait", "5", "delete", "--", "/r", "a 1", "-b"]
    # "borg delete REPO" alone would delete the whole repository
    for names in ([], [""], ["a", ""]):
        with pytest.raises(_borg_failures.BorgError):
            _borg_argv.delete_planned_argv("/r", names)


def test_init_argv():
    argv = _borg_argv.init_argv("/r", "repokey-blake2", append_only=True, storage_quota="5G")
    assert argv[argv.index("--encryption") + 1] == "repokey-blake2"
    assert "--append-only" in argv
    assert argv[argv.index("--storage-quota") + 1] == "5G"
    assert "--storage-quota" not in _borg_argv.init_argv("/r", storage_quota="0")
    with pytest.raises(_borg_failures.BorgError):
        _borg_argv.init_argv("/r", "rot13")
    with pytest.raises(_borg_failures.BorgError, match="at least 10M"):
        _borg_argv.init_argv("/r", storage_quota="9M")


def test_summarize_traceback():
    tb = (
        'Traceback (most recent call last):\n  File "x.py", line 1, in main\n    rc = func(args)\n'
        "ValueError: Invalid value: storage_quota < 10M\n\nPlatform: Linux\nsys.argv: ['borg']\n"
    )
    assert _borg_parse.summarize_message(tb) == "ValueError: Invalid value: storage_quota < 10M"
    assert _borg_parse.summarize_message("plain") == "plain"


# ------------------------------------------------------------------ validators


@pytest.mark.parametrize("value", ["14d", "48H", "2w", "6m", "1y", "1d"])
def test_keep_within_valid(value):
    assert _borg_validate.validate_retention({"keep_within": value}) == {"keep_within": value}


@pytest.mark.parametrize("value", ["14", "14D", "0d", "d", "-1d", "14 days", "1.5d", "14dd", ""])
def test_keep_within_malformed(value):
    with pytest.raises(_borg_failures.BorgError) as err:
        _borg_validate.validate_retention({"keep_within": value})
    assert err.value.cause == "invalid_input"


@pytest.mark.parametrize("retention", [{}, {"keep_daily": 0}, {"keep_daily": None, "keep_within": None}])
def test_retention_needs_a_rule(retention):
    with pytest.raises(_borg_failures.BorgError, match="no retention rule"):
        _borg_validate.validate_retention(retention)


@pytest.mark.parametrize("value", [-1, "7", True, 1.5])
def test_retention_counts_must_be_whole_numbers(value):
    with pytest.raises(_borg_failures.BorgError):
        _borg_validate.validate_retention({"keep_daily": value})


def test_parse_size():
    assert _borg_validate.parse_size("0") == 0
    assert _borg_validate.parse_size("500M") == 500_000_000
    assert _borg_validate.parse_size("1.5T") == 1_500_000_000_000
    for bad in ("5GB", "lots", "-1G", ""):
        with pytest.raises(_borg_failures.BorgError):
            _borg_validate.parse_size(bad)


@pytest.mark.parametrize("path", ["/etc/passwd", "../etc", "srv/../../etc", "srv/..", ""])
def test_restore_paths_refused(path):
    with pytest.raises(_borg_failures.BorgError):
        _borg_validate.validate_restore_paths([path])


def test_restore_paths_normalised():
    assert _borg_validate.validate_restore_paths(["srv/data/", "srv/./x"]) == ["srv/data", "srv/x"]


def test_restore_dest(tmp_path):
    for dangerous in ("/", "//", "/tmp/.."):
        with pytest.raises(_borg_failures.BorgError, match="root directory"):
            _borg_validate.check_restore_dest(dangerous)
    link = tmp_path / "to-root"
    link.symlink_to("/")
    with pytest.raises(_borg_failures.BorgError, match="root directory"):
        _borg_validate.check_restore_dest(str(link))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(_borg_failures.BorgError, match="not a directory"):
        _borg_validate.check_restore_dest(str(a_file))
    assert _borg_validate.check_restore_dest(str(tmp_path / "new")) == str(tmp_path / "new")


def test_strip_path():
    assert _borg_validate.strip_path("srv/data/a", 0) == "srv/data/a"
    assert _borg_validate.strip_path("srv/data/a", 2) == "a"
    assert _borg_validate.strip_path("srv/data", 2) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [("{hostname}-{now}", True), ("db-{now:%Y}", True), ("plain-2026-11-23", False), ("curly{", False)],
)
def test_placeholders(name, expected):
    assert _borg_validate.has_placeholder(name) is expected


@pytest.mark.parametrize(
    ("repo", "remote"),
    [
        ("ssh://u@h:22/srv/r", True),
        ("u@h:repo", True),
        ("h:/srv/r", True),
        ("/srv/r", False),
        ("./r", False),
        ("file:///srv/r", False),
        ("relative/dir", False),
    ],
)
def test_is_remote(repo, remote):
    assert _borg_validate.is_remote(repo) is remote
    assert (_borg_validate.local_repo_path(repo) is None) is remote


# ------------------------------------------------------------------ exit codes and the failure table


@pytest.mark.parametrize(
    ("rc", "status"),
    [
        (0, "ok"),
        (1, "warning"),
        (100, "warning"),
        (107, "warning"),
        (2, "error"),
        (13, "error"),
        (52, "error"),
        (99, "error"),
        (130, "error"),
        (-9, "error"),
    ],
)
def test_exit_status(rc, status):
    assert _borg_failures.exit_status(rc) == status


@pytest.mark.parametrize(
    ("rc", "msgid", "text", "cause"),
    [
        (52, "PassphraseWrong", "", "wrong_passphrase"),
        (52, None, "", "wrong_passphrase"),  # modern rc without --log-json output
        (2, "PassphraseWrong", "", "wrong_passphrase"),  # legacy rc (borg 1.2), msgid decides
        (13, "Repository.DoesNotExist", "", "repository_missing"),
        (31, "Archive.DoesNotExist", "", "archive_missing"),
        (73, "LockTimeout", "", "lock_timeout"),
        (
            81,
            "ConnectionClosedWithHint",
            "Remote: ssh: connect to host 127.0.0.1 port 1: Connection refused",
            "connection_closed",
        ),
        (80, "ConnectionClosed", "Remote: backup@h: Permission denied (publickey).", "permission_denied"),
        (2, "PathNotAllowed", "", "path_not_allowed"),
        (2, "InvalidRepository", "", "not_a_repository"),  # remote borg drops the class prefix
        (19, "Repository.PathAlreadyExists", "", "not_a_repository"),
        (62, "RepositoryAccessAborted", "", "access_refused"),
        (64, "RepositoryReplay", "", "replay"),
        (42, "KeyfileNotFoundError", "", "keyfile_missing"),
        (2, None, "Traceback: PermissionError: [Errno 13] Permission denied: '/srv/borg/r/lock'", "permission_denied"),
        (2, None, "something new", "error"),
    ],
)
def test_failure_table(rc, msgid, text, cause):
    logs = _borg_parse.parse_log_lines("\n".join(filter(None, [log_line("boom", msgid=msgid), text])))
    assert _borg_failures.classify_failure(rc, logs, text).cause == cause


def test_failure_table_messages_name_the_repository():
    for failure in (*_borg_failures.FAILURES, _borg_failures.GENERIC_FAILURE):
        assert "{repo}" in failure.message, failure.cause


def test_every_msgid_is_in_one_row_only():
    seen = {}
    for failure in _borg_failures.FAILURES:
        for msgid in failure.msgids:
            assert msgid not in seen, (msgid, seen.get(msgid), failure.cause)
            seen[msgid] = failure.cause


# ------------------------------------------------------------------ BorgRepo.run


def test_run_puts_the_secret_in_env_never_in_argv():
    runner = FakeRunner(
        result(0, json.dumps({"repository": {"id": "ab"}, "encryption": {"mode": "repokey"}, "archives": []}))
    )
    info = _borg_repo.repo_info(conn(runner, lock_wait=7, host_id="h1"))
    call = runner.calls[0]
    assert call["env"]["BORG_PASSPHRASE"] == SECRET
    assert call["env"]["BORG_HOST_ID"] == "h1"
    assert call["secrets"] == (SECRET,)
    assert not any(SECRET in arg for arg in call["argv"])
    assert call["argv"] == ["borg", "--log-json", "--lock-wait", "7", "list", "--json", "--", REPO]
    assert info["repo_id"] == "ab" and info["encryption"] == "repokey"


def test_every_operation_keeps_the_secret_out_of_argv(tmp_path):
    runner = FakeRunner()
    c = conn(runner)
    archive_json = json.dumps({"archive": {"name": "a", "id": "1", "start": "t", "stats": {}}})
    runner.answers = [result(0, archive_json)]
    _borg_repo.create_archive(c, "a", [str(tmp_path)], files_cache="mtime,size")
    _borg_repo.prune(c, {"keep_daily": 1}, archives=[])
    _borg_repo.delete_archive(c, "a")
    _borg_repo.extract(c, "a", str(tmp_path), ["srv"], 1)
    _borg_repo.export_key(c, str(tmp_path / "k"))
    _borg_repo.set_repo_config(c, "append_only", 1)
    _borg_repo.init_repository(c, "keyfile-blake2")
    _borg_repo.archive_items(c, "a")
    _borg_repo.delete_planned(c, {"pruned": [{"name": "a"}]})
    assert len(runner.calls) == 9
    for call in runner.calls:
        assert not any(SECRET in arg for arg in call["argv"]), call["argv"]
        assert call["env"]["BORG_PASSPHRASE"] == SECRET
    assert runner.calls[3]["cwd"] == str(tmp_path)  # extract runs in dest


def test_secret_in_argv_refused_with_redacted_message():
    c = _borg_repo.BorgRepo("/srv/borg/hunter2-repo", passphrase="hunter2", runner=FakeRunner())  # noqa: S106
    with pytest.raises(_borg_failures.BorgError) as err:
        _borg_repo.list_archives(c)
    assert err.value.cause == "secret_in_argv"
    assert "hunter2" not in str(err.value)


def test_other_value_errors_are_not_called_secrets():
    with pytest.raises(_borg_failures.BorgError) as err:
        _borg_repo.list_archives(conn(FakeRunner(Raise(ValueError("embedded null byte")))))
    assert err.value.cause == "invalid_input" and "embedded null byte" in err.value.message


def test_error_is_redacted_and_names_repo():
    runner = FakeRunner(
        result(52, stderr_lines=[log_line(f"passphrase {SECRET} is incorrect", msgid="PassphraseWrong")])
    )
    with pytest.raises(_borg_failures.BorgError) as err:
        _borg_repo.list_archives(conn(runner))
    exc = err.value
    assert exc.cause == "wrong_passphrase"
    assert exc.rc == 52 and exc.msgid == "PassphraseWrong"
    assert REPO in exc.message
    assert SECRET not in exc.message
    assert all(SECRET not in d for d in exc.details)
    assert SECRET not in json.dumps(exc.as_dict())


def test_archive_named_in_archive_failures():
    runner = FakeRunner(result(31, stderr_lines=[log_line("Archive x does not exist", msgid="Archive.DoesNotExist")]))
    with pytest.raises(_borg_failures.BorgError) as err:
        _borg_repo.archive_items(conn(runner), "x")
    assert "archive x does not exist in repository" in err.value.message


def test_warning_rc_surfaces_in_warnings():
    runner = FakeRunner(
        result(
            1,
            json.dumps({"archive": {"name": "a"}}),
            [log_line("/srv/x: file changed while we backed it up", "WARNING", "FileChangedWarning")],
        )
    )
    created = _borg_repo.create_archive(conn(runner), "a", ["/srv"])
    assert created["warnings"] == [f"borg warning on repository {REPO}: /srv/x: file changed while we backed it up"]
    runner = FakeRunner(result(107, json.dumps({"archive": {"name": "a"}}), []))
    assert _borg_repo.create_archive(conn(runner), "a", ["/srv"])["warnings"] == [
        f"borg warning on repository {REPO}: borg exited 107"
    ]


def test_ok_run_has_no_warnings_even_with_borg_warning_lines():
    runner = FakeRunner(result(0, "", [log_line("IMPORTANT: you will need both KEY AND PASSPHRASE", "WARNING")]))
    assert _borg_repo.init_repository(conn(runner)) == []


def test_timeout_and_missing_borg():
    with pytest.raises(_borg_failures.BorgError) as err:
        _borg_repo.list_archives(conn(FakeRunner(result(-1, timed_out=True)), timeout=5))
    assert err.value.cause == "timeout"
    with pytest.raises(_borg_failures.BorgError) as err:
        _borg_repo.list_archives(conn(FakeRunner(Raise(CommandNotFound("borg")))))
    assert err.value.cause == "borg_missing"


def test_from_params():
    params = {
        "repo": "/r",
        "passphrase": None,
        "passcommand": "cat /p",
        "rsh": None,
        "remote_path": None,
        "lock_wait": 3,
        "host_id": None,
        "keys_dir": "/k",
        "base_dir": None,
    }
    c = _borg_repo.BorgRepo.from_params(params, borg="/usr/bin/borg")
    assert c.secrets == ()
    assert c.env()["BORG_PASSCOMMAND"] == "cat /p"
    assert c.argv_kwargs() == {"borg": "/usr/bin/borg", "lock_wait": 3}
    assert SECRET not in repr(_borg_repo.BorgRepo("/r", passphrase=SECRET))


# ------------------------------------------------------------------ parsers


def test_parse_log_lines_mixes_json_and_text():
    logs = _borg_parse.parse_log_lines(
        "Remote: ssh: connect refused\n" + log_line("x", msgid="ConnectionClosed") + "\n{bad\n"
    )
    assert logs[0] == {"type": "text", "message": "Remote: ssh: connect refused"}
    assert logs[1]["msgid"] == "ConnectionClosed"
    assert logs[2]["type"] == "text"


def test_parse_prune_list_by_id_even_with_spaces_in_names():
    ids = ["a" * 64, "b" * 64, "c" * 64]
    archives = [
        {"name": "db dump 1", "time": "t1", "id": ids[0]},
        {"name": "db dump 2", "time": "t2", "id": ids[1]},
        {"name": "db.checkpoint", "time": "t3", "id": ids[2]},
    ]
    lines = [
        log_line(
            f"Keeping archive (rule: daily #1):            db dump 2       Thu, 2026-11-12 [{ids[1]}]",
            "INFO",
            name="borg.output.list",
        ),
        log_line(
            f"Would prune:                                 db dump 1       Wed, 2026-11-11 [{ids[0]}]",
            "INFO",
            name="borg.output.list",
        ),
        log_line(
            f"Keeping checkpoint archive:                  db.checkpoint   Wed, 2026-11-11 [{ids[2]}]",
            "INFO",
            name="borg.output.list",
        ),
        log_line("unrelated", "INFO"),
    ]
    plan = _borg_parse.parse_prune_list(_borg_parse.parse_log_lines("\n".join(lines)), archives)
    assert [a["name"] for a in plan["pruned"]] == ["db dump 1"]
    assert [(a["name"], a["rule"]) for a in plan["kept"]] == [
        ("db dump 2", "daily #1"),
        ("db.checkpoint", "checkpoint"),
    ]
    real = log_line(
        f"Pruning archive (1/1):                       db dump 1  Wed [{ids[0]}]", "INFO", name="borg.output.list"
    )
    assert _borg_parse.parse_prune_list(_borg_parse.parse_log_lines(real), archives)["pruned"][0]["id"] == ids[0]


def test_parse_prune_list_reads_names_and_times_from_borg_lines_without_a_listing():
    # borg 1.4.0's own lines (captured), so that the backup job needs no separate borg list
    ids = ["1f" * 32, "04" * 32]
    lines = [
        log_line(
            f"Keeping archive (rule: within #1):           grus-2026-12-02T19:23:33Z            "
            f"Wed, 2026-12-02 19:23:33 [{ids[0]}]",
            "INFO",
            name="borg.output.list",
        ),
        log_line(
            f"Would prune:                                 old one                              "
            f"Wed, 2020-01-01 00:00:00 [{ids[1]}]",
            "INFO",
            name="borg.output.list",
        ),
    ]
    plan = _borg_parse.parse_prune_list(_borg_parse.parse_log_lines("\n".join(lines)))
    assert plan["kept"] == [
        {"name": "grus-2026-12-02T19:23:33Z", "time": "2026-12-02T19:23:33", "id": ids[0], "rule": "within #1"}
    ]
    assert plan["pruned"] == [{"name": "old one", "time": "2020-01-01T00:00:00", "id": ids[1]}]


def test_cached_borg_version_asks_borg_once_per_binary(tmp_path):
    binary = tmp_path / "borg"
    binary.write_text("#!/bin/sh\n")
    cache = tmp_path / "cache" / "borg-version.json"
    runner = FakeRunner(result(0, "borg 1.4.0\n"), result(0, "borg 1.4.1\n"))
    assert _borg_version.cached_borg_version(str(binary), runner=runner, cache=str(cache)) == "1.4.0"
    assert _borg_version.cached_borg_version(str(binary), runner=runner, cache=str(cache)) == "1.4.0"
    assert len(runner.calls) == 1 and oct(cache.parent.stat().st_mode & 0o777) == "0o700"
    binary.write_text("#!/bin/sh\n# upgraded\n")  # a new binary: asked again
    assert _borg_version.cached_borg_version(str(binary), runner=runner, cache=str(cache)) == "1.4.1"
    assert len(runner.calls) == 2


def test_cached_borg_version_still_refuses_an_old_borg_and_survives_a_broken_cache(tmp_path):
    binary = tmp_path / "borg"
    binary.write_text("#!/bin/sh\n")
    cache = tmp_path / "borg-version.json"
    real, identity = _borg_version._binary_identity(str(binary))
    cache.write_text(json.dumps({real: {"identity": identity, "version": "1.2.4"}}))
    with pytest.raises(_borg_failures.BorgError, match="CVE-2023-36811"):
        _borg_version.cached_borg_version(str(binary), runner=FakeRunner(), cache=str(cache))
    cache.write_text("{garbage")
    runner = FakeRunner(result(0, "borg 1.4.0\n"))
    assert _borg_version.cached_borg_version(str(binary), runner=runner, cache=str(cache)) == "1.4.0"
    assert json.loads(cache.read_text())[real]["version"] == "1.4.0"
    # no cache at all (""), or a binary that is not there: borg is asked every time
    runner = FakeRunner(result(0, "borg 1.4.0\n"), result(0, "borg 1.4.0\n"))
    assert _borg_version.cached_borg_version(str(binary), runner=runner, cache="") == "1.4.0"
    assert _borg_version.cached_borg_version(str(tmp_path / "nope"), runner=runner, cache=str(cache)) == "1.4.0"
    assert len(runner.calls) == 2


def test_stream_hands_over_lines_and_keeps_stderr(tmp_path):
    from ansible_collections.grus.backup.plugins.module_utils import _runner

    seen = []
    result = _runner.stream(["sh", "-c", "printf 'a\\nb\\n'; echo oops >&2; exit 3"], seen.append)
    assert seen == ["a\n", "b\n"] and result.rc == 3 and result.stdout == "" and result.stderr == "oops\n"

    def stop(_line):
        raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        _runner.stream(["sh", "-c", "while :; do echo y; done"], stop)
    with pytest.raises(CommandNotFound):
        _runner.stream([str(tmp_path / "missing")], seen.append)
    with pytest.raises(ValueError, match="secret"):
        _runner.stream(["echo", SECRET], seen.append, secrets=(SECRET,))


def test_parse_prune_list_unknown_id_is_an_error():
    line = log_line(f"Would prune:   x  Wed [{'d' * 64}]", "INFO", name="borg.output.list")
    with pytest.raises(_borg_failures.BorgError):
        _borg_parse.parse_prune_list(_borg_parse.parse_log_lines(line), [{"name": "y", "id": "e" * 64}])


def test_parse_json_output_errors():
    with pytest.raises(_borg_failures.BorgError):
        _borg_parse.parse_json_output("not json")
    with pytest.raises(_borg_failures.BorgError):
        _borg_parse.parse_json_line("nope")
    assert _borg_parse.parse_json_line('{"a": 1}\n') == {"a": 1} and _borg_parse.parse_json_line("  \n") is None
    stream = FakeRunner(result(0, '{"path": "a"}\n\n{"path": "b"}\n'))
    assert _borg_repo.archive_items(conn(stream), "x") == [{"path": "a"}, {"path": "b"}]
    assert _borg_repo.archive_items(conn(FakeRunner(result(0, '{"path": "a"}\n'))), "x", keep=lambda i: None) == []
    with pytest.raises(_borg_failures.BorgError) as err:
        _borg_repo.archive_items(conn(FakeRunner(result(0, '{"path": "a"}\nnot json\n'))), "x")
    assert err.value.cause == "bad_output"


# ------------------------------------------------------------------ local repository config, restore planning


def test_read_local_repo_config(tmp_path):
    (tmp_path / "config").write_text("[repository]\nversion = 1\nappend_only = 1\nstorage_quota = 5000\n")
    assert _borg_repo.read_local_repo_config(str(tmp_path))["storage_quota"] == "5000"
    assert _borg_repo.repo_append_only(_borg_repo.BorgRepo(str(tmp_path))) is True
    assert _borg_repo.repo_append_only(_borg_repo.BorgRepo("ssh://u@h/r")) is None
    assert _borg_repo.read_local_repo_config(str(tmp_path / "missing")) is None
    (tmp_path / "config").write_text("not ini at all")
    assert _borg_repo.read_local_repo_config(str(tmp_path)) is None


def _iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) + ".000000"


def test_restore_plan_totals_and_differences(tmp_path):
    mtime = 1_790_000_000
    items = [
        {"path": "srv", "type": "d"},
        {"path": "srv/data", "type": "d"},
        {"path": "srv/data/a", "type": "-", "size": 3, "mtime": _iso(mtime)},
        {"path": "srv/data/l", "type": "l", "linktarget": "a", "size": 0},
    ]
    plan = [e for e in (_restore.restore_entry(i, strip_components=1) for i in items) if e is not None]
    assert [i["target"] for i in plan] == ["data", "data/a", "data/l"]
    assert _restore.restore_totals(plan) == {"files": 2, "bytes": 3, "entries": 3}
    assert _restore.restore_differences(plan, str(tmp_path)) == ["data", "data/a", "data/l"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a").write_text("abc")
    os.utime(tmp_path / "data" / "a", (mtime, mtime))
    (tmp_path / "data" / "l").symlink_to("a")
    assert _restore.restore_differences(plan, str(tmp_path)) == []
    os.utime(tmp_path / "data" / "a", (mtime, mtime + 60))
    assert _restore.restore_differences(plan, str(tmp_path)) == ["data/a"]
