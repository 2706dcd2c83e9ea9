# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation shared by the modules that run borg (grus.backup.borg_repo, grus.backup.borg_archive).

The options documented in DOCUMENTATION are the argument spec
BORG_COMMON_ARGUMENT_SPEC in plugins/module_utils/_argspec.py: change both together (a unit test compares them).
"""

from __future__ import annotations


class ModuleDocFragment:
    # The shared connection options: grus.backup.borg
    DOCUMENTATION = r"""
options:
  repo:
    description:
      - The borg repository.
      - A local path (V(/srv/borg/antigone)), V(ssh://user@host[:port]/absolute/path), or
        V(user@host:path) (scp style).
      - An empty value is refused; E(BORG_REPO) from the environment is never used.
    type: str
    required: true
  passphrase:
    description:
      - The repository passphrase.
      - Given to borg only in the environment (E(BORG_PASSPHRASE)), never on a command line, and
        replaced by V(********) in any error text.
      - Mutually exclusive with O(passcommand). Prefer O(passcommand) so that the passphrase stays in
        a file on the managed host and never travels through Ansible.
      - On an ad-hoc command line (C(ansible -m ... -a passphrase=...)) a literal passphrase is visible in
        the process list and in Ansible's own error output; use O(passcommand) or a vault variable there.
    type: str
  passcommand:
    description:
      - A command whose standard output is the passphrase (E(BORG_PASSCOMMAND)), for example
        V(cat /root/.config/borg/passphrase).
      - Borg runs it itself, without a shell.
      - Mutually exclusive with O(passphrase).
    type: str
  rsh:
    description:
      - The ssh command borg uses to reach a remote repository (E(BORG_RSH)), for example
        V(ssh -i /root/.ssh/borg_ed25519 -o BatchMode=yes).
      - When not set, C(ssh -o BatchMode=yes -o ServerAliveInterval=30 -o ServerAliveCountMax=4) is
        used, so that ssh never prompts and a dead connection ends borg (and frees the lock).
      - Put C(-o BatchMode=yes) in your own command too; a prompt cannot be answered here.
    type: str
  remote_path:
    description:
      - The borg executable on the repository host (E(BORG_REMOTE_PATH)).
      - Ignored when the repository host forces a command for this key.
    type: str
  lock_wait:
    description:
      - Seconds to wait for the repository lock (C(--lock-wait)) before failing. A negative number is refused.
    type: int
    default: 60
  host_id:
    description:
      - The host id borg writes into locks (E(BORG_HOST_ID)); set it when the hostname is not stable
        (containers) so that a stale lock can be recognised as this host's.
    type: str
  keys_dir:
    description:
      - The directory holding keyfile-mode keys (E(BORG_KEYS_DIR)).
      - Defaults to borg's own choice, C(~/.config/borg/keys) of the user running borg.
    type: path
  base_dir:
    description:
      - The base directory for borg's cache, config and security data (E(BORG_BASE_DIR)).
      - Defaults to the home directory of the user running borg.
    type: path
notes:
  - Needs borg >= 1.4.0 and < 2 on the managed host (1.4.0 is the oldest tested; older borg is refused,
    CVE-2023-36811 among the reasons).
  - Borg sees no E(BORG_*) variable of the environment Ansible runs it in (E(BORG_REPO), E(BORG_PASSPHRASE),
    E(BORG_KEY_FILE), E(BORG_CACHE_DIR), ...); only what these options set reaches it.
  - Borg never gets to ask a question. Its standard input is C(/dev/null) and every confirmation
    (relocated repository, unknown unencrypted repository, dangerous commands) is answered C(no).
requirements:
  - borg (borgbackup) >= 1.4.0, < 2.0 on the managed host
"""

    # The attribute descriptions (as community.crypto's _attributes fragment): grus.backup.borg.attributes
    ATTRIBUTES = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in C(check_mode)),
      when in diff mode.
"""

    # Membership of the action group: grus.backup.borg.actiongroup_borg
    ACTIONGROUP_BORG = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/grus.backup.borg) or C(group/borg) in C(module_defaults) to set defaults for
      this module (for example O(repo), O(passcommand) and O(rsh) once per play).
    support: full
    membership:
      - grus.backup.borg
      - borg
"""
