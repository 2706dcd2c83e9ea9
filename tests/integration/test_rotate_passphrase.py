"""playbooks/rotate_passphrase.yml (the key holder role's ``rotate_passphrase`` entry point), run by
ansible-playbook against 127.0.0.1 with real borg: the key holder is this machine (connection local) with a
local repository, its passphrase file, key export and escrow directory in the test's directory, and borg's keys
under the test's HOME. The timers are not installed here (no systemd): holding them is proven in Molecule full.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import yaml
from conftest import REPO_ROOT, ansible_env
from helpers import borg_cli

PLAYBOOK = REPO_ROOT / "playbooks" / "rotate_passphrase.yml"
HOST = "localhost"
VAULT_VARIABLE = "vault_key_holder_passphrase"


class KeyHolder:
    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.home = tmp_path / "home"
        self.repo = tmp_path / "repo"
        self.passfile = tmp_path / "etc" / "passphrase"
        self.export = tmp_path / "root" / "key-export.borgkey"
        self.escrow = tmp_path / "escrow"
        for directory in (self.home, self.passfile.parent, self.export.parent):
            directory.mkdir(mode=0o700)

    def write_passphrase(self, value: str) -> None:
        if self.passfile.exists():
            self.passfile.chmod(0o600)
        self.passfile.write_text(value)
        self.passfile.chmod(0o400)

    def borg(self, args, passphrase, check=True, home=None):
        return borg_cli(args, passphrase, home or self.home, check=check)

    def play(self, new_passphrase: str, check: bool = False) -> tuple[int, dict, str]:
        inventory = self.tmp / "inventory.yml"
        host_vars = {
            "ansible_connection": "local",
            "key_holder_local_repository": str(self.repo),
            "key_holder_passphrase_file": str(self.passfile),
            "key_holder_key_export": str(self.export),
            "key_holder_escrow_dir": str(self.escrow),
            "key_holder_passphrase_reference": VAULT_VARIABLE,
            "key_holder_lock_wait": 5,
        }
        inventory.write_text(json.dumps({"key_holder": {"hosts": {HOST: host_vars}}}))
        # The new passphrase reaches ansible-playbook in a 0600 file (-e @file), never on its command line.
        secret = self.tmp / "new-passphrase.yml"
        secret.write_text(json.dumps({"key_holder_new_passphrase": new_passphrase}))
        secret.chmod(0o600)
        argv = ["ansible-playbook", "-i", str(inventory), str(PLAYBOOK), "-e", f"@{secret}"]
        if check:
            argv.append("--check")
        proc = subprocess.run(
            argv,
            env=dict(ansible_env(self.tmp), HOME=str(self.home)),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        secret.unlink()
        try:
            data = json.loads(proc.stdout)
        except ValueError as exc:
            raise AssertionError(proc.stdout + proc.stderr) from exc
        return proc.returncode, data["stats"].get(HOST, {}), proc.stdout + proc.stderr

    def bundle(self) -> tuple[dict, Path]:
        bundle = self.escrow / HOST
        description = yaml.safe_load((bundle / "escrow.yml").read_text())
        return description, bundle / description["key_file"]


def fingerprint(*paths: Path) -> dict:
    return {str(p): (p.read_bytes(), p.stat().st_mode) for p in paths if p.exists()}


def passphrase() -> str:
    return "grus-rot-" + secrets.token_hex(10)


def deployed(tmp_path: Path, current: str) -> tuple[KeyHolder, Path]:
    """A key holder as the role leaves it: a keyfile repository with one archive, the passphrase file (0400)."""
    kh = KeyHolder(tmp_path)
    kh.borg(["init", "--encryption", "keyfile-blake2", str(kh.repo)], current)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    kh.borg(["create", f"{kh.repo}::before-rotation", str(src)], current)
    kh.write_passphrase(current)
    (keyfile,) = (kh.home / ".config" / "borg" / "keys").iterdir()
    return kh, keyfile


def test_rotation_changes_the_passphrase_updates_escrow_and_proves_it(tmp_path):
    old, new = passphrase(), passphrase()
    kh, keyfile = deployed(tmp_path, old)
    before = fingerprint(kh.passfile, keyfile)

    # Check mode: reports the rotation, changes nothing, escrows nothing.
    rc, stats, out = kh.play(new, check=True)
    assert rc == 0 and stats["changed"] > 0 and stats["failures"] == 0, out
    assert fingerprint(kh.passfile, keyfile) == before and not kh.escrow.exists()
    assert not Path(f"{kh.passfile}.new").exists()

    rc, stats, out = kh.play(new)
    assert rc == 0 and stats["failures"] == 0 and stats["changed"] > 0, out
    assert "the old passphrase is refused" in out
    assert kh.passfile.read_text() == new and oct(kh.passfile.stat().st_mode & 0o777) == "0o400"
    assert not Path(f"{kh.passfile}.new").exists() and not Path(f"{kh.passfile}.old").exists()
    # Independently of the playbook: borg refuses the old passphrase (rc 52) and lists with the new one.
    refused = kh.borg(["list", str(kh.repo)], old, check=False)
    assert refused.returncode == 2 and "is incorrect" in refused.stderr, refused.stderr  # borg's legacy codes
    assert kh.borg(["list", "--short", str(kh.repo)], new).stdout.split() == ["before-rotation"]

    # The escrow bundle: the re-exported key (it opens the repository with the new passphrase on a host that
    # has no key), the repository, and the passphrase's reference, never a passphrase.
    description, escrowed = kh.bundle()
    assert description["repository"] == str(kh.repo)
    assert description["passphrase_reference"] == VAULT_VARIABLE
    assert escrowed.read_bytes() == kh.export.read_bytes()
    for path in (kh.escrow / HOST, escrowed, escrowed.parent / "escrow.yml"):
        assert oct(path.stat().st_mode & 0o777) in ("0o700", "0o600"), path
    for path in (escrowed, escrowed.parent / "escrow.yml"):
        text = path.read_text()
        assert old not in text and new not in text
    fresh = tmp_path / "fresh-home"
    fresh.mkdir()
    kh.borg(["key", "import", str(kh.repo), str(escrowed)], new, home=fresh)
    assert kh.borg(["list", "--short", str(kh.repo)], new, home=fresh).stdout.split() == ["before-rotation"]
    assert "is incorrect" in kh.borg(["list", str(kh.repo)], old, home=fresh, check=False).stderr
    # No passphrase in Ansible's output.
    assert old not in out and new not in out

    # A second run with the same passphrase changes nothing, in check mode and for real.
    for check in (True, False):
        rc, stats, out = kh.play(new, check=check)
        assert rc == 0 and stats["changed"] == 0 and stats["failures"] == 0, out


def test_a_rotation_that_died_half_way_is_finished_by_the_next_run(tmp_path):
    """The run died after borg changed the key, before the rename: the file still holds `new`, the key wants
    `third`. Running the playbook again with `third` finishes it; a passphrase that opens nothing is refused."""
    new, third = passphrase(), passphrase()
    kh, keyfile = deployed(tmp_path, new)
    Path(f"{kh.passfile}.new").write_text(third)
    env = dict(os.environ, BORG_PASSPHRASE=new, BORG_NEW_PASSPHRASE=third, BORG_BASE_DIR=str(kh.home))
    subprocess.run(["borg", "key", "change-passphrase", str(kh.repo)], env=env, check=True, capture_output=True)
    assert "is incorrect" in kh.borg(["list", str(kh.repo)], new, check=False).stderr
    rc, stats, out = kh.play(third)
    assert rc == 0 and stats["failures"] == 0, out
    assert kh.passfile.read_text() == third
    assert kh.borg(["list", "--short", str(kh.repo)], third).stdout.split() == ["before-rotation"]
    escrowed = kh.bundle()[1]
    assert escrowed.read_bytes() == kh.export.read_bytes()

    # A new passphrase that opens nothing while the one in force is refused: refused, nothing changed.
    kh.write_passphrase(new)
    state = fingerprint(kh.passfile, keyfile, escrowed)
    rc, _stats, out = kh.play(passphrase())
    assert rc != 0 and "Neither the passphrase in" in out
    assert fingerprint(kh.passfile, keyfile, escrowed) == state


def test_a_short_new_passphrase_is_refused_and_nothing_changes(tmp_path):
    old = passphrase()
    kh = deployed(tmp_path, old)[0]
    rc, _stats, out = kh.play("short")
    assert rc != 0 and "12 characters or more" in out
    assert kh.passfile.read_text() == old and not kh.escrow.exists()
