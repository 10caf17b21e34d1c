"""Integrity of the MNIST-format idx files (Fashion-MNIST, MNIST), checked on first use.

Every file's decompressed content must have the header and size its data set's file has; where
the published content's checksum is known (Fashion-MNIST), the content must also hash to it. The
checksums are of the *decompressed* files: Debian recompressed its .gz files, so the MD5s that
torchvision lists for the .gz do not match them, although the content is the original. A file
that passed is recorded (path, size, mtime) in a small JSON cache, so later runs only stat it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Protocol

from normbench.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_bytes
from normbench.data.tensor_set import ImageSetSpec
from normbench.errors import UserError
from normbench.files import write_json

# files that passed, by resolved path; in the user's cache, beside torchvision downloads
CACHE_FILE = Path("~/.cache/normbench/data-checks.json")
CACHE_VERSION = 1

# sha256 of the decompressed Fashion-MNIST files (Xiao et al. 2017). Computed here with
# `zcat F.gz | sha256sum` from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1
# (/usr/share/datasets/fashion-mnist), after checking that content against the original: sizes
# 47040016/60008/7840016/10008 bytes, idx headers (0x803, 60000|10000, 28, 28 and 0x801,
# 60000|10000), 6000/1000 images per class, and the decompressed MD5s (f4a8712d.., 9018921c..,
# 8181f547.., 15d48437..) equal to those that other projects list next to the original .gz MD5s
# torchvision checks (f68b3c2d.., d53e105e.., 9fb629c4.., ec29112d..); independent projects list
# these same sha256 values for the upstream files.
# MNIST: no copy on this machine (no Debian package), so no checksum could be verified here; its
# files are checked by header and size only.
CONTENT_SHA256 = {
    "fashion_mnist": {
        "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
# the split sizes the checksums belong to (a data set whose counts were changed has other files)
PUBLISHED_COUNTS = {"train": 60000, "test": 10000}
# how to restore a file of a data set's system-wide copy
SYSTEM_REINSTALL = {
    "fashion_mnist": "`sudo apt-get install --reinstall dataset-fashion-mnist`",
}
IMAGE_SIZE = 28


class CheckedSet(ImageSetSpec, Protocol):
    """What the checks read from a data set's spec (idx_images.IdxSet): also its split sizes and
    its system-wide folder."""

    @property
    def counts(self) -> dict[str, int]: ...

    @property
    def system_dir(self) -> Path | None: ...


def expected_header(key: str, count: int) -> bytes:
    """The idx header of file `key` ("train_images", "test_labels", ...) holding `count` items."""
    if key.endswith("_images"):
        dims = [IMAGES_MAGIC, count, IMAGE_SIZE, IMAGE_SIZE]
    else:
        dims = [LABELS_MAGIC, count]
    return b"".join(d.to_bytes(4, "big") for d in dims)


def expected_content(key: str, spec: CheckedSet) -> tuple[bytes, int, str | None]:
    """(header, decompressed size, sha256 or None) that file `key` of `spec` must have."""
    count = spec.counts[key.split("_")[0]]
    header = expected_header(key, count)
    size = len(header) + count * (IMAGE_SIZE * IMAGE_SIZE if key.endswith("_images") else 1)
    published = spec.counts == PUBLISHED_COUNTS
    sha256 = CONTENT_SHA256.get(spec.name, {}).get(key) if published else None
    return header, size, sha256


def repair_hint(path: Path, spec: CheckedSet) -> str:
    """How to get an intact copy of `path`: reinstall the system package, else download again."""
    system = spec.system_dir
    if system is not None and spec.name in SYSTEM_REINSTALL and path.is_relative_to(system):
        return f"reinstall it: {SYSTEM_REINSTALL[spec.name]}"
    return "delete it and set data.download=true to re-download it (or copy the original there)"


def content_problem(content: bytes, key: str, spec: CheckedSet) -> str | None:
    """What is wrong with the decompressed `content` of file `key`, or None if it is intact."""
    header, size, sha256 = expected_content(key, spec)
    title = spec.title
    if len(content) != size:
        count = spec.counts[key.split("_")[0]]
        items = "images" if key.endswith("_images") else "labels"
        return (
            f"{len(content)} bytes (decompressed) where {title}'s file has {size} ({count} {items})"
        )
    if content[: len(header)] != header:
        return f"idx header {content[: len(header)].hex()} where {title}'s is {header.hex()}"
    if sha256 is not None:
        digest = hashlib.sha256(content).hexdigest()
        if digest != sha256:
            return f"sha256 {digest[:16]}.. of the content differs from {title}'s {sha256[:16]}.."
    return None


def _stamp(path: Path, key: str, spec: CheckedSet) -> dict[str, object]:
    """What a cache entry must hold for `path` to count as checked: its size and mtime now, and
    the expectation it passed (a new checksum or split size invalidates the entry)."""
    header, size, sha256 = expected_content(key, spec)
    stat = path.stat()
    expectation = f"sha256:{sha256}" if sha256 else f"idx:{header.hex()}:{size}"
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "passed": expectation}


def _read_cache() -> dict[str, dict[str, object]]:
    """The cached entries; an unreadable or foreign cache is an empty one (it only saves time)."""
    try:
        cached = json.loads(CACHE_FILE.expanduser().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(cached, dict) or cached.get("version") != CACHE_VERSION:
        return {}
    files = cached.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(entries: dict[str, dict[str, object]]) -> None:
    """Save `entries`, dropping files that no longer exist (test folders, moved data)."""
    kept = {name: entry for name, entry in entries.items() if os.path.exists(name)}
    try:
        write_json(CACHE_FILE.expanduser(), {"version": CACHE_VERSION, "files": kept})
    except OSError:
        pass  # a read-only home: the files are checked again next time, nothing else changes


def check_files(files: dict[str, Path], spec: CheckedSet) -> None:
    """Raise a one-line UserError naming the first truncated or corrupt file of `files` (keys as
    idx_images.FILES) and how to restore it; files that passed before and are unchanged are not
    read again.

    Args:
        files: the located idx files, plain or .gz.
        spec: the data set (its name, title, split sizes and system-wide folder).
    """
    cache = _read_cache()
    passed = dict(cache)
    try:
        for key, path in files.items():
            name = str(path.resolve())
            stamp = _stamp(path, key, spec)
            if cache.get(name) != stamp:
                _check_content(path, key, spec)
                passed[name] = stamp
    finally:  # the files that passed before one failed need not be read again either
        if passed != cache:
            _write_cache(passed)


def _check_content(path: Path, key: str, spec: CheckedSet) -> None:
    """Read (and decompress) `path` and raise the one-line UserError if it is not intact."""
    try:
        content = read_bytes(path)
    except UserError as error:  # unreadable or bad gzip data: add this data set's fix
        raise UserError(f"{error} ({repair_hint(path, spec)})") from None
    problem = content_problem(content, key, spec)
    if problem is not None:
        raise UserError(
            f"{path}: {problem}: the file is truncated or corrupt, {repair_hint(path, spec)}"
        )
