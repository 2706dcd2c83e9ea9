"""The argument specs and the documentation cannot drift apart.

The borg modules' common options (``_argspec``) against the ``grus.backup.borg`` doc fragment, and
every module's whole spec against its DOCUMENTATION (with the fragment it extends): names, types,
defaults, choices, elements, required; ``no_log`` exactly where the docs say the value is secret.
"""

from __future__ import annotations

import pytest
import yaml
from ansible_collections.grus.backup.plugins.doc_fragments.borg import ModuleDocFragment
from ansible_collections.grus.backup.plugins.module_utils import _argspec
from ansible_collections.grus.backup.plugins.modules import borg_archive, borg_repo, nfs_sync

COMMON = {"repo", "passphrase", "passcommand", "rsh", "remote_path", "lock_wait", "host_id", "keys_dir", "base_dir"}
FRAGMENT = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]


def assert_matches(spec: dict, doc: dict) -> None:
    assert set(spec) == set(doc)
    for name, option in spec.items():
        documented = doc[name]
        assert documented["type"] == option["type"], name
        assert documented.get("default") == option.get("default"), name
        assert bool(documented.get("required")) == bool(option.get("required")), name
        assert documented.get("choices") == option.get("choices"), name
        assert documented.get("elements") == option.get("elements"), name


def secret_options(doc: dict) -> set:
    """Options the documentation promises to hide (replaced by ******** in any error text)."""
    return {name for name, option in doc.items() if "V(********)" in " ".join(option["description"])}


def test_common_argument_spec_matches_doc_fragment():
    spec = _argspec.BORG_COMMON_ARGUMENT_SPEC
    assert set(spec) == COMMON
    assert_matches(spec, FRAGMENT)
    assert {name for name, option in spec.items() if option.get("no_log")} == secret_options(FRAGMENT) == {"passphrase"}
    # passcommand names a command, not a secret: explicitly not no_log (Ansible would warn otherwise)
    assert spec["passcommand"]["no_log"] is False
    assert spec["lock_wait"]["default"] == 60


def test_mutual_exclusion_is_documented_on_both_options():
    for pair in _argspec.BORG_COMMON_MUTUALLY_EXCLUSIVE:
        for name, other in (pair, pair[::-1]):
            assert f"Mutually exclusive with O({other})" in " ".join(FRAGMENT[name]["description"])


def test_borg_argument_spec_adds_to_a_copy():
    spec = _argspec.borg_argument_spec(name={"type": "str"})
    spec["repo"]["required"] = False
    assert set(spec) == COMMON | {"name"} and _argspec.BORG_COMMON_ARGUMENT_SPEC["repo"]["required"] is True


@pytest.mark.parametrize(
    ("module", "spec", "fragment"),
    [
        (borg_archive, borg_archive.argument_spec(), FRAGMENT),
        (borg_repo, borg_repo.argument_spec(), FRAGMENT),
        (nfs_sync, nfs_sync.ARGUMENT_SPEC, {}),
    ],
    ids=["borg_archive", "borg_repo", "nfs_sync"],
)
def test_module_spec_matches_its_documentation(module, spec, fragment):
    doc = dict(fragment, **yaml.safe_load(module.DOCUMENTATION)["options"])
    assert_matches(spec, doc)
