"""`ckptfs verify-cache`: a cache entry whose bytes changed on the local disk is found, removed
with --delete, and fetched again by the next mount."""

import hashlib
import os

import ckptfs_cli
from ckptfs_cli import mount_stats, wait_until
from source_tree import ODD


def _run(*args):
    return ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "verify-cache", *args], timeout=120)


def _read(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _entries(cache):
    """Paths of the whole entries of a cache directory: <hh>/<64 hex>."""
    found = []
    for prefix in sorted(os.listdir(cache)):
        sub = os.path.join(cache, prefix)
        if len(prefix) == 2 and os.path.isdir(sub):
            found += [os.path.join(sub, n) for n in sorted(os.listdir(sub)) if len(n) == 64]
    return found


def test_a_changed_entry_is_found_removed_and_fetched_again(published, mount, test_dir):
    cache = os.path.join(test_dir, "cache")
    with published.db() as db:
        chunks = {e.digest: e.size for e in db.extents(ODD)}
    first = mount(published.index, cache_dir=cache, dir_readahead=0)
    assert _read(first.path(ODD)) == published.tree.sha256[ODD]
    assert wait_until(lambda: mount_stats(first.mountpoint)["cache.entries"] >= len(chunks), 30)
    first.unmount()
    entries = _entries(cache)
    assert len(entries) == len(chunks), entries

    clean = _run(cache)
    assert clean.returncode == 0, clean.describe()
    assert clean.stdout.splitlines() == [clean.stdout.splitlines()[-1]], clean.describe()
    assert f"{len(chunks)} entries" in clean.stdout and "; 0 bad" in clean.stdout, clean.describe()

    # One byte of one entry changes on the disk, its size stays.
    changed = entries[len(entries) // 2]
    with open(changed, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0x01]))

    found = _run(cache)
    assert found.returncode == 1, found.describe()
    lines = found.stdout.splitlines()
    assert len(lines) == 2, found.describe()
    assert lines[0].startswith(f"bad {changed}: SHA-256 is "), found.describe()
    assert "1 bad (ckptfs verify-cache --delete removes them)" in lines[1], found.describe()
    assert os.path.exists(changed)

    removed = _run(cache, "--delete", "--jobs", "3")
    assert removed.returncode == 0, removed.describe()
    assert removed.stdout.splitlines()[0].endswith("(removed)"), removed.describe()
    assert "1 bad, 1 removed" in removed.stdout, removed.describe()
    assert not os.path.exists(changed)
    assert len(_entries(cache)) == len(chunks) - 1

    # The next mount fetches that one chunk again and reads the file right.
    second = mount(published.index, cache_dir=cache, dir_readahead=0)
    assert _read(second.path(ODD)) == published.tree.sha256[ODD]
    stats = mount_stats(second.mountpoint)
    size = chunks[os.path.basename(changed)]
    assert stats["fetch.bytes_fetched"] + stats["fetch.range_bytes_fetched"] >= size, stats
    assert stats["store.fetches"] + stats["store.block_fetches"] >= 1, stats


def test_a_cache_directory_that_is_not_there_is_one_line(test_dir):
    missing = os.path.join(test_dir, "no-cache")
    result = _run(missing)
    assert result.returncode == 1, result.describe()
    lines = result.stderr_lines()
    assert len(lines) == 1 and lines[0].startswith("ckptfs: ") and missing in lines[0], \
        result.describe()
    assert result.stdout == "", result.describe()
    usage = _run(missing, "--jobs", "0")
    assert usage.returncode == 2, usage.describe()


def test_another_users_cache_is_an_error_not_bad_entries(user_sandbox):
    as_user = user_sandbox["as_user"].split()
    closed = os.path.join(user_sandbox["base"], "closed-cache")
    readable = os.path.join(user_sandbox["base"], "readable-cache")
    name = hashlib.sha256(b"chunk").hexdigest()
    for cache, dir_mode in ((closed, 0o700), (readable, 0o755)):
        os.makedirs(os.path.join(cache, name[:2]))
        entry = os.path.join(cache, name[:2], name)
        with open(entry, "wb") as f:
            f.write(b"chunk")
        os.chmod(entry, 0o600)  # As a mount writes them (in 0700 directories).
        os.chmod(os.path.join(cache, name[:2]), 0o755)
        os.chmod(cache, dir_mode)

    for cache, needle in ((closed, closed), (readable, name)):
        result = ckptfs_cli.run(
            [*as_user, user_sandbox["ckptfs"], "verify-cache", "--delete", cache], timeout=60)
        assert result.returncode == 1, result.describe()
        lines = result.stderr_lines()
        assert len(lines) == 1 and "Permission denied" in lines[0], result.describe()
        assert result.stdout == "", result.describe()
        unread = ckptfs_cli.run(
            [*as_user, user_sandbox["ckptfs"], "verify-cache", cache], timeout=60)
        assert unread.returncode == 1 and unread.stdout == "", unread.describe()
        assert needle in unread.stderr and "Permission denied" in unread.stderr, unread.describe()
    # Root's own check still finds the entry good.
    assert _run(closed).returncode == 0
