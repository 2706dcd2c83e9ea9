# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run external commands: argument lists only, explicit environment, no shell.

layer 0: may import nothing of grus.backup (standard library only).

Private to grus.backup and pure standard library, so that the same code can be
shipped beside the scheduled jobs (see the roles) and imported by the modules.
Secrets never travel in argv: callers pass them in ``env`` (or a passcommand)
and list them in ``secrets`` so that any text we hand back is scrubbed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field

REDACTED = "********"

# Environment variables that must never leak from the caller into a child by
# accident: a stray BORG_PASSPHRASE in the operator's shell would otherwise win
# over the passcommand we set, and a BORG_REPO (``set -a; . borg.env``) would be
# the repository borg uses when ours is empty.
_SCRUBBED_FROM_PARENT = (
    "BORG_PASSPHRASE",
    "BORG_NEW_PASSPHRASE",
    "BORG_PASSCOMMAND",
    "BORG_PASSPHRASE_FD",
    "BORG_REPO",
)
# And every other BORG_* as well (BORG_KEY_FILE picks another key, BORG_CACHE_DIR,
# BORG_SECURITY_DIR and BORG_CONFIG_DIR win over BORG_BASE_DIR, BORG_LOGGING_CONF
# breaks --log-json, BORG_*_IS_OK answers a question with yes): borg sees only what
# the caller sets in ``extra``, i.e. the options it was given.
_SCRUBBED_PREFIX = "BORG_"


def _inherited(name: str) -> bool:
    return name not in _SCRUBBED_FROM_PARENT and not name.startswith(_SCRUBBED_PREFIX)


class CommandNotFound(Exception):
    """The program to run does not exist or is not executable."""

    def __init__(self, program: str):
        super().__init__(f"command not found: {program}")
        self.program = program


@dataclass
class Result:
    argv: list
    rc: int
    stdout: str
    stderr: str
    timed_out: bool = False
    secrets: tuple = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def scrubbed(self, text: str) -> str:
        return redact(text, self.secrets)


def redact(text: str, secrets=()) -> str:
    """Replace every secret that appears in ``text``; empty secrets are ignored."""
    if not text:
        return text
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def build_env(extra: dict | None = None, inherit: bool = True) -> dict:
    """The child's environment: the parent's (minus every BORG_* variable) plus ``extra``.

    A value of ``None`` in ``extra`` removes the variable.
    """
    env = {}
    if inherit:
        env = {k: v for k, v in os.environ.items() if _inherited(k)}
    # Stable, parseable output whatever the operator's locale is.
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def _checked_argv(argv, secrets) -> list:
    if isinstance(argv, (str, bytes)) or not argv:
        raise TypeError("argv must be a non-empty list of arguments")
    argv = [os.fspath(a) if not isinstance(a, str) else a for a in argv]
    for secret in secrets:
        if secret and any(secret in arg for arg in argv):
            raise ValueError("refusing to run: a secret value appears in the command line")
    return argv


def run(argv, env=None, cwd=None, timeout=None, stdin_data=None, inherit_env=True, secrets=()):
    """Run ``argv`` (a list, never a string) and capture its output.

    ``secrets`` are values that must not appear in argv; a caller that slips one
    in gets a ValueError before anything runs.
    """
    argv = _checked_argv(argv, secrets)
    try:
        proc = subprocess.run(  # noqa: S603 - argv list, shell is never used
            argv,
            env=build_env(env, inherit=inherit_env),
            cwd=cwd,
            input=stdin_data,
            stdin=None if stdin_data is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandNotFound(argv[0]) from exc
    except PermissionError as exc:
        raise CommandNotFound(argv[0]) from exc
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return Result(argv, -1, out, err, timed_out=True, secrets=tuple(secrets))
    return Result(argv, proc.returncode, proc.stdout, proc.stderr, secrets=tuple(secrets))


def stream(argv, on_line, env=None, cwd=None, inherit_env=True, secrets=()):
    """Run ``argv`` and hand each line of its stdout to ``on_line`` as it comes.

    For outputs that grow with the data (an archive's item listing): nothing of
    stdout is kept, so memory stays flat. stderr (borg's log, small) goes to a
    temporary file and comes back in the Result; ``Result.stdout`` is empty.
    If ``on_line`` raises, the command is stopped and the exception propagates.
    """
    argv = _checked_argv(argv, secrets)
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv list, shell is never used
                argv,
                env=build_env(env, inherit=inherit_env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                errors="replace",
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise CommandNotFound(argv[0]) from exc
        try:
            for line in proc.stdout:
                on_line(line)
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            rc = proc.wait()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return Result(argv, rc, "", stderr, secrets=tuple(secrets))
