"""Unit tests for grus.backup.borg_repo with borg replaced by a fake runner (no borg runs here)."""

from __future__ import annotations

import configparser
import json
import os

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _argspec, _borg_repo, _borg_validate, _borg_version
from ansible_collections.grus.backup.plugins.module_utils._runner import Result
from ansible_collections.grus.backup.plugins.modules import borg_repo
from conftest import borg_log_line, borg_subcommand

SECRET = "s3cret-passphrase-for-unit-tests"  # noqa: S105 - a test value
REPO_ID = "3c" * 32
KEY = b"BORG_KEY " + REPO_ID.encode() + b"\nhqlhbGdvcml0aG2mc2hhMjU2pG\n"


subcommand = borg_subcommand


def log_line(message, msgid=None, levelname="ERROR"):
    return borg_log_line(message, msgid, levelname)


class FakeBorg:
    """A repository model behind a fake _runner.run: answers version, list, init, config, key export."""

    def __init__(self, version="1.4.0", exists=False, encryption="keyfile-blake2", repo_dir=None):
        self.version = version
        self.exists = exists
        self.encryption = encryption
        self.repo_dir = repo_dir
        self.calls = []
        self.fail = {}  # subcommand -> Result to return instead

    def __call__(self, argv, env=None, cwd=None, timeout=None, stdin_data=None, inherit_env=True, secrets=()):
        argv = list(argv)
        self.calls.append({"argv": argv, "env": dict(env or {}), "cwd": cwd, "secrets": tuple(secrets)})
        for secret in secrets:
            if secret and any(secret in a for a in argv):
                raise ValueError("secret in argv")
        if argv[1:] == ["--version"]:
            return Result(argv, 0, f"borg {self.version}\n", "")
        sub = subcommand(argv)
        if sub in self.fail:
            return self.fail[sub]
        return getattr(self, "do_" + sub.replace(" ", "_"))(argv)

    @property
    def subcommands(self):
        return [subcommand(c["argv"]) if c["argv"][1:] != ["--version"] else "version" for c in self.calls]

    def do_list(self, argv):
        if not self.exists:
            return Result(argv, 13, "", log_line("Repository x does not exist.", "Repository.DoesNotExist"))
        data = {
            "repository": {"id": REPO_ID, "location": argv[-1], "last_modified": "2026-11-23T04:00:00.000000"},
            "encryption": {"mode": self.encryption},
            "archives": [{"name": "a1", "time": "2026-11-23T04:00:00.000000", "id": "ab" * 32}],
        }
        return Result(argv, 0, json.dumps(data), "")

    def do_init(self, argv):
        self.exists = True
        self.encryption = argv[argv.index("--encryption") + 1]
        if self.repo_dir:
            os.makedirs(self.repo_dir, exist_ok=True)
            quota = argv[argv.index("--storage-quota") + 1] if "--storage-quota" in argv else "0"
            self.write_config(
                append_only="1" if "--append-only" in argv else "0", storage_quota=str(_borg_validate.parse_size(quota))
            )
        return Result(argv, 0, "", log_line("IMPORTANT: you will need both KEY AND PASSPHRASE", levelname="WARNING"))

    def write_config(self, **values):
        parser = configparser.ConfigParser()
        path = os.path.join(self.repo_dir, "config")
        parser.read(path)
        if not parser.has_section("repository"):
            parser.add_section("repository")
            parser.set("repository", "append_only", "0")
            parser.set("repository", "storage_quota", "0")
        for key, value in values.items():
            parser.set("repository", key, value)
        with open(path, "w") as handle:
            parser.write(handle)

    def do_config(self, argv):
        if "--delete" in argv:
            parser = configparser.ConfigParser()
            parser.read(os.path.join(self.repo_dir, "config"))
            parser.remove_option("repository", argv[-1])
            with open(os.path.join(self.repo_dir, "config"), "w") as handle:
                parser.write(handle)
        else:
            self.write_config(**{argv[-2]: argv[-1]})
        return Result(argv, 0, "", "")

    def do_key_export(self, argv):
        with open(argv[-1], "wb") as handle:
            handle.write(KEY)
        return Result(argv, 0, "", "")


@pytest.fixture
def fake(monkeypatch):
    borg = FakeBorg()
    monkeypatch.setattr(_borg_repo, "run", borg)
    monkeypatch.setattr(_borg_version, "run", borg)
    monkeypatch.setattr(_borg_version, "VERSION_CACHE", "")  # never write to the home of whoever runs the tests
    yield borg
    for call in borg.calls:
        assert not any(SECRET in arg for arg in call["argv"]), call["argv"]


@pytest.fixture
def run_module(call_module):
    def runner(args, check=False, diff=False):
        return call_module(borg_repo.main, args, check=check, diff=diff, secret=SECRET)

    return runner


def args(repo="ssh://backup@sarus.example.net/srv/borg/antigone", **kwargs):
    return dict({"repo": repo, "passphrase": SECRET}, **kwargs)


def test_creates_a_missing_repository(fake, run_module):
    result = run_module(args(), diff=True)
    assert not result["failed"]
    assert result["changed"] is True and result["created"] is True
    assert fake.subcommands == ["version", "list", "init", "list"]
    init = fake.calls[2]
    assert init["argv"][init["argv"].index("--encryption") + 1] == "keyfile-blake2"
    assert init["env"]["BORG_PASSPHRASE"] == SECRET
    assert init["argv"][-2:] == ["--", "ssh://backup@sarus.example.net/srv/borg/antigone"]
    assert result["repo_id"] == REPO_ID and result["encryption"] == "keyfile-blake2"
    assert result["borg_version"] == "1.4.0"
    assert result["archives"] == [{"name": "a1", "time": "2026-11-23T04:00:00.000000", "id": "ab" * 32}]
    assert result["diff"]["before"] == {"exists": False}
    assert result["warnings"] == []  # borg init's reminder (rc 0) is not a warning


def test_check_mode_creates_nothing(fake, run_module):
    result = run_module(args(), check=True)
    assert result["changed"] is True and result["created"] is True
    assert "init" not in fake.subcommands
    assert result["repo_id"] is None


def test_existing_repository_is_ok(fake, run_module):
    fake.exists = True
    result = run_module(args())
    assert result["changed"] is False and result["created"] is False
    assert fake.subcommands == ["version", "list"]


def test_encryption_mismatch_touches_nothing(fake, run_module):
    fake.exists, fake.encryption = True, "repokey"
    result = run_module(args(encryption="keyfile-blake2"))
    assert result["failed"]
    assert "repokey" in result["msg"] and "keyfile-blake2" in result["msg"]
    assert "ssh://backup@sarus.example.net/srv/borg/antigone" in result["msg"]
    assert result["cause"] == "encryption_mismatch"
    assert fake.subcommands == ["version", "list"]


def test_absent_is_refused_without_running_borg(fake, run_module):
    result = run_module(args(state="absent"))
    assert result["failed"] and "does not delete repositories" in result["msg"]
    assert fake.calls == []


def test_non_empty_directory_that_is_not_a_repository(fake, run_module, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.txt").write_text("do not touch")
    fake.fail["list"] = Result(
        [], 15, "", log_line(f"{occupied} is not a valid repository.", "Repository.InvalidRepository")
    )
    result = run_module(args(repo=str(occupied)))
    assert result["failed"] and result["cause"] == "not_a_repository"
    assert "non-empty directory" in result["msg"] and str(occupied) in result["msg"]
    assert "init" not in fake.subcommands
    assert os.listdir(occupied) == ["precious.txt"]


def test_empty_directory_is_initialised(fake, run_module, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    fake.fail["list"] = Result([], 15, "", log_line("not a valid repository", "Repository.InvalidRepository"))
    calls = []

    def init_then_list_ok(argv):
        calls.append(argv)
        del fake.fail["list"]
        return FakeBorg.do_init(fake, argv)

    fake.do_init = init_then_list_ok
    result = run_module(args(repo=str(empty)))
    assert result["changed"] and result["created"] and calls


def test_wrong_passphrase_fails_naming_repo_and_cause(fake, run_module):
    fake.fail["list"] = Result([], 52, "", log_line("passphrase supplied ... is incorrect.", "PassphraseWrong"))
    result = run_module(args())
    assert result["failed"] and result["cause"] == "wrong_passphrase" and result["rc"] == 52
    assert "wrong passphrase for repository ssh://backup@sarus.example.net/srv/borg/antigone" in result["msg"]


def test_old_borg_refused(fake, run_module):
    fake.version = "1.2.4"
    result = run_module(args())
    assert result["failed"] and "CVE-2023-36811" in result["msg"]
    assert fake.subcommands == ["version"]


def test_encrypted_init_needs_a_secret(fake, run_module):
    result = run_module({"repo": "/srv/borg/x"})
    assert result["failed"] and "passphrase or passcommand" in result["msg"]
    assert "init" not in fake.subcommands
    result = run_module({"repo": "/srv/borg/x", "encryption": "none"}, check=True)
    assert result["changed"]


def test_passcommand_goes_to_env(fake, run_module):
    fake.exists = True
    run_module({"repo": "/srv/borg/x", "passcommand": "cat /root/pw", "host_id": "antigone"})
    env = fake.calls[-1]["env"]
    assert env["BORG_PASSCOMMAND"] == "cat /root/pw" and env["BORG_PASSPHRASE"] is None
    assert env["BORG_HOST_ID"] == "antigone"


def test_passphrase_with_passcommand_is_refused_before_borg_runs(fake, run_module):
    # Our spec, not Ansible's machinery: borg_env would let the passphrase win silently, so the
    # common options make the two exclusive, and the refusal comes before any borg call.
    assert ("passphrase", "passcommand") in _argspec.BORG_COMMON_MUTUALLY_EXCLUSIVE
    result = run_module(args(passcommand="cat /x"))
    assert result["failed"] and "passphrase|passcommand" in result["msg"]
    assert fake.calls == [] and not fake.exists  # neither borg --version nor borg init ran
    # each alone is accepted, and reaches borg only through the environment
    fake.exists = True
    repo = args()["repo"]
    for given in ({"repo": repo, "passcommand": "cat /x"}, args()):
        assert not run_module(given)["failed"]
    assert [c["env"]["BORG_PASSCOMMAND"] for c in fake.calls if c["argv"][1:] != ["--version"]] == ["cat /x", None]


def test_key_export_idempotent_and_0600(fake, run_module, tmp_path):
    fake.exists = True
    target = tmp_path / "key.export"
    assert run_module(args(key_export=str(target)), check=True)["changed"] is True
    assert not target.exists()
    result = run_module(args(key_export=str(target)))
    assert result["changed"] is True and result["key_export"] == str(target)
    assert target.read_bytes() == KEY
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert run_module(args(key_export=str(target)))["changed"] is False
    target.chmod(0o644)
    assert run_module(args(key_export=str(target)), check=True)["changed"] is True
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert run_module(args(key_export=str(target)))["changed"] is True
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    target.write_bytes(b"someone else's key")
    assert run_module(args(key_export=str(target)))["changed"] is True
    assert target.read_bytes() == KEY
    assert "KEY" not in json.dumps(run_module(args(key_export=str(target))))


def test_key_export_refused_for_unencrypted(fake, run_module, tmp_path):
    fake.exists, fake.encryption = True, "none"
    result = run_module(args(encryption="none", key_export=str(tmp_path / "k")))
    assert result["failed"] and "no key" in result["msg"]


def test_local_append_only_and_quota(fake, run_module, tmp_path):
    repo = tmp_path / "repo"
    fake.repo_dir = str(repo)
    result = run_module(args(repo=str(repo), append_only=True, storage_quota="5G"))
    assert result["changed"] and result["append_only"] is True and result["storage_quota"] == 5_000_000_000
    assert "config" not in fake.subcommands  # set by init
    assert run_module(args(repo=str(repo), append_only=True, storage_quota="5G"))["changed"] is False
    result = run_module(args(repo=str(repo), append_only=False), check=True, diff=True)
    assert result["changed"] and result["diff"]["before"]["append_only"] is True
    assert result["diff"]["after"]["append_only"] is False
    assert _borg_repo.read_local_repo_config(str(repo))["append_only"] == "1"
    fake.calls.clear()
    result = run_module(args(repo=str(repo), append_only=False, storage_quota="0"))
    assert result["changed"] and result["append_only"] is False and result["storage_quota"] == 0
    assert [c["argv"][-4:] for c in fake.calls if subcommand(c["argv"]) == "config"] == [
        ["--", str(repo), "append_only", "0"],
        ["--delete", "--", str(repo), "storage_quota"],
    ]
    assert run_module(args(repo=str(repo), append_only=False, storage_quota="0"))["changed"] is False


def test_remote_settings_on_existing_repo_warn(fake, run_module):
    fake.exists = True
    result = run_module(args(append_only=True))
    assert result["changed"] is False
    assert any("not checked" in w for w in result["warnings"])
    assert "config" not in fake.subcommands


@pytest.mark.parametrize(("quota", "message"), [("5 gigs", "malformed size"), ("9M", "too small")])
def test_bad_quota_fails_before_borg(fake, run_module, quota, message):
    result = run_module(args(storage_quota=quota))
    assert result["failed"] and message in result["msg"]
    assert fake.calls == []


def test_an_empty_repo_or_negative_lock_wait_is_refused_before_borg_runs(call_module, monkeypatch):
    calls = []
    monkeypatch.setattr(_borg_repo, "run", lambda argv, **kw: calls.append(argv))
    monkeypatch.setenv("BORG_REPO", "/srv/borg/someone-elses")
    for args, fragment in (({"repo": ""}, "repo is empty"), ({"repo": "/srv/r", "lock_wait": -1}, "lock_wait=-1")):
        result = call_module(borg_repo.main, dict(args, passcommand="cat /p"))
        assert result["failed"] and result["cause"] == "invalid_input" and fragment in result["msg"]
    assert calls == []
