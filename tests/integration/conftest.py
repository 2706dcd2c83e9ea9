"""Shared fixtures for the integration tests: real borg, rsync, ssh and Ansible.

* ``run_module(name, args, check=False, diff=False)`` runs one grus.backup module
  through ``ansible localhost -m`` (the path operators use for ad-hoc restores)
  and returns the module's result dict, with ``rc`` the exit code of ansible.
* ``sshd`` starts a private sshd on 127.0.0.1 (never any other address) with a
  throw-away host key and client key, for repositories and syncs over SSH.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS_PATH = REPO_ROOT / ".build" / "collections"


def _ensure_collection_link() -> None:
    link = COLLECTIONS_PATH / "ansible_collections" / "grus" / "backup"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(REPO_ROOT, link.parent))


def pytest_configure(config):
    _ensure_collection_link()
    for tool in ("borg", "rsync", "ssh", "ansible"):
        if shutil.which(tool) is None:
            raise pytest.UsageError(f"integration tests need {tool!r} on PATH (run `make deps`)")


def ansible_env(tmp_dir: Path | None = None) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS_PATH),
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            # Modules on localhost run with the test interpreter (pyenv shims confuse discovery).
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        }
    )
    if tmp_dir is not None:
        env["ANSIBLE_LOCAL_TEMP"] = str(tmp_dir / "ansible-local")
        env["ANSIBLE_REMOTE_TEMP"] = str(tmp_dir / "ansible-remote")
    return env


def run_role_tasks(
    tmp_path: Path, role: str, tasks_from: str, extra_vars: dict, *, callback: str = "ansible.builtin.json", timeout=300
) -> subprocess.CompletedProcess:
    """One task file of a role run on localhost as a play runs it: the role's defaults, ``extra_vars`` over them."""
    playbook = tmp_path / f"{role}-{tasks_from}.yml"
    playbook.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.include_role:\n        name: grus.backup.{role}\n        tasks_from: {tasks_from}\n"
    )
    env = ansible_env(tmp_path)
    env["ANSIBLE_STDOUT_CALLBACK"] = callback
    return subprocess.run(
        ["ansible-playbook", "-i", "localhost,", str(playbook), "-e", json.dumps(extra_vars)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


@dataclass
class ModuleRun:
    rc: int
    result: dict
    stdout: str
    stderr: str

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed")) or self.rc != 0

    @property
    def changed(self) -> bool:
        return bool(self.result.get("changed"))


def _run_module(
    name: str, args: dict, check: bool = False, diff: bool = False, tmp_dir: Path | None = None, timeout: int = 600
) -> ModuleRun:
    fqcn = name if "." in name else f"grus.backup.{name}"
    argv = ["ansible", "localhost", "-c", "local", "-i", "localhost,", "-m", fqcn]
    if args:
        argv += ["-a", json.dumps(args)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    proc = subprocess.run(argv, env=ansible_env(tmp_dir), capture_output=True, text=True, timeout=timeout, check=False)
    try:
        data = json.loads(proc.stdout)
        result = data["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError) as exc:
        raise AssertionError(
            f"no JSON result from {fqcn}: rc={proc.returncode}\nstdout={proc.stdout}\nstderr={proc.stderr}"
        ) from exc
    return ModuleRun(proc.returncode, result, proc.stdout, proc.stderr)


@pytest.fixture
def run_module(tmp_path):
    def runner(name, args, check=False, diff=False, timeout=600):
        return _run_module(name, args, check=check, diff=diff, tmp_dir=tmp_path, timeout=timeout)

    return runner


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    identity: Path
    known_hosts: Path
    authorized_keys: Path
    public_key: str

    @property
    def rsh(self) -> str:
        """An ssh command for BORG_RSH / rsync -e: pinned host key, no agent, no prompts."""
        return (
            f"ssh -p {self.port} -i {self.identity} -o IdentitiesOnly=yes -o BatchMode=yes "
            f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
            f"-o ConnectTimeout=10"
        )

    def authorize(self, options: str = "") -> None:
        """Replace the authorized_keys content with our key, optionally restricted."""
        line = f"{options} {self.public_key}".strip()
        self.authorized_keys.write_text(line + "\n")
        self.authorized_keys.chmod(0o600)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A private sshd on 127.0.0.1, logging in as the current user with a test key."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd_bin):
        raise pytest.UsageError("integration tests need sshd (openssh-server; run `make deps`)")
    base = tmp_path_factory.mktemp("sshd")
    os.chmod(base, 0o700)
    host_key = base / "host_ed25519"
    client_key = base / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    user = (
        os.environ.get("USER")
        or subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    )
    home = Path(os.path.expanduser("~"))
    # sshd insists on its own AuthorizedKeysFile permissions; keep ours in the temp dir.
    authorized_keys = base / "authorized_keys"
    public_key = (client_key.with_suffix(".pub")).read_text().strip()
    authorized_keys.write_text(public_key + "\n")
    authorized_keys.chmod(0o600)
    port = _free_port()
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {base / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized_keys}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "LogLevel ERROR",
                f"AllowUsers {user}",
                "",
            ]
        )
    )
    os.makedirs("/run/sshd", exist_ok=True)
    with open(base / "sshd.log", "wb") as sshd_log:
        proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=sshd_log)
    host_pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts = base / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"sshd did not start: {(base / 'sshd.log').read_text()}") from None
            time.sleep(0.1)
    server = SshServer("127.0.0.1", port, user, client_key, known_hosts, authorized_keys, public_key)
    assert home  # the login user's home must exist for borg's cache
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
