# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one line a job logs when an exception nobody foresaw ends it, instead of a bare traceback.

layer 0: may import nothing of grus.backup (standard library only).

Private to grus.backup. Every entry point a unit (or a forced command) runs catches what its own error
types do not cover (a ``PermissionError`` from the sandbox, a bug) and hands it here: the job still writes
its metrics with exit status 2 and sends the fail ping (each entry point does that as for any failure), and
the journal gets one line a person can act on:

    grus-borg-compact: FAILED: unexpected PermissionError: [Errno 1] Operation not permitted: '...'
    (at _compaction_job.py:519 in scheduled_run, from main); the compaction ran, its stamp was not written

A traceback would be the last thing ``systemctl status`` shows, and says neither what was not done nor
that the metrics and the ping went out. Where it was raised (the innermost frame, and the innermost of our
own files when that is another) is enough to find it in the code; ``GRUS_BACKUP_TRACEBACK=1`` in the
unit's environment adds the whole traceback before that line, for a developer.
"""

from __future__ import annotations

import os
import sys
import traceback

EXIT_ERROR = 2
TRACEBACK_ENV = "GRUS_BACKUP_TRACEBACK"
_OURS = os.path.dirname(os.path.abspath(__file__))
_MAX_MESSAGE = 500


def where(exc: BaseException) -> str:
    """``at FILE:LINE in FUNCTION`` of the innermost frame, then ``from`` the callers of our own files."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "at an unknown place"
    inner = frames[-1]
    text = f"at {os.path.basename(inner.filename)}:{inner.lineno} in {inner.name}"
    ours = [f for f in frames[:-1] if os.path.dirname(os.path.abspath(f.filename)) == _OURS]
    if ours and os.path.dirname(os.path.abspath(inner.filename)) != _OURS:
        mine = ours[-1]
        text += f", called at {os.path.basename(mine.filename)}:{mine.lineno} in {mine.name}"
        ours = ours[:-1]
    callers = [f.name for f in reversed(ours[-3:])]
    return text + (f", from {' < '.join(callers)}" if callers else "")


def describe(exc: BaseException) -> str:
    """``unexpected TYPE: MESSAGE (WHERE)``, one line (a job's own error list can take it as it is)."""
    message = " ".join(str(exc).split()) or "(no message)"
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "..."
    return f"unexpected {type(exc).__name__}: {message} ({where(exc)})"


def line(prog: str, exc: BaseException, not_done: str) -> str:
    """``PROG: FAILED: unexpected TYPE: MESSAGE (WHERE); NOT_DONE`` on one line."""
    return f"{prog}: FAILED: {describe(exc)}; {not_done}"


def report(prog: str, exc: BaseException, not_done: str, stream=None, environ=None) -> int:
    """Log the line (after the traceback, when asked for one) to ``stream`` (stderr); returns exit status 2."""
    stream = sys.stderr if stream is None else stream
    if (os.environ if environ is None else environ).get(TRACEBACK_ENV) == "1":
        stream.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    stream.write(line(prog, exc, not_done) + "\n")
    stream.flush()
    return EXIT_ERROR
