"""The repository host's delayed compaction refuses to run when authorized_keys was loosened.

Real borg 1.4, the real ``/bin/sh`` and ``/usr/bin/python3``, no mocks: the role's templates are rendered as
Ansible renders them (``authorized_keys.j2``, the compaction unit and its per-repository drop-in with Jinja;
the entry point ``grus-borg-compact`` has only ``{{ ansible_managed }}``), the job's code is the collection's
module_utils shipped as the role ships them (a ``grus_backup`` package), and the entry point runs with the
exact argument list of the unit's ``ExecStart=`` (the repository user replaced by the test's own, which owns
the test repository) and the unit's environment (``HOME`` only). The repository is append-only and holds
an older archive and one that a client deleted (only logically: a prune, not every archive, which the deletion
audit would hold at any size); rolled back as ``recover_append_only`` does,
that state restores the archive byte-identical (proven once, on a copy). A tampered
``authorized_keys`` must fail the run (exit 2, so the unit fails and ``OnFailure=`` alerts) and
leave the repository byte-identical to that recoverable state.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pytest
from helpers import snapshot

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = REPO_ROOT / "roles" / "repository_host" / "templates"
ROLE = REPO_ROOT / "roles" / "repository_host"
MODULE_UTILS = REPO_ROOT / "plugins" / "module_utils"
LIB_DIR = "/usr/local/lib/grus-backup"
QUOTA = "1T"  # the role's default
NAME = "client-a"
ARCHIVE = "antigone-2026-01-01T00:00:00Z"
KEPT = "antigone-2025-12-31T20:00:00Z"
MIB = 1024 * 1024
CLIENT_KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ2aFqKVbmlg0wPVMYcpA4Dm8Rz+qfFQ4w4p0jXlYB2m antigone",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOa5h0oE0ZyUqmP7m8p9i0FfAH4U6J3B1c0s9xYwOHoT antigone-spare",
]
INTRUDER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3v7sQe1Xc4KpZr2yTg9WfN0aH5uJdL6oVqE8iMbC1 intruder"
# The rendered authorized_keys: two comment lines, then one line per client key.
FIRST_KEY_LINE = 3


def borg_env(home: Path) -> dict:
    """Borg with its own base dir, no prompts (the repository is unencrypted, and copied around)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
    env.update(
        {
            "BORG_BASE_DIR": str(home),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }
    )
    return env


def borg(home: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["borg", *args],
        env=borg_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, (args, proc.stderr.decode(errors="replace"))
    return proc


def segment_numbers(repo: Path) -> list[int]:
    return sorted(int(p.name) for p in (repo / "data").glob("*/*") if p.name.isdigit())


def data_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "data").glob("*/*"))


def jinja() -> jinja2.Environment:
    # Ansible's template module renders with trim_blocks; StrictUndefined catches a variable we forgot.
    return jinja2.Environment(  # noqa: S701 - renders sh and systemd units, not HTML
        loader=jinja2.FileSystemLoader(TEMPLATES),
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


@dataclass
class Pristine:
    """An append-only repository with one logically deleted archive, made once per module."""

    repo: Path
    state: dict  # snapshot() of the repository: a state proven recoverable
    data_size: int


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Pristine:
    base = tmp_path_factory.mktemp("pristine")
    home = base / "borg-home"
    repo = base / "repo"
    data = base / "data.bin"
    data.write_bytes(os.urandom(4 * MIB))
    borg(home, "init", "--encryption", "none", "--append-only", str(repo))
    (base / "kept.bin").write_bytes(os.urandom(4096))
    borg(home, "create", "--compression", "none", f"{repo}::{KEPT}", str(base / "kept.bin"))
    # No compression: the chunks sit in the segments as they are, so compaction frees their size.
    borg(home, "create", "--compression", "none", f"{repo}::{ARCHIVE}", str(data))
    last_good = segment_numbers(repo)[-1]
    borg(home, "delete", f"{repo}::{ARCHIVE}")
    listed = borg(home, "list", "--short", str(repo)).stdout.decode().split()
    assert listed == [KEPT], listed
    assert segment_numbers(repo)[-1] > last_good
    state = snapshot(repo)
    assert_deleted_archive_recoverable(repo, last_good, hashlib.sha256(data.read_bytes()).hexdigest(), base)
    assert snapshot(repo) == state
    return Pristine(repo, state, data.stat().st_size)


def assert_deleted_archive_recoverable(repo: Path, last_good_segment: int, data_sha256: str, tmp: Path) -> None:
    """Roll a copy back to the create's commit as recover_append_only does; the archive restores byte-identical."""
    copy = tmp / "rollback"
    shutil.copytree(repo, copy, symlinks=True)
    for segment in (copy / "data").glob("*/*"):
        if segment.name.isdigit() and int(segment.name) > last_good_segment:
            segment.unlink()
    for pattern in ("index.*", "hints.*", "integrity.*"):
        for path in copy.glob(pattern):
            path.unlink()
    fresh_home = tmp / "fresh-borg-home"  # a key holder that dropped its cache and security record
    listed = borg(fresh_home, "list", "--short", str(copy)).stdout.decode().split()
    assert sorted(listed) == sorted([KEPT, ARCHIVE])
    restored = borg(fresh_home, "extract", "--stdout", f"{copy}::{ARCHIVE}").stdout
    assert hashlib.sha256(restored).hexdigest() == data_sha256


def role_vars() -> dict:
    """The role's defaults and vars, as Ansible gives them to its templates."""
    import yaml

    values = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    values.update(yaml.safe_load((ROLE / "vars" / "main.yml").read_text()))
    return values


def ship_job(lib: Path) -> None:
    """The role's code.yml: the listed module_utils as the package grus_backup under lib."""
    package = lib / "grus_backup"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in role_vars()["__repository_host_module_utils"]:
        shutil.copy(MODULE_UTILS / name, package / name)


def forced_prefix(repo: Path, quota: str = QUOTA) -> str:
    return f'restrict,command="borg serve --append-only --restrict-to-repository {repo} --storage-quota {quota}" '


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


@dataclass
class Host:
    """The repository host's layout for one repository: <base>/<name>/{repo,.ssh,.cache}."""

    base: Path
    home: Path
    repo: Path
    keys: Path
    stamp: Path
    script: Path

    def render_keys(self, client_keys: list[str]) -> str:
        return (
            jinja()
            .get_template("authorized_keys.j2")
            .render(
                ansible_managed="Ansible managed",
                **dict(role_vars(), repository_host_base_dir=str(self.base)),
                item={"name": NAME, "client_keys": client_keys},
            )
        )

    def unit_argv(
        self, delay_days: int = 0, interval_days: int | None = None, line: str = "ExecStart=", **overrides
    ) -> list[str]:
        """A command line (ExecStart= by default) of grus-borg-compact@<name>.service, the script rendered here.

        No quiet window before backups unless asked (``repository_host_compact_quiet_minutes``): these runs
        must not depend on the time of day the tests run at.
        """
        values = dict(
            role_vars(),
            repository_host_compact_quiet_minutes=0,
            repository_host_on_failure="",
            repository_host_base_dir=str(self.base),
            repository_host_textfile_dir=str(self.base / "textfile"),
            repository_host_compact_delay_days=delay_days,
            repository_host_compact_interval_days=delay_days if interval_days is None else interval_days,
        )
        values.update(overrides)
        (self.base / "textfile").mkdir(parents=True, exist_ok=True)
        unit = jinja().get_template("grus-borg-compact@.service.j2").render(ansible_managed="Ansible managed", **values)
        dropin = (
            jinja()
            .get_template("repository.conf.j2")
            .render(ansible_managed="Ansible managed", item={"name": NAME, "client_keys": CLIENT_KEYS}, **values)
        )
        (quota,) = re.findall(r"^Environment=GRUS_STORAGE_QUOTA=(.*)$", dropin, re.MULTILINE)
        (command,) = [x for x in unit.splitlines() if x.startswith(line)]
        argv = shlex.split(command.removeprefix(line).replace("%i", NAME))
        assert argv[0] == "/usr/local/sbin/grus-borg-compact", argv
        # systemd gives ${VAR} as one word; the repository user is the test's own (it owns the test repository).
        argv = [quota if a == "${GRUS_STORAGE_QUOTA}" else a for a in argv]
        argv = [current_user() if a == f"borg-{NAME}" else a for a in argv]
        return [str(self.script), *argv[1:]]

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        # The unit's environment: HOME, nothing of borg's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
        env["HOME"] = str(self.home)
        return subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False
        )


@pytest.fixture
def host(tmp_path, pristine) -> Host:
    base = tmp_path / "srv-borg"
    home = base / NAME
    repo = home / "repo"
    shutil.copytree(pristine.repo, repo, symlinks=True)
    (home / ".ssh").mkdir()
    (home / ".cache").mkdir()
    template = (TEMPLATES / "grus-borg-compact.j2").read_text()
    # The script is plain sh: {{ ansible_managed }} is its only Jinja, so a substitution renders it.
    assert re.findall(r"\{[{%#]", template) == ["{{"], "grus-borg-compact.j2 gained Jinja: render it properly"
    assert template.count("{{ ansible_managed }}") == 1
    assert template.count(LIB_DIR) == 2, "the entry point names the shipped package's directory (comment, PYTHONPATH)"
    lib = tmp_path / "lib"
    ship_job(lib)
    script = tmp_path / "grus-borg-compact"
    script.write_text(template.replace("{{ ansible_managed }}", "Ansible managed").replace(LIB_DIR, str(lib)))
    script.chmod(0o755)
    h = Host(base, home, repo, home / ".ssh" / "authorized_keys", home / ".cache" / "grus-last-compact", script)
    h.keys.write_text(h.render_keys(CLIENT_KEYS))
    return h


def test_shellcheck_passes_on_the_rendered_script(host):
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is needed (make host-deps installs it)"
    proc = subprocess.run(
        [shellcheck, "-s", "sh", str(host.script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_intact_keys_compact_and_reclaim_the_deleted_archive(host, pristine):
    lines = host.keys.read_text().splitlines()
    forced = forced_prefix(host.repo)
    assert [line.startswith(forced) for line in lines] == [False, False, True, True]
    before = data_bytes(host.repo)

    proc = host.run(host.unit_argv())

    assert proc.returncode == 0, proc.stderr
    assert f"compacted {host.repo}" in proc.stdout
    assert "forced command" not in proc.stderr
    freed = before - data_bytes(host.repo)
    assert freed >= pristine.data_size * 0.9, (before, freed)
    assert re.search(r"^append_only = 1$", (host.repo / "config").read_text(), re.MULTILINE)
    assert host.stamp.is_file()


def drop_append_only(lines: list[str], host: Host) -> int:
    lines[FIRST_KEY_LINE] = lines[FIRST_KEY_LINE].replace("--append-only ", "")
    return FIRST_KEY_LINE + 1


def drop_restrict(lines: list[str], host: Host) -> int:
    lines[FIRST_KEY_LINE - 1] = lines[FIRST_KEY_LINE - 1].removeprefix("restrict,")
    return FIRST_KEY_LINE


def add_bare_key(lines: list[str], host: Host) -> int:
    lines.append(INTRUDER_KEY)
    return len(lines)


def restrict_to_elsewhere(lines: list[str], host: Host) -> int:
    # A sibling that shares the repository's path as a prefix: the match must be exact.
    lines[FIRST_KEY_LINE] = lines[FIRST_KEY_LINE].replace(f"{host.repo}", f"{host.repo}-old")
    return FIRST_KEY_LINE + 1


def drop_quota(lines: list[str], host: Host) -> int:
    lines[FIRST_KEY_LINE] = lines[FIRST_KEY_LINE].replace(f" --storage-quota {QUOTA}", "")
    return FIRST_KEY_LINE + 1


def raise_quota(lines: list[str], host: Host) -> int:
    lines[FIRST_KEY_LINE - 1] = lines[FIRST_KEY_LINE - 1].replace(f"--storage-quota {QUOTA}", "--storage-quota 100T")
    return FIRST_KEY_LINE


def allow_pty_after_command(lines: list[str], host: Host) -> int:
    # restrict's limits can be lifted again by options after it: only from= may follow the command.
    lines[FIRST_KEY_LINE] = lines[FIRST_KEY_LINE].replace('" ssh-ed25519', '",pty ssh-ed25519')
    return FIRST_KEY_LINE + 1


TAMPERINGS = {
    "append-only-dropped": drop_append_only,
    "storage-quota-dropped": drop_quota,
    "storage-quota-raised": raise_quota,
    "pty-allowed-after-the-command": allow_pty_after_command,
    "restrict-dropped": drop_restrict,
    "bare-key-added": add_bare_key,
    "restrict-to-repository-elsewhere": restrict_to_elsewhere,
    "bare-key-added-without-final-newline": add_bare_key,
    "file-missing": None,
}


def tamper(host: Host, how: str) -> int | None:
    """Apply one tampering to authorized_keys; the 1-based number of the offending line, if any."""
    change = TAMPERINGS[how]
    if change is None:
        host.keys.unlink()
        return None
    lines = host.keys.read_text().splitlines()
    bad_line = change(lines, host)
    # sshd reads a last line without a newline too (an appended key may come without one).
    host.keys.write_text("\n".join(lines) + ("" if how.endswith("without-final-newline") else "\n"))
    return bad_line


def assert_refused(proc: subprocess.CompletedProcess, host: Host, bad_line: int | None) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    stderr = proc.stderr
    assert str(host.keys) in stderr
    if bad_line is None:
        assert "missing or unreadable" in stderr
    else:
        assert f"{host.keys} line {bad_line} starts '" in stderr
        assert f"line(s) {bad_line}:" in stderr
        assert "lost its append-only forced command" in stderr
    assert "nothing was compacted" in stderr and "stay recoverable" in stderr
    assert "re-run site.yml" in stderr and "Investigate" in stderr
    assert "compacted " + str(host.repo) not in proc.stdout
    # A line number and the start of the options, never a whole key.
    for key in [*CLIENT_KEYS, INTRUDER_KEY]:
        assert key.split()[1] not in stderr


@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_tampered_keys_fail_and_nothing_is_compacted(host, pristine, how):
    bad_line = tamper(host, how)
    assert snapshot(host.repo) == pristine.state

    proc = host.run(host.unit_argv())

    assert_refused(proc, host, bad_line)
    # Byte-identical to the state whose deleted archive restores byte-identical after a rollback.
    assert snapshot(host.repo) == pristine.state
    assert not host.stamp.exists()


def test_an_authorized_keys2_beside_it_is_refused(host, pristine):
    keys2 = host.keys.parent / "authorized_keys2"
    keys2.write_text(INTRUDER_KEY + "\n")
    try:
        proc = host.run(host.unit_argv())
    finally:
        keys2.unlink()
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert f"{keys2} exists" in proc.stderr and "nothing was compacted" in proc.stderr
    assert INTRUDER_KEY.split()[1] not in proc.stderr
    assert snapshot(host.repo) == pristine.state and not host.stamp.exists()


@pytest.mark.parametrize("situation", ["compaction-held", "not-due"])
def test_tampered_keys_fail_even_when_no_compaction_would_run(host, situation):
    """The check comes first, so the daily timer alerts even during a hold or between compactions."""
    delay_days = 0
    if situation == "compaction-held":
        (host.home / "GRUS-HOLD-COMPACTION").write_text("incident\n")
    else:
        host.stamp.write_text("compacted an hour ago\n")
        delay_days = 7
    ok = host.run(host.unit_argv(delay_days))
    assert ok.returncode == 0, ok.stderr
    assert "not compacting" in ok.stdout or "not due" in ok.stdout
    bad_line = tamper(host, "append-only-dropped")
    before = snapshot(host.repo)

    proc = host.run(host.unit_argv(delay_days))

    assert_refused(proc, host, bad_line)
    assert snapshot(host.repo) == before


def test_comments_blank_lines_and_leading_blanks_are_ignored_like_sshd_does(host):
    forced = forced_prefix(host.repo)
    host.keys.write_text(
        "# managed\n\n   \n\t# an indented comment\n"
        f"{forced}{CLIENT_KEYS[0]}\n"
        f"  {forced}{CLIENT_KEYS[1]}"  # indented, and no newline at the end of the file
    )
    (host.home / "GRUS-HOLD-COMPACTION").write_text("incident\n")  # only the check, no borg

    proc = host.run(host.unit_argv())

    assert proc.returncode == 0, proc.stderr
    assert "not compacting" in proc.stdout


def test_a_from_restriction_after_the_command_is_accepted(host):
    """from= only narrows who may connect: the role renders it after the forced command, the guard accepts it."""
    keys = (
        jinja()
        .get_template("authorized_keys.j2")
        .render(
            ansible_managed="Ansible managed",
            **dict(role_vars(), repository_host_base_dir=str(host.base)),
            item={"name": NAME, "client_keys": CLIENT_KEYS, "client_from": "192.0.2.10,2001:db8::/64"},
        )
    )
    assert f'{forced_prefix(host.repo).rstrip()},from="192.0.2.10,2001:db8::/64" ssh-ed25519 ' in keys
    host.keys.write_text(keys)
    (host.home / "GRUS-HOLD-COMPACTION").write_text("incident\n")  # only the check, no borg

    proc = host.run(host.unit_argv())

    assert proc.returncode == 0, proc.stderr
    assert "not compacting" in proc.stdout


def test_called_the_old_way_with_three_arguments_is_an_error(host):
    before = snapshot(host.repo)
    proc = host.run(host.unit_argv()[:4])
    assert proc.returncode == 2
    assert "usage" in proc.stderr and "AUTHORIZED_KEYS" in proc.stderr
    assert snapshot(host.repo) == before


def unit_capabilities() -> list[str]:
    """The unit's CapabilityBoundingSet=, as setpriv names them (``dac_override``, ...)."""
    unit = (TEMPLATES / "grus-borg-compact@.service.j2").read_text()
    (line,) = re.findall(r"^CapabilityBoundingSet=(.*)$", unit, re.MULTILINE)
    return [cap.removeprefix("CAP_").lower() for cap in line.split()]


def in_the_units_bounding_set(argv: list[str]) -> list[str]:
    """Root as the unit runs it: only the unit's capabilities (no CAP_FOWNER), none inheritable."""
    caps = ",".join(f"+{cap}" for cap in unit_capabilities())
    return ["setpriv", "--inh-caps=-all", f"--bounding-set=-all,{caps}", "--", *argv]


def test_a_due_compaction_replaces_a_stamp_another_user_owns_without_cap_fowner(host, pristine):
    """The measured failure: the role made the stamp borg-<repo>'s, and root without CAP_FOWNER cannot utime it.

    Run within the unit's capability bounding set, the old ``open(stamp, "w")`` + ``os.utime`` ended in a
    PermissionError after the compaction; the stamp is now a new file of root's renamed over the old one.
    """
    assert "fowner" not in unit_capabilities()
    host.stamp.write_text("grus.backup: compaction delay counted from this file's time\n")
    os.chown(host.stamp, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    aged = time.time() - 30 * 86400
    os.utime(host.stamp, (aged, aged))
    before = data_bytes(host.repo)

    proc = host.run(in_the_units_bounding_set(host.unit_argv(7, 7)))

    assert proc.returncode == 0, proc.stderr
    assert f"compacted {host.repo}" in proc.stdout and "PermissionError" not in proc.stderr
    assert before - data_bytes(host.repo) >= pristine.data_size * 0.9
    stat = host.stamp.stat()
    assert (stat.st_uid, stat.st_gid) == (0, 0) and stat.st_mode & 0o777 == 0o600
    assert time.time() - 300 < stat.st_mtime <= time.time()  # the compaction's start: due again in 7 days
    assert host.stamp.read_text().startswith("grus.backup: last compaction started ")
    assert not [p.name for p in host.stamp.parent.iterdir() if p.name.startswith(".grus-last-compact")]  # no temp left
    # Not due the next day: the stamp's time is what the next run reads.
    again = host.run(in_the_units_bounding_set(host.unit_argv(7, 7)))
    assert again.returncode == 0 and "not due" in again.stdout, again.stderr
