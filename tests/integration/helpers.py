"""Plain helpers shared by the integration tests (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

JOB_MODULE = "ansible_collections.grus.backup.plugins.module_utils._backup_job"
COLLECTIONS = Path(__file__).resolve().parents[2] / ".build" / "collections"


def snapshot(root: Path, inodes: bool = False, skip_prefix: str | None = None) -> dict:
    """Every file, link and directory under root with its SHA-256 (byte identity of a repository); with
    ``inodes``, each file's inode too (the same files, not only the same bytes); ``skip_prefix``: names left out
    (borg's ``lock.`` files)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            state[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            if skip_prefix and name.startswith(skip_prefix):
                continue
            if os.path.islink(path):
                state[os.path.relpath(path, root)] = "link:" + os.readlink(path)
            else:
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                state[os.path.relpath(path, root)] = (os.stat(path).st_ino, digest) if inodes else digest
    return state


def write_export(export: Path, files) -> Path:
    """An export tree: each ``(relative path, text)`` written under ``export``, its directories made."""
    for rel, content in files:
        path = export / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return export


def passphrase_file(directory: Path, passphrase: str) -> Path:
    """The passphrase in a 0600 file, for a passcommand (``cat FILE``), as the key holder keeps it."""
    secret = directory / "passphrase"
    secret.write_text(passphrase)
    secret.chmod(0o600)
    return secret


def closed_port() -> int:
    """A 127.0.0.1 port that nothing listens on (the socket is closed on return)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_repo(sshd, path: Path) -> str:
    """The ssh:// location of ``path`` on the test sshd."""
    return f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{path}"


def assert_names_ssh_reason(result: dict, reason: str) -> None:
    """The ssh reason is in the message whenever borg passed ssh's stderr on.

    Borg forwards ssh's own error line ("Remote: ssh: connect to host ...") only when it reads stderr
    before it sees the connection close: a race in borg's RPC reader that loses the line now and then
    under load. The cause (connection_closed) and the repository are named either way.
    """
    forwarded = [m for m in result.get("borg_messages", []) if "ssh:" in m or reason in m]
    if forwarded:
        assert reason in result["msg"], (result["msg"], forwarded)


def borg_cli(args, passphrase, borg_home, rsh=None, check=True, cwd=None):
    """Raw borg, as an operator would run it (the tests' independent view of a repository)."""
    env = dict(
        os.environ,
        BORG_PASSPHRASE=passphrase,
        BORG_BASE_DIR=str(borg_home),
        BORG_RELOCATED_REPO_ACCESS_IS_OK="no",
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="no",
    )
    if rsh:
        env["BORG_RSH"] = rsh
    proc = subprocess.run(
        ["borg", *args], env=env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, cwd=cwd
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"borg {args} failed: {proc.stderr}")
    return proc


def job_env() -> dict:
    """The scheduled job's environment: none of the caller's BORG_* variables, the collection importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
    env["PYTHONPATH"] = str(COLLECTIONS)
    return env


def job_argv(config_path: Path, *extra) -> list:
    """The scheduled job's command line, as the unit runs it (``grus-backup-run``)."""
    return [sys.executable, "-m", JOB_MODULE, "--config", str(config_path), *extra]


def run_job(config_path: Path, *extra, timeout: int = 300) -> subprocess.CompletedProcess:
    """One run of the scheduled job, to its end."""
    return subprocess.run(
        job_argv(config_path, *extra),
        env=job_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def job_config(tmp_path: Path, repo: str, export: Path, secret: Path, **more) -> dict:
    """The key holder's job configuration for a repository and an export under tmp_path; ``more`` adds or overrides."""
    cfg = {
        "repo": repo,
        "paths": [str(export)],
        "passcommand": f"cat {secret}",
        "base_dir": str(tmp_path / "borgbase"),
        "keys_dir": str(tmp_path / "keys"),
        "host_id": "integration-key-holder",
        "lock_wait": 5,
    }
    cfg.update(more)
    return cfg
