"""Integrity checks of the idx files (normbench.data.integrity): truncated and bit-flipped copies
of the real Fashion-MNIST files fail with one line naming the file and the fix (exit 2 from the
CLI), intact files are read once and then only stat-ed (the cache), MNIST by header and size."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch
from test_data import config, write_tiny_idx_set

from normbench.data import fashion_mnist, integrity, mnist
from normbench.data.idx import read_idx
from normbench.data.idx_images import FILES, find_files
from normbench.errors import UserError

DEBIAN = fashion_mnist.DEBIAN_DIR
needs_debian_copy = pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist",
)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One cache for the tests of this module, never the user's: the real files are hashed once."""
    return tmp_path_factory.mktemp("cache") / "data-checks.json"


@pytest.fixture(autouse=True)
def cache_file(shared_cache, monkeypatch) -> Path:
    monkeypatch.setattr(integrity, "CACHE_FILE", shared_cache)
    return shared_cache


def copy_with(folder: Path, key: str, content: bytes, gz: bool = False) -> Path:
    """The real Fashion-MNIST files in `folder` (links to them, so that they are hashed once in
    this module), file `key` replaced by `content`."""
    folder.mkdir(parents=True)
    for other, name in FILES.items():
        if other != key:
            (folder / f"{name}.gz").symlink_to(DEBIAN / f"{name}.gz")
    target = folder / (FILES[key] + (".gz" if gz else ""))
    target.write_bytes(content)
    return target


def real_content(key: str) -> bytes:
    return gzip.decompress((DEBIAN / f"{FILES[key]}.gz").read_bytes())


def rewrite(path: Path, content: bytes) -> None:
    """Replace the content and move the mtime on (a write within one clock tick may not)."""
    before = path.stat()
    path.write_bytes(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))


def one_line(error: UserError | str, *words: str) -> str:
    message = str(error).rstrip("\n")
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


@needs_debian_copy
def test_the_debian_copy_passes_and_later_checks_only_stat_it(cache_file, monkeypatch):
    spec = fashion_mnist.spec()
    files = find_files(DEBIAN)
    assert files is not None
    integrity.check_files(files, spec)
    entries = json.loads(cache_file.read_text())["files"]
    for path in files.values():
        assert entries[str(path.resolve())]["passed"].startswith("sha256:")

    def no_reading(path):
        raise AssertionError(f"{path} read again although unchanged")

    monkeypatch.setattr(integrity, "read_bytes", no_reading)
    integrity.check_files(files, spec)


def flipped_labels() -> bytes:
    """The first test label with its lowest bit flipped (9 -> 8): still a valid idx file with
    valid labels, so only the checksum can tell."""
    content = bytearray(real_content("test_labels"))
    content[8] ^= 0x01
    return bytes(content)


@needs_debian_copy
def test_a_bit_flipped_copy_in_data_root_is_one_line_and_exit_2(normbench, tmp_path):
    root = tmp_path / "fm"
    bad = copy_with(root, "test_labels", flipped_labels())
    assert read_idx(bad).tolist()[0] == 8  # the reader alone cannot tell
    result = normbench("run", f"data.root={root}", "epochs=1", "log.progress=none")
    assert result.code == 2, result.err
    one_line(result.err, str(bad), "sha256", "differs from Fashion-MNIST's", "truncated or corrupt")
    assert "data.download=true to re-download" in result.err
    assert not result.root.exists(), "nothing written"


@needs_debian_copy
@pytest.mark.parametrize(
    "key,gz,words",
    [
        ("test_images", False, ["7839232 bytes (decompressed)", "has 7840016", "truncated"]),
        ("test_labels", True, ["bad gzip data", "truncated or corrupt"]),
    ],
)
def test_a_truncated_copy_in_data_root_is_one_line(key, gz, words, tmp_path):
    if gz:
        content = (DEBIAN / f"{FILES[key]}.gz").read_bytes()[:-100]
    else:
        content = real_content(key)[:-784]  # the last image missing
    bad = copy_with(tmp_path / "fm", key, content, gz=gz)
    with pytest.raises(UserError) as error:
        integrity.check_files(find_files(tmp_path / "fm") or {}, fashion_mnist.spec())
    one_line(error.value, str(bad), "data.download=true to re-download", *words)


@needs_debian_copy
def test_a_corrupt_system_copy_names_the_package_to_reinstall(tmp_path, monkeypatch):
    system = tmp_path / "debian"
    bad = copy_with(system, "test_labels", flipped_labels())
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", system)
    with pytest.raises(UserError) as error:
        fashion_mnist.load(config("fashion_mnist", root=None), torch.device("cpu"))
    one_line(error.value, str(bad), "sudo apt-get install --reinstall dataset-fashion-mnist")


@needs_debian_copy
def test_a_file_changed_after_it_passed_is_checked_again(tmp_path):
    target = copy_with(tmp_path / "fm", "test_labels", real_content("test_labels"))
    files, spec = find_files(tmp_path / "fm"), fashion_mnist.spec()
    assert files is not None
    integrity.check_files(files, spec)
    rewrite(target, flipped_labels())  # same size
    with pytest.raises(UserError, match="sha256"):
        integrity.check_files(files, spec)


def test_mnist_is_checked_by_header_and_size(tmp_path, monkeypatch):
    """No MNIST checksum could be verified (no copy here), so MNIST files are checked by header
    and size."""
    cache_file = tmp_path / "data-checks.json"
    monkeypatch.setattr(integrity, "CACHE_FILE", cache_file)
    monkeypatch.setattr(mnist, "EXPECTED_COUNTS", {"train": 30, "test": 10})
    write_tiny_idx_set(tmp_path / "mnist", 30, 10, seed=0, gz=False, shuffle_train_labels=False)
    files, spec = find_files(tmp_path / "mnist"), mnist.spec()
    assert files is not None
    integrity.check_files(files, spec)  # random pixels: no checksum applies
    entries = json.loads(cache_file.read_text())["files"]
    assert {entry["passed"] for entry in entries.values()} == {
        f"idx:{integrity.expected_header(key, n).hex()}:{size}"
        for key, n, size in [
            ("train_images", 30, 16 + 30 * 784),
            ("train_labels", 30, 8 + 30),
            ("test_images", 10, 16 + 10 * 784),
            ("test_labels", 10, 8 + 10),
        ]
    }
    labels = files["test_labels"]
    rewrite(labels, b"\x00\x00\x08\x03" + labels.read_bytes()[4:])  # images magic, same size
    with pytest.raises(UserError) as error:
        integrity.check_files(files, spec)
    one_line(error.value, str(labels), "idx header 00000803", "re-download")
    rewrite(labels, labels.read_bytes()[:-1])
    with pytest.raises(UserError, match="17 bytes .* where MNIST's file has 18"):
        integrity.check_files(files, spec)


def test_the_checksums_apply_to_the_published_split_sizes_only():
    spec = fashion_mnist.spec()
    assert integrity.expected_content("test_labels", spec) == (
        integrity.expected_header("test_labels", 10000),
        10008,
        integrity.CONTENT_SHA256["fashion_mnist"]["test_labels"],
    )
    small = type("Spec", (), {"name": "fashion_mnist", "counts": {"train": 60, "test": 20}})
    assert integrity.expected_content("test_labels", small)[2] is None
    assert integrity.expected_content("test_labels", mnist.spec())[2] is None


def test_an_unusable_cache_only_costs_a_recheck(tmp_path, monkeypatch):
    write_tiny_idx_set(tmp_path / "mnist", 30, 10, seed=0, gz=True, shuffle_train_labels=False)
    monkeypatch.setattr(mnist, "EXPECTED_COUNTS", {"train": 30, "test": 10})
    files = find_files(tmp_path / "mnist")
    assert files is not None
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(integrity, "CACHE_FILE", blocker / "data-checks.json")  # unwritable
    integrity.check_files(files, mnist.spec())
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    monkeypatch.setattr(integrity, "CACHE_FILE", garbage)
    integrity.check_files(files, mnist.spec())
    assert json.loads(garbage.read_text())["version"] == integrity.CACHE_VERSION
