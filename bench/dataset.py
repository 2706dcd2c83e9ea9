# Copyright: (c) 2026, grus.backup developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A reproducible benchmark data set: the same seed always gives the same bytes.

The layout mimics a key holder's export, one directory per volume:

* ``vol-media``   incompressible random data in large files (about 66 % of the size);
* ``vol-docs``    generated text, compressible and not duplicated (about 22 %);
* ``vol-small``   many small files (mixed text and random) in a two-level tree, with a
                  few hard links and extended attributes so that ``rsync -aHAX`` has work;
* ``vol-connlogs`` the connection-logs volume that the policy excludes (about 2 %).

``mutate`` changes about a given fraction of the bytes the way a working day does:
rewrites inside large files, appended text, rewritten and new small files.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

MIB = 1024 * 1024
EXCLUDED_VOLUME = "vol-connlogs"
VOLUMES = ("vol-media", "vol-docs", "vol-small", EXCLUDED_VOLUME)
SHARE_RANDOM = 0.66
SHARE_TEXT = 0.22
SHARE_EXCLUDED = 0.02  # the rest (about 10 %) goes to the small files
FILES_PER_DIR = 200


@dataclass
class DatasetInfo:
    root: str
    seed: int
    size_bytes: int
    files: int
    small_files: int
    hardlinks: int
    volumes: tuple
    excluded_volume: str

    def as_dict(self) -> dict:
        return asdict(self)


def parse_size(text: str) -> int:
    """'1G', '200M', '512k', '1048576' -> bytes (binary units)."""
    text = str(text).strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


class _TextSource:
    """Text that compresses like prose but does not deduplicate across files."""

    def __init__(self, rng: random.Random):
        alphabet = "etaoinshrdlucmfwypvbgkqjxz"
        weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 3, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
        words = set()
        while len(words) < 6000:
            words.add("".join(rng.choices(alphabet, weights, k=rng.randint(2, 11))))
        vocabulary = sorted(words)
        self.lines = [" ".join(rng.choices(vocabulary, k=rng.randint(5, 16))).capitalize() + "." for _n in range(50000)]
        self.rng = rng

    def text(self, size: int) -> bytes:
        out = []
        total = 0
        while total < size:
            batch = self.rng.choices(self.lines, k=max(16, (size - total) // 60 + 1))
            chunk = ("\n".join(batch) + "\n").encode()
            out.append(chunk)
            total += len(chunk)
        return b"".join(out)[:size]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _write_random(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(left, 16 * MIB)
            fh.write(rng.randbytes(n))
            left -= n


def _split(total: int, piece: int) -> list[int]:
    if total <= 0:
        return []
    count = max(1, round(total / piece))
    base = total // count
    sizes = [base] * count
    sizes[-1] += total - base * count
    return sizes


def generate(root: Path, size: int, files: int, seed: int = 20261123) -> DatasetInfo:
    """Write the data set under ``root`` (which must not exist or be empty)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    rng = random.Random(seed)  # noqa: S311 - reproducible data, not secrets
    text = _TextSource(random.Random(seed + 1))  # noqa: S311
    written = 0
    count = 0

    big_piece = max(MIB, min(64 * MIB, size // 12))
    for i, n in enumerate(_split(int(size * SHARE_RANDOM), big_piece)):
        _write_random(root / "vol-media" / f"blob-{i:03d}.bin", n, rng)
        written += n
        count += 1

    text_piece = max(256 * 1024, min(16 * MIB, size // 40))
    for i, n in enumerate(_split(int(size * SHARE_TEXT), text_piece)):
        _write(root / "vol-docs" / f"doc-{i:03d}.txt", text.text(n))
        written += n
        count += 1

    for i, n in enumerate(_split(int(size * SHARE_EXCLUDED), max(64 * 1024, size // 100))):
        _write(root / EXCLUDED_VOLUME / f"conn-{i:03d}.log", text.text(n))
        written += n
        count += 1

    small_budget = max(0, size - written)
    mean = max(64, small_budget // max(1, files))
    small = root / "vol-small"
    small_paths = []
    for i in range(files):
        # Log-uniform between mean/8 and mean*2.5 keeps the total near the budget.
        n = max(16, int(mean * (0.125 * 20 ** rng.random())))
        path = small / f"d{i // (FILES_PER_DIR * 50):02d}" / f"s{(i // FILES_PER_DIR) % 50:02d}" / f"f{i:06d}"
        if i % 2:
            _write(path.with_suffix(".dat"), rng.randbytes(n))
            small_paths.append(path.with_suffix(".dat"))
        else:
            _write(path.with_suffix(".txt"), text.text(n))
            small_paths.append(path.with_suffix(".txt"))
        written += n
        count += 1

    hardlinks = 0
    for i, target in enumerate(small_paths[:: max(1, len(small_paths) // 20)][:20]):
        os.link(target, target.with_name(f"link-{i:02d}-{target.name}"))
        hardlinks += 1
    for target in small_paths[:: max(1, len(small_paths) // 20)][:20]:
        try:
            os.setxattr(target, "user.grus.bench", b"tagged")
        except OSError:
            break  # a file system without user xattrs: rsync -X then has nothing to do

    return DatasetInfo(str(root), seed, written, count, files, hardlinks, VOLUMES, EXCLUDED_VOLUME)


def mutate(root: Path, fraction: float, seed: int) -> int:
    """Change about ``fraction`` of the data set's bytes; returns the bytes written."""
    root = Path(root)
    rng = random.Random(seed)  # noqa: S311 - reproducible data, not secrets
    text = _TextSource(random.Random(seed + 1))  # noqa: S311
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    budget = max(4096, int(total * fraction))
    changed = 0

    # 60 %: rewrite 256 KiB regions inside large random files (borg re-chunks around them).
    blobs = sorted((root / "vol-media").glob("*.bin"))
    region = min(256 * 1024, max(4096, budget // 4))
    while blobs and changed < budget * 0.6:
        blob = rng.choice(blobs)
        size = blob.stat().st_size
        n = min(region, size)
        with open(blob, "r+b") as fh:
            fh.seek(rng.randrange(0, max(1, size - n + 1)))
            fh.write(rng.randbytes(n))
        changed += n

    # 20 %: append to documents (logs and journals grow at the end).
    docs = sorted((root / "vol-docs").glob("*.txt"))
    while docs and changed < budget * 0.8:
        n = max(1024, int(budget * 0.05))
        with open(rng.choice(docs), "ab") as fh:
            fh.write(text.text(n))
        changed += n

    # 20 %: rewrite some small files and add new ones.
    small = sorted(p for p in (root / "vol-small").rglob("*") if p.is_file() and not p.name.startswith("link-"))
    serial = 0
    while small and changed < budget:
        victim = rng.choice(small)
        n = victim.stat().st_size
        _write(victim, rng.randbytes(n) if victim.suffix == ".dat" else text.text(n))
        changed += n
        if serial % 4 == 0:
            extra = victim.with_name(f"new-{seed}-{serial:05d}.txt")
            _write(extra, text.text(n))
            changed += n
        serial += 1
    return changed


def du(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (like ``du -sb`` of the apparent size)."""
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
