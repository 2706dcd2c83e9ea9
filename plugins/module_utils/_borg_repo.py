# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One borg repository and how to reach it (``BorgRepo``), and the operations on it, one borg call each.

layer 5: may import _runner, _borg_failures, _borg_validate, _borg_parse, _borg_argv.

``BorgRepo.run`` executes an argv from ``_borg_argv`` through ``_runner`` with the
environment of ``borg_env`` and turns a failure into a ``BorgError`` (redacted, naming
the repository); a warning exit code becomes a warning, never silence.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field

from ._borg_argv import (
    DEFAULT_ENCRYPTION,
    DEFAULT_LOCK_WAIT,
    borg_env,
    config_argv,
    create_argv,
    delete_argv,
    delete_planned_argv,
    extract_argv,
    host_key_probe_argv,
    init_argv,
    key_export_argv,
    key_import_argv,
    list_argv,
    prune_argv,
)
from ._borg_failures import FAILURES, BorgError, classify_failure, damaged_items, exit_status
from ._borg_parse import (
    config_append_only,
    file_statuses,
    log_messages,
    parse_json_line,
    parse_json_output,
    parse_log_lines,
    parse_prune_list,
    summarize_archive,
    summarize_message,
)
from ._borg_validate import local_repo_path, validate_common
from ._runner import CommandNotFound, redact, run, stream


@dataclass
class BorgOutput:
    rc: int
    stdout: str
    logs: list
    warnings: list = field(default_factory=list)


@dataclass
class BorgRepo:
    """One repository and how to reach it; ``run`` executes borg against it."""

    repo: str
    passphrase: str | None = field(default=None, repr=False)
    passcommand: str | None = None
    rsh: str | None = None
    remote_path: str | None = None
    lock_wait: int | None = DEFAULT_LOCK_WAIT
    host_id: str | None = None
    keys_dir: str | None = None
    base_dir: str | None = None
    borg: str = "borg"
    timeout: float | None = None
    runner: object = field(default=None, repr=False)  # _runner.run, or a test's stand-in
    streamer: object = field(default=None, repr=False)  # _runner.stream, or a test's stand-in

    @classmethod
    def from_params(cls, params: dict, borg: str = "borg", runner=None, streamer=None) -> BorgRepo:
        """The one way a connection is built: from a mapping with the common options' names
        (the modules' parameters, the backup job's configuration); missing ones take their defaults.

        An empty ``repo`` or a negative ``lock_wait`` is refused here, before borg can run."""
        try:
            validate_common(params)
        except BorgError as exc:
            repo = str(params.get("repo") or "").strip()
            if not repo:
                raise
            secrets = (params["passphrase"],) if params.get("passphrase") else ()
            raise BorgError(f"repository {repo}: {exc.message}", cause=exc.cause, repo=repo, secrets=secrets) from exc
        return cls(
            repo=params["repo"],
            passphrase=params.get("passphrase"),
            passcommand=params.get("passcommand"),
            rsh=params.get("rsh"),
            remote_path=params.get("remote_path"),
            lock_wait=params.get("lock_wait", DEFAULT_LOCK_WAIT),
            host_id=params.get("host_id"),
            keys_dir=params.get("keys_dir"),
            base_dir=params.get("base_dir"),
            borg=borg,
            runner=runner,
            streamer=streamer,
        )

    @property
    def secrets(self) -> tuple:
        return (self.passphrase,) if self.passphrase else ()

    @property
    def local_path(self) -> str | None:
        return local_repo_path(self.repo)

    def env(self) -> dict:
        return borg_env(
            passphrase=self.passphrase,
            passcommand=self.passcommand,
            rsh=self.rsh,
            remote_path=self.remote_path,
            host_id=self.host_id,
            keys_dir=self.keys_dir,
            base_dir=self.base_dir,
        )

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def run(self, argv, *, cwd=None, archive=None, stdin_data=None) -> BorgOutput:
        """Run one argv from the builders above; raise ``BorgError`` unless rc is ok or a warning."""
        runner = self.runner or run
        return self._outcome(
            lambda: runner(
                argv, env=self.env(), cwd=cwd, timeout=self.timeout, stdin_data=stdin_data, secrets=self.secrets
            ),
            archive,
        )

    def stream(self, argv, on_line, *, cwd=None, archive=None) -> BorgOutput:
        """Like ``run``, but each stdout line goes to ``on_line`` as borg prints it (nothing kept)."""
        streamer = self.streamer or stream
        return self._outcome(
            lambda: streamer(argv, on_line, env=self.env(), cwd=cwd, secrets=self.secrets),
            archive,
        )

    def _outcome(self, call, archive) -> BorgOutput:
        try:
            result = call()
        except CommandNotFound as exc:
            raise self.refuse(
                f"borg is not installed ({exc}); needed for repository {self.repo}", "borg_missing"
            ) from exc
        except ValueError as exc:
            if "secret" not in str(exc):
                raise self.refuse(f"cannot run borg for repository {self.repo}: {exc}", "invalid_input") from exc
            # _runner refuses an argv that contains the passphrase verbatim.
            raise self.refuse(
                f"refusing to run borg for repository {self.repo}: the passphrase occurs in the command line "
                "(in the repository, an archive name or a path); use a longer passphrase",
                "secret_in_argv",
            ) from exc
        logs = parse_log_lines(result.stderr)
        if result.timed_out:
            raise BorgError(
                f"borg timed out on repository {self.repo} after {self.timeout} seconds",
                cause="timeout",
                repo=self.repo,
                details=log_messages(logs),
                secrets=self.secrets,
            )
        status = exit_status(result.rc)
        if status == "error":
            raise self.error(result.rc, logs, result.stderr, archive=archive)
        warnings = []
        if status == "warning":
            messages = log_messages(logs, levels=("WARNING", "ERROR", "CRITICAL")) or [f"borg exited {result.rc}"]
            warnings = [self.redact(f"borg warning on repository {self.repo}: {m}") for m in messages]
        return BorgOutput(result.rc, result.stdout, logs, warnings)

    def error(self, rc, logs, stderr="", archive=None) -> BorgError:
        failure = classify_failure(rc, logs, stderr)
        msgid = next((e.get("msgid") for e in logs if e.get("msgid") and e.get("levelname") == "ERROR"), None)
        details = log_messages(logs, levels=("ERROR", "CRITICAL", "WARNING"))
        if failure.cause == "connection_closed":
            said = self.host_key_refusal()
            if said:
                failure = next(f for f in FAILURES if f.cause == "host_key_changed")
                details.append(f"ssh: {said}")
        message = failure.message.format(repo=self.repo, archive=archive if archive is not None else "?")
        said = "; ".join(summarize_message(d) for d in details[-3:] if d != "Local Exception")
        message = f"{message} (borg rc {rc}: {said})" if said else f"{message} (borg rc {rc})"
        return BorgError(
            message, cause=failure.cause, rc=rc, msgid=msgid, repo=self.repo, details=details, secrets=self.secrets
        )

    def host_key_refusal(self) -> str:
        """ssh's own words when it refuses the repository host's key, else ``""``.

        Borg forwards ssh's stderr only when it reads it before it sees the connection close (a race
        in its RPC reader), so a closed connection is asked again, by ssh alone: the same command borg
        ran, stopped after the host key check, so that it never logs in.
        """
        argv = host_key_probe_argv(self.repo, self.rsh)
        if argv is None:
            return ""
        runner = self.runner or run
        try:
            result = runner(argv, env={"LC_ALL": "C"}, timeout=30)
        except (CommandNotFound, ValueError, OSError):
            return ""
        text = result.stderr or ""
        for line in text.splitlines():
            if "Host key verification failed" in line or "has changed and you have requested strict" in line:
                return redact(line.strip(), self.secrets)
        return ""

    def argv_kwargs(self) -> dict:
        return {"borg": self.borg, "lock_wait": self.lock_wait}

    def refuse(self, message: str, cause: str) -> BorgError:
        """A ``BorgError`` about this repository, redacted like borg's own failures."""
        return BorgError(message, cause=cause, repo=self.repo, secrets=self.secrets)

    def failure_result(self, exc: BorgError) -> dict:
        """What a module's ``fail_json`` gets for ``exc``: its fields, the message naming the repository.

        ``exc`` is redacted already; only the repository prefix added here needs it.
        """
        failure = exc.as_dict()
        if self.repo not in failure["msg"]:
            failure["msg"] = self.redact(f"repository {self.repo}: ") + failure["msg"]
        return failure


def repo_info(conn: BorgRepo, match_archives=None) -> dict:
    """Repository facts and its archives, from one ``borg list --json`` (no cache sync needed)."""
    out = conn.run(list_argv(conn.repo, match_archives=match_archives, **conn.argv_kwargs()))
    data = parse_json_output(out.stdout)
    repository = data.get("repository", {})
    encryption = data.get("encryption", {})
    return {
        "repo_id": repository.get("id"),
        "location": repository.get("location"),
        "last_modified": repository.get("last_modified"),
        "encryption": encryption.get("mode"),
        "keyfile": encryption.get("keyfile"),
        "archives": [summarize_archive(a) for a in data.get("archives", [])],
        "warnings": out.warnings,
    }


def list_archives(conn: BorgRepo, match_archives=None) -> list:
    """The archives (name, time, id), oldest first."""
    return repo_info(conn, match_archives=match_archives)["archives"]


def archive_named(conn: BorgRepo, name: str) -> dict | None:
    """The archive called ``name`` (from a listing), ``None`` when there is none."""
    return next((a for a in list_archives(conn) if a["name"] == name), None)


def require_archive(conn: BorgRepo, name: str) -> dict:
    """The archive called ``name``; fails with cause ``archive_missing`` when there is none."""
    archive = archive_named(conn, name)
    if archive is None:
        raise conn.refuse(f"archive {name} does not exist in repository {conn.repo}", "archive_missing")
    return archive


def archive_items(conn: BorgRepo, name: str, paths=(), keep=None) -> list:
    """The items of one archive (optionally under ``paths``), from ``--json-lines``, streamed.

    ``keep(item)`` returns what to keep of each item (``None``: drop it); by default
    the whole item. Only what is kept stays in memory, whatever the archive's size.
    """
    kept = []

    def on_line(line):
        item = parse_json_line(line)
        value = item if keep is None or item is None else keep(item)
        if value is not None:
            kept.append(value)

    conn.stream(list_argv(conn.repo, name, paths, **conn.argv_kwargs()), on_line, archive=name)
    return kept


def init_repository(conn: BorgRepo, encryption=DEFAULT_ENCRYPTION, append_only=False, storage_quota=None) -> list:
    """``borg init``; returns warnings."""
    return conn.run(
        init_argv(conn.repo, encryption, append_only=append_only, storage_quota=storage_quota, **conn.argv_kwargs())
    ).warnings


def read_local_repo_config(path: str) -> dict | None:
    """The ``[repository]`` section of a local repository's config (no borg, no lock)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(os.path.join(path, "config"), encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, configparser.Error, UnicodeDecodeError):
        return None
    if not parser.has_section("repository"):
        return None
    return dict(parser.items("repository"))


def repo_append_only(conn: BorgRepo) -> bool | None:
    """The repository's own append_only flag; ``None`` when it cannot be read (remote)."""
    path = conn.local_path
    return None if path is None else config_append_only(read_local_repo_config(path))


def create_archive(conn: BorgRepo, name: str, paths, **options) -> dict:
    """``borg create --json``: archive facts, stats, warnings and (with list_files) file statuses."""
    argv = create_argv(conn.repo, name, paths, **options, **conn.argv_kwargs())
    out = conn.run(argv, archive=name)
    result = {"warnings": out.warnings, "files": file_statuses(out.logs)}
    if options.get("dry_run"):
        result["archive"] = None
        return result
    data = parse_json_output(out.stdout).get("archive", {})
    result["archive"] = {
        "name": data.get("name"),
        "id": data.get("id"),
        "time": data.get("start"),
        "start": data.get("start"),
        "end": data.get("end"),
        "duration": data.get("duration"),
        "stats": data.get("stats", {}),
    }
    return result


def prune(conn: BorgRepo, retention: dict, match_archives=None, dry_run=False, archives=None) -> dict:
    """``borg prune --list``: ``{"pruned": [...], "kept": [...], "warnings": [...]}``."""
    if archives is None:
        archives = list_archives(conn, match_archives=match_archives)
    argv = prune_argv(conn.repo, retention, match_archives=match_archives, dry_run=dry_run, **conn.argv_kwargs())
    out = conn.run(argv)
    plan = parse_prune_list(out.logs, archives)
    plan["warnings"] = out.warnings
    return plan


def delete_archive(conn: BorgRepo, name: str) -> list:
    """``borg delete REPO::NAME``; returns warnings."""
    return conn.run(delete_argv(conn.repo, name, **conn.argv_kwargs()), archive=name).warnings


def delete_planned(conn: BorgRepo, plan: dict) -> list:
    """Delete the archives a prune dry run planned (``plan["pruned"]``); returns warnings.

    borg warns (rc 1) about a planned archive that is already gone, and deletes the rest.
    """
    names = [archive["name"] for archive in plan["pruned"]]
    return conn.run(delete_planned_argv(conn.repo, names, **conn.argv_kwargs())).warnings


DAMAGED_SHOWN = 20  # damaged paths named in a message (all of them are in the error's details)


def extract(conn: BorgRepo, name: str, dest: str, paths=(), strip_components=0, dry_run=False) -> list:
    """``borg extract`` into ``dest`` (its cwd); returns warnings.

    A file borg extracts with zeros where data was lost (all-zero replacement chunks after a
    ``borg check --repair``) or whose size does not add up is only a warning to borg (rc 1); here it
    is a failure (cause ``damaged_data``) naming the files: such a restore is not the data that was
    backed up. Borg has written the files it could by then (with ``dry_run`` nothing).
    """
    argv = extract_argv(
        conn.repo, name, paths, strip_components=strip_components, dry_run=dry_run, **conn.argv_kwargs()
    )
    out = conn.run(argv, cwd=dest, archive=name)
    damaged = damaged_items(out.rc, out.logs)
    if damaged:
        shown = ", ".join(damaged[:DAMAGED_SHOWN]) + (
            f" (and {len(damaged) - DAMAGED_SHOWN} more)" if len(damaged) > DAMAGED_SHOWN else ""
        )
        raise BorgError(
            f"damaged data in {conn.repo}::{name}: borg extract{' --dry-run' if dry_run else ''} reported "
            f"{len(damaged)} file(s) whose data is not what was archived (all-zero replacement chunks or a size "
            f"inconsistency, borg rc {out.rc}): {shown}. "
            + ("" if dry_run else f"They were written into {dest} with zeros where data was lost; do not trust them. ")
            + "Run `borg check --verify-data` on the repository; a new backup of the same data heals the chunks "
            "(`borg check --repair` afterwards), older archives stay damaged",
            cause="damaged_data",
            rc=out.rc,
            msgid="DamagedData",
            repo=conn.repo,
            details=damaged + out.warnings,
            secrets=conn.secrets,
        )
    return out.warnings


def export_key(conn: BorgRepo, path: str) -> list:
    """``borg key export`` to ``path``; returns warnings."""
    return conn.run(key_export_argv(conn.repo, path, **conn.argv_kwargs())).warnings


def import_key(conn: BorgRepo, path: str) -> list:
    """``borg key import`` from ``path`` (a key export of this repository); returns warnings."""
    return conn.run(key_import_argv(conn.repo, path, **conn.argv_kwargs())).warnings


def set_repo_config(conn: BorgRepo, key: str, value=None, delete=False) -> list:
    """``borg config REPO KEY VALUE`` or ``--delete`` (local repositories only: borg refuses remote ones)."""
    return conn.run(config_argv(conn.repo, key, value, delete=delete, **conn.argv_kwargs())).warnings
