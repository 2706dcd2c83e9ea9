"""Offline stand-in for ansible-test's pip bootstrap script (get-pip.py).

ansible-test downloads get-pip from a host that the test machines cannot reach;
it first looks for a cached copy, which `make sanity` points at this file.
See ../shared/TESTBED.md (7): ensurepip must run in a subprocess, or pip's
configuration (the package index settings) is disabled for later installs.
"""

import subprocess
import sys

DROPPED = {"--no-setuptools", "--no-wheel"}


def main() -> int:
    subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
    args = [a for a in sys.argv[1:] if a not in DROPPED]
    if not args:
        return 0
    return subprocess.run([sys.executable, "-m", "pip", "install", *args], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
