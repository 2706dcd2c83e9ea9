"""grus.backup.borg_repo against real borg: local repositories and over SSH (private sshd on 127.0.0.1)."""

from __future__ import annotations

import configparser
import os
import secrets

import pytest
from helpers import assert_names_ssh_reason, borg_cli, closed_port, snapshot


def idempotent(run_module, args, **changes) -> list:
    """check -> apply -> apply again -> check again; returns the four results."""
    results = [
        run_module("borg_repo", args, check=True, diff=True),
        run_module("borg_repo", args, diff=True),
        run_module("borg_repo", args),
        run_module("borg_repo", args, check=True),
    ]
    for result in results:
        assert not result.failed, result.result
    assert [r.changed for r in results] == [True, True, False, False], [r.result for r in results]
    return results


@pytest.fixture
def borg_home(tmp_path):
    """Borg's cache, keys and security records for this test only (BORG_BASE_DIR)."""
    home = tmp_path / "borg-home"
    home.mkdir()
    return home


@pytest.fixture
def passphrase():
    return "grus-it-" + secrets.token_hex(12)


def test_local_repository_lifecycle(run_module, tmp_path, borg_home, passphrase):
    repo = tmp_path / "repo"
    key = tmp_path / "escrow" / "repo.key"
    key.parent.mkdir()
    args = {"repo": str(repo), "passphrase": passphrase, "base_dir": str(borg_home), "key_export": str(key)}

    check, apply, again = idempotent(run_module, args)[:3]
    assert check.result["created"] is True and check.result["repo_id"] is None
    assert apply.result["created"] is True and again.result["created"] is False
    # check mode created nothing: apply was the first to see an empty place
    assert apply.result["diff"]["before"]["exists"] is False

    config = configparser.ConfigParser()
    config.read(repo / "config")
    assert apply.result["repo_id"] == config["repository"]["id"] == again.result["repo_id"]
    assert again.result["encryption"] == "keyfile-blake2"
    assert again.result["borg_version"].startswith("1.")
    assert again.result["archives"] == []
    assert again.result["location"] == str(repo)
    # keyfile mode: the key is on this host (base_dir), not in the repository
    assert list((borg_home / ".config" / "borg" / "keys").iterdir())
    assert "key =" not in (repo / "config").read_text()
    assert key.read_text().startswith("BORG_KEY " + config["repository"]["id"])
    assert oct(key.stat().st_mode & 0o777) == "0o600"

    # the archives of the repository are how users list them
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    borg_cli(["create", f"{repo}::first", str(src)], passphrase, borg_home)

    # a key export that was tampered with is rewritten; one with the wrong mode is fixed
    key.write_text("tampered")
    key.chmod(0o644)
    rewritten = run_module("borg_repo", args)
    assert rewritten.changed
    assert key.read_text().startswith("BORG_KEY ")
    assert [a["name"] for a in rewritten.result["archives"]] == ["first"]
    assert set(rewritten.result["archives"][0]) == {"name", "time", "id"}
    assert oct(key.stat().st_mode & 0o777) == "0o600"


def test_append_only_and_quota_on_a_local_repository(run_module, tmp_path, borg_home, passphrase):
    repo = tmp_path / "repo"
    base = {"repo": str(repo), "passphrase": passphrase, "base_dir": str(borg_home), "encryption": "repokey-blake2"}
    # set by borg init on creation ...
    idempotent(run_module, dict(base, append_only=True, storage_quota="2G"))
    config = configparser.ConfigParser()
    config.read(repo / "config")
    assert config["repository"]["append_only"] == "1"
    assert config["repository"]["storage_quota"] == "2000000000"
    # ... and changed with borg config on an existing repository
    toggled = run_module("borg_repo", dict(base, append_only=False, storage_quota="0"), diff=True)
    assert toggled.changed, toggled.result
    assert toggled.result["diff"]["before"]["append_only"] is True
    assert toggled.result["append_only"] is False and toggled.result["storage_quota"] == 0
    config = configparser.ConfigParser()
    config.read(repo / "config")
    assert config["repository"]["append_only"] == "0"
    assert "storage_quota" not in config["repository"]


def test_repository_over_ssh_with_passcommand(run_module, tmp_path, borg_home, passphrase, sshd):
    pwfile = tmp_path / "passphrase"
    pwfile.write_text(passphrase + "\n")
    pwfile.chmod(0o600)
    path = tmp_path / "remote-repo"
    repo = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{path}"
    args = {
        "repo": repo,
        "passcommand": f"cat {pwfile}",
        "rsh": sshd.rsh,
        "base_dir": str(borg_home),
        "host_id": "grus-it-keyholder",
        "lock_wait": 5,
    }
    results = idempotent(run_module, args)
    assert (path / "config").is_file()
    assert results[1].result["location"] == repo
    assert results[2].result["append_only"] is None  # borg can only read that on the repository host
    for result in results:
        assert passphrase not in result.stdout + result.stderr


def test_encryption_mismatch_is_refused_and_touches_nothing(run_module, tmp_path, borg_home, passphrase):
    repo = tmp_path / "repo"
    borg_cli(["init", "--encryption", "keyfile-blake2", str(repo)], passphrase, borg_home)
    before = snapshot(repo)
    result = run_module(
        "borg_repo", {"repo": str(repo), "passphrase": passphrase, "base_dir": str(borg_home), "encryption": "repokey"}
    )
    assert result.failed
    assert result.result["cause"] == "encryption_mismatch"
    assert "keyfile-blake2" in result.result["msg"] and str(repo) in result.result["msg"]
    assert snapshot(repo) == before


def test_non_empty_directory_is_refused(run_module, tmp_path, borg_home, passphrase):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.db").write_bytes(os.urandom(1024))
    before = snapshot(occupied)
    args = {"repo": str(occupied), "passphrase": passphrase, "base_dir": str(borg_home)}
    result = run_module("borg_repo", args)
    assert result.failed and result.result["cause"] == "not_a_repository"
    assert str(occupied) in result.result["msg"]
    assert snapshot(occupied) == before
    # an empty directory (a mount point prepared by the operator) is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_module("borg_repo", dict(args, repo=str(empty))).changed
    assert (empty / "config").is_file()


def test_non_empty_remote_directory_is_refused(run_module, tmp_path, borg_home, passphrase, sshd):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.db").write_bytes(os.urandom(1024))
    before = snapshot(occupied)
    result = run_module(
        "borg_repo",
        {
            "repo": f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{occupied}",
            "passphrase": passphrase,
            "base_dir": str(borg_home),
            "rsh": sshd.rsh,
        },
    )
    assert result.failed and result.result["cause"] == "not_a_repository"
    assert snapshot(occupied) == before


def test_wrong_passphrase_leaves_repository_identical(run_module, tmp_path, borg_home, passphrase):
    repo = tmp_path / "repo"
    borg_cli(["init", "--encryption", "repokey-blake2", str(repo)], passphrase, borg_home)
    before = snapshot(repo)
    result = run_module(
        "borg_repo",
        {
            "repo": str(repo),
            "passphrase": "not-" + passphrase,
            "base_dir": str(borg_home),
            "encryption": "repokey-blake2",
        },
    )
    assert result.failed
    assert result.result["cause"] == "wrong_passphrase"
    assert f"wrong passphrase for repository {repo}" in result.result["msg"]
    assert snapshot(repo) == before
    assert passphrase not in str(result.result)


def test_unreachable_host(run_module, tmp_path, borg_home, passphrase, sshd):
    path = tmp_path / "repo"
    borg_cli(["init", "--encryption", "keyfile-blake2", str(path)], passphrase, borg_home)
    before = snapshot(path)
    repo = f"ssh://{sshd.user}@127.0.0.1:{closed_port()}{path}"
    # ssh takes the first -p it is given: the fixture's own port must not win over the URL's
    rsh = sshd.rsh.replace(f"-p {sshd.port} ", "")
    result = run_module("borg_repo", {"repo": repo, "passphrase": passphrase, "base_dir": str(borg_home), "rsh": rsh})
    assert result.failed
    assert result.result["cause"] == "connection_closed"
    assert repo in result.result["msg"]
    assert_names_ssh_reason(result.result, "Connection refused")
    assert snapshot(path) == before


def test_state_absent_is_refused(run_module, tmp_path, borg_home, passphrase):
    repo = tmp_path / "repo"
    borg_cli(["init", "--encryption", "keyfile-blake2", str(repo)], passphrase, borg_home)
    before = snapshot(repo)
    result = run_module("borg_repo", {"repo": str(repo), "passphrase": passphrase, "state": "absent"})
    assert result.failed and "does not delete repositories" in result.result["msg"]
    assert snapshot(repo) == before


def test_key_taken_back_from_escrow_on_a_rebuilt_host(run_module, tmp_path, borg_home, passphrase, sshd):
    """A key holder rebuilt from nothing: the repository exists (over SSH), the host has no key. Without an
    escrow copy the module fails and names both, changing nothing; with one it imports the key (check ->
    apply -> apply again -> check) and the archives list again; another repository's key is refused."""
    path = tmp_path / "remote-repo"
    repo = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{path}"
    escrow = tmp_path / "escrow.borgkey"
    base = {"repo": repo, "passphrase": passphrase, "rsh": sshd.rsh, "lock_wait": 5}
    made = run_module("borg_repo", dict(base, base_dir=str(borg_home), key_export=str(escrow)))
    assert made.result["created"] is True, made.result
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    borg_cli(["create", f"{repo}::before-the-fire", str(src)], passphrase, borg_home, rsh=sshd.rsh)

    fresh = tmp_path / "fresh-home"
    fresh.mkdir()
    to_import = tmp_path / "taken-back.borgkey"
    args = dict(base, base_dir=str(fresh), key_import=str(to_import), key_export=str(to_import))
    repository = snapshot(path)

    missing = run_module("borg_repo", args)
    assert missing.failed and missing.result["cause"] == "keyfile_missing", missing.result
    assert "no key export to import at " + str(to_import) in missing.result["msg"]
    assert "never initialised again" in missing.result["msg"]
    keys = fresh / ".config" / "borg" / "keys"
    assert snapshot(path) == repository and not (keys.exists() and list(keys.iterdir()))

    other = tmp_path / "other"
    other_key = tmp_path / "other.borgkey"
    run_module("borg_repo", {"repo": str(other), "passphrase": passphrase, "base_dir": str(borg_home)})
    borg_cli(["key", "export", str(other), str(other_key)], passphrase, borg_home)
    wrong = run_module("borg_repo", dict(args, key_import=str(other_key)))
    assert wrong.failed and wrong.result["cause"] == "key_import_mismatch", wrong.result
    assert snapshot(path) == repository

    to_import.write_bytes(escrow.read_bytes())
    to_import.chmod(0o600)
    check, apply, again = idempotent(run_module, args)[:3]
    assert check.result["key_imported"] is True and check.result["archives"] == []
    assert apply.result["key_imported"] is True and apply.result["created"] is False
    assert again.result["key_imported"] is False
    assert [a["name"] for a in again.result["archives"]] == ["before-the-fire"]
    assert apply.result["diff"]["before"] == {
        "key": "missing",
        "exists": True,
        "encryption": "keyfile-blake2",
        "key_export": "current",  # the export of the imported key is the file itself, byte for byte
    }
    assert snapshot(path) == repository  # importing a key writes nothing into the repository
    for result in (missing, wrong, check, apply, again):
        assert passphrase not in result.stdout + result.stderr
    # the passphrase still guards the imported key
    refused = run_module("borg_repo", dict(args, passphrase="wrong-" + secrets.token_hex(8)))
    assert refused.failed and refused.result["cause"] == "wrong_passphrase"
