"""The key holder's sync receiver: sizes, reserves, the refusal line the sync client reads."""

from __future__ import annotations

import os

import pytest
from ansible_collections.grus.backup.plugins.module_utils import _sync_receive as receive
from ansible_collections.grus.backup.plugins.module_utils._rsync_output import receiver_refusal


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("", None),
        ("0", None),
        (None, None),
        ("4096", 4096),
        ("1K", 1024),
        ("1.5M", 1572864),
        ("500G", 500 << 30),
        ("2t", 2 << 40),
        ("3GiB", 3 << 30),
    ],
)
def test_sizes(text, size):
    assert receive.parse_size(text) == size


@pytest.mark.parametrize("text", ["-1G", "ten", "5%", "1.2.3G", "1X"])
def test_bad_sizes_are_refused_naming_the_value(text):
    with pytest.raises(ValueError, match="invalid size"):
        receive.parse_size(text)


def test_reserves():
    assert receive.parse_reserve("5%") == ("percent", 5.0)
    assert receive.parse_reserve("20G") == ("bytes", 20 << 30)
    assert receive.parse_reserve("") is None and receive.parse_reserve("0%") is None
    with pytest.raises(ValueError, match="below 100%"):
        receive.parse_reserve("100%")


def test_the_refusal_line_is_what_the_sync_client_reads():
    for cause in (receive.CAUSE_QUOTA, receive.CAUSE_FULL, receive.CAUSE_SETUP):
        line = receive.refusal_line(cause, "the client's\ndirectory   is over")
        stderr = f"some ssh noise\n{line}\nrsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"
        assert receiver_refusal(stderr) == (cause, "the client's directory is over")
    assert receiver_refusal("rsync error: some other failure (code 12)") is None


def test_tree_bytes_counts_hard_links_once(tmp_path):
    (tmp_path / "a").write_bytes(os.urandom(64 * 1024))
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c").write_bytes(os.urandom(64 * 1024))
    used = receive.tree_bytes(str(tmp_path))
    assert 128 * 1024 <= used < 3 * 64 * 1024


def test_a_bad_size_in_the_forced_command_refuses_by_name(capsys, tmp_path):
    assert receive.main(["--dir", str(tmp_path), "--quota", "lots"]) == receive.EXIT_REFUSED
    assert "REFUSED (key_holder_setup): invalid size 'lots'" in capsys.readouterr().err
    assert receive.main(["--dir", str(tmp_path / "missing")]) == receive.EXIT_REFUSED
    assert "is not a directory" in capsys.readouterr().err
