# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Dead man's switch pings: healthchecks.io / Uptime Kuma style, optional, never fatal.

layer 0: may import nothing of grus.backup (standard library only).

Private to grus.backup. A job with a ping URL (the environment variable ``GRUS_BACKUP_PING_URL``,
which the roles set from a root-only environment file: the URL is a credential of the check, so it
is never in argv, logs or metrics) calls ``<url>/start`` when it starts, ``<url>`` when it ends
with exit status 0, ``<url>/fail`` otherwise. The service notices a ping that never comes (a
stopped timer, a host that is down) which no metric on the host itself can show. Each ping has a
short timeout and a failed ping is a logged warning, never a failed job.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

ENV = "GRUS_BACKUP_PING_URL"
DEFAULT_TIMEOUT = 5.0
SUFFIX = {"start": "/start", "success": "", "fail": "/fail"}


class Pinger:
    """Pings ``url`` (None: off). Warnings are collected in ``warnings``, never raised."""

    def __init__(self, url: str | None, timeout: float = DEFAULT_TIMEOUT, opener=None):
        # Standard library only (shipped beside the jobs, outside Ansible): an OpenerDirector's open.
        self.url = (url or "").strip().rstrip("/") or None
        self.timeout = timeout
        self.opener = opener or urllib.request.build_opener().open
        self.warnings: list = []
        if self.url and not self.url.startswith(("http://", "https://")):
            self.warnings.append(f"{ENV} is not an http(s) URL: no pings are sent")
            self.url = None

    @classmethod
    def from_env(cls, environ=None) -> Pinger:
        return cls((os.environ if environ is None else environ).get(ENV))

    def ping(self, kind: str, body: str = "") -> bool:
        if not self.url:
            return False
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            self.url + SUFFIX[kind], data=body.encode("utf-8"), method="POST"
        )
        started = time.monotonic()
        try:
            with self.opener(request, timeout=self.timeout) as response:
                response.read(1024)
        except urllib.error.HTTPError as exc:
            self.warnings.append(f"the {kind} ping was answered with HTTP {exc.code}; the job is not affected")
            return False
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            self.warnings.append(
                f"the {kind} ping failed after {time.monotonic() - started:.1f} s ({type(exc).__name__}: "
                f"{str(reason)[:120]}); the job is not affected"
            )
            return False
        return True

    def start(self) -> bool:
        return self.ping("start")

    def finish(self, exit_status: int, summary: str = "") -> bool:
        return self.ping("success" if exit_status == 0 else "fail", f"exit status {exit_status}\n{summary}"[:10000])
