"""playbooks/recover_append_only.yml on its repository-host side, run by ansible-playbook against 127.0.0.1.

The repository host is this machine (connection local) with the test's repository layout and the compaction
job rendered as the role renders it; there is no key holder in the inventory (its plays - the backup timer,
cache and security record, ``borg check`` through ``grus-backup-check.service`` - run in Molecule ``full``).
A client deletes every archive through the forced command; the playbook lists the transactions, flags the
mass delete, proposes the one before, holds compaction, refuses a bare number that repeats, rolls back by
ordinal, and the archives restore byte-identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from conftest import REPO_ROOT, ansible_env
from test_compact_guard import NAME, current_user
from test_compaction import Client, make_host, sha256

PLAYBOOK = REPO_ROOT / "playbooks" / "recover_append_only.yml"


def play(tmp_path: Path, host, **extra) -> tuple[int, list]:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        f"[repository_host]\nlocalhost ansible_connection=local repository_host_base_dir={host.base}\n[key_holder]\n"
    )
    extra = {
        "recover_repository": NAME,
        "recover_compact_command": str(host.script),
        "recover_repository_user": current_user(),
        **extra,
    }
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(PLAYBOOK), "-e", json.dumps(extra)],
        env=dict(ansible_env(tmp_path), HOME=str(host.home)),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise AssertionError(proc.stdout + proc.stderr) from exc
    results = [
        (task["task"]["name"], task["hosts"].get("localhost", {}))
        for p in data["plays"]
        for task in p["tasks"]
        if "localhost" in task["hosts"]
    ]
    return proc.returncode, results


def result(results: list, name: str) -> dict:
    return next(r for n, r in results if n == name)


def test_recover_lists_flags_proposes_and_rolls_back_by_ordinal(tmp_path, sshd):
    host = make_host(tmp_path)
    client = Client(tmp_path, sshd, host)
    try:
        client.borg("init", "--encryption", "none", client.url)
        src = tmp_path / "src"
        src.mkdir()
        for i in range(120):
            (src / f"f{i:03d}").write_bytes(os.urandom(1024))
        hashes = {}
        for name in ("a", "b", "c"):
            (src / "changing").write_bytes(os.urandom(4096))
            client.borg("create", f"{client.url}::{name}", ".", cwd=src)
            hashes[name] = sha256(client.borg("extract", "--stdout", f"{client.url}::{name}", "changing").stdout)
        client.borg("delete", "--glob-archives", "*", client.url)
        time.sleep(1)

        rc, results = play(tmp_path, host)
        assert rc == 0, results
        lines = result(results, "Show the transactions (recover_ordinal takes the number after '#')")["msg"]
        proposal = result(results, "Show the proposal")["msg"]
        audit = result(results, "Keep the audit")["ansible_facts"]["recover_audit"]
        (bad,) = [t for t in audit["transactions"] if t["suspicious"]]
        proposed = audit["proposed"]
        assert proposed["ordinal"] == bad["ordinal"] - 1
        # One line a transaction (a list, printed one per line), the suspicious one marked, then what to do.
        assert isinstance(lines, list) and len(lines) == len(audit["transactions"]) + 1
        assert lines == audit["lines"][: len(lines)] and proposal == audit["lines"][len(lines) :]
        (marked,) = [line for line in lines if "SUSPICIOUS: deleted" in line]
        assert marked.lstrip().startswith(f"#{bad['ordinal']}  ") and " put " in marked and " deleted " in marked
        assert proposal[0].startswith(f"Proposed last good: #{proposed['ordinal']} (")
        assert proposal[1] == (
            f"Roll back to it: ansible-playbook -i {tmp_path / 'inventory.ini'} grus.backup.recover_append_only "
            f"-e recover_repository={NAME} -e recover_ordinal={proposed['ordinal']}"
        )
        assert proposal[2].startswith("Compaction hold: held by recover")
        assert (host.home / "GRUS-HOLD-COMPACTION").read_text().startswith("held-by: recover\n")
        assert client.names() == []

        rc, results = play(tmp_path, host, recover_transaction="999")
        assert rc != 0 and "no snapshot covers it" in json.dumps(results)
        ended = result(
            results,
            "Fail if the rollback failed (the repository is as it was before it unless the message says otherwise)",
        )
        assert ended["failed"] and "no snapshot covers it" in ended["msg"]  # the last play ends it, with the cause

        rc, results = play(tmp_path, host, recover_ordinal=proposed["ordinal"])
        assert rc == 0, results
        done = "\n".join(result(results, "Show what the rollback did")["msg"])
        assert "borg check --repository-only passed" in done and "before-rollback" in done
        assert client.names(home=tmp_path / "fresh") == ["a", "b", "c"]
        for name, digest in hashes.items():
            restored = client.borg("extract", "--stdout", f"{client.url}::{name}", "changing", home=tmp_path / "f2")
            assert sha256(restored.stdout) == digest
        # Still held: only the operator releases an incident's hold.
        assert (host.home / "GRUS-HOLD-COMPACTION").exists()
    finally:
        sshd.authorize("")
