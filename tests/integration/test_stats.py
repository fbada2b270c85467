"""`ckptfs stats` and the root's user.ckptfs.stats attribute on a real mount."""

import collections
import ctypes
import errno
import hashlib
import os
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

import ckptfs_cli
import source_tree
from ckptfs_cli import wait_until
from source_tree import ODD

ATTR = "user.ckptfs.stats"


def stats(mnt):
    """`ckptfs stats MOUNTPOINT` as {name: int}; fails the test unless it succeeded."""
    result = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "stats", mnt.mountpoint], timeout=30)
    assert result.returncode == 0, result.describe()
    return ckptfs_cli.parse_stats(result.stdout)


def read_whole(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def distinct_chunk_bytes(published, rel):
    with published.db() as db:
        return sum({e.digest: e.size for e in db.extents(rel)}.values())


def test_stats_count_a_whole_read_and_a_remount_reads_it_from_the_cache(published, mount,
                                                                        test_dir):
    cache = os.path.join(test_dir, "shared-cache")
    size = source_tree.FILES[ODD][0]
    chunk_bytes = distinct_chunk_bytes(published, ODD)
    with published.db() as db:
        chunks = len({e.digest for e in db.extents(ODD)})
    # Without directory readahead only this file's chunks are fetched, so the second mount has
    # nothing left to fetch.
    first = mount(published.index, cache_dir=cache, dir_readahead=0)
    before = stats(first)
    assert before["fs.bytes_read"] == 0 and before["fetch.bytes_fetched"] == 0, before

    assert read_whole(first.path(ODD)) == published.tree.sha256[ODD]

    # A fetch's last bytes reach the reader before the fetch counts them, and the cache file is
    # written after that: wait for both (bounded), then check.
    def fetched_and_cached():
        values = stats(first)
        done = values["fetch.bytes_fetched"] >= chunk_bytes and values["cache.entries"] >= chunks
        return values if done else None

    after = wait_until(fetched_and_cached, 30) or stats(first)
    assert after["fs.bytes_read"] == size, after
    assert after["fs.reads"] >= 1, after
    assert after["fetch.bytes_fetched"] >= chunk_bytes, after
    assert after["cache.entries"] >= chunks, after
    assert after["cache.used_bytes"] >= chunk_bytes, after
    assert after["fs.eio_fetch"] == 0 and after["fetch.failed_fetches"] == 0, after
    first.unmount()

    second = mount(published.index, cache_dir=cache, dir_readahead=0)
    assert read_whole(second.path(ODD)) == published.tree.sha256[ODD]
    again = stats(second)
    assert again["fs.bytes_read"] == size, again
    # A cached chunk is read from the disk cache by the reader (cache_hits) or loaded into
    # memory ahead of it by readahead (disk_loads).
    assert again["store.cache_hits"] + again["store.disk_loads"] >= 1, again
    assert again["fetch.bytes_fetched"] == 0, again
    assert again["fetch.range_bytes_fetched"] == 0, again
    assert again["fetch.attempts"] == 0, again
    assert again["cache.entries"] >= chunks, again


def test_stats_list_every_group_and_node_and_the_daemon_memory(published, mount):
    mnt = mount(published.index, memory_cache="32M")
    ckptfs_cli.wait_for_greetings(mnt.mountpoint)
    values = stats(mnt)
    for prefix in ("fs.", "store.", "fetch.", "cache.", "memory."):
        assert any(name.startswith(prefix) for name in values), f"no {prefix}* in {values}"
    for node in published.nodes:
        for field in ("in_flight", "bytes_per_second", "consecutive_failures", "backing_off",
                      "backoff_ms", "awaiting_probe", "unanswered"):
            assert values[f"node.{node.name}.{field}"] == 0, values
    assert values["cache.capacity_bytes"] > 0, values
    # Nothing fetched yet: no chunk buffer in use, against the configured budget.
    assert values["memory.chunk_budget_bytes"] == 32 << 20, values
    assert values["memory.chunk_bytes"] == 0 and values["memory.ready_chunks"] == 0, values
    # Idle buffers made at start, 16 MiB whatever the chunk size: four of the default 4 MiB.
    assert values["memory.spare_bytes"] == 16 << 20, values
    assert values["daemon.rss_bytes"] > 0, values
    assert values["daemon.peak_rss_bytes"] >= values["daemon.rss_bytes"], values


def _getxattr_size(path, name, size):
    """getxattr(2) with a buffer of `size` bytes (None for size 0): (result, errno)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.getxattr.restype = ctypes.c_ssize_t
    libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    buf = ctypes.create_string_buffer(size) if size else None
    n = libc.getxattr(os.fsencode(path), name.encode(), buf, size)
    return n, ctypes.get_errno() if n < 0 else 0


def test_the_root_has_exactly_the_stats_attribute(published, mount):
    mnt = mount(published.index)
    root = mnt.mountpoint
    assert os.listxattr(root) == [ATTR]
    text = os.getxattr(root, ATTR).decode()
    assert text.startswith("fs.reads "), text
    assert text.endswith("\n"), text

    # Size 0 asks for the length; a buffer too small is ERANGE.
    length, err = _getxattr_size(root, ATTR, 0)
    assert err == 0 and length > 100, (length, err)
    n, err = _getxattr_size(root, ATTR, 16)
    assert (n, err) == (-1, errno.ERANGE)

    for path in (mnt.path(ODD), mnt.path("nested"), mnt.path("latest")):
        assert os.listxattr(path) == [], path
        with pytest.raises(OSError) as info:
            os.getxattr(path, ATTR)
        assert info.value.errno == errno.ENODATA, (path, info.value)
    with pytest.raises(OSError) as info:
        os.getxattr(root, "user.other")
    assert info.value.errno == errno.ENODATA, info.value
    # Only user.* attributes can exist; the other namespaces are not supported at all.
    for name in ("security.selinux", "trusted.ckptfs.stats", "system.posix_acl_access"):
        with pytest.raises(OSError) as info:
            os.getxattr(root, name)
        assert info.value.errno == errno.EOPNOTSUPP, (name, info.value)

    with pytest.raises(OSError) as info:
        os.setxattr(root, "user.x", b"1")
    assert info.value.errno == errno.EROFS, info.value
    with pytest.raises(OSError) as info:
        os.removexattr(root, ATTR)
    assert info.value.errno == errno.EROFS, info.value
    ls = ckptfs_cli.run(["ls", "-l", root], timeout=30)
    assert ls.returncode == 0, ls.describe()


def test_stats_in_the_prometheus_format_parse_and_show_a_mount_that_is_not_there(
        published, mount, test_dir):
    first = mount(published.index)
    second = mount(published.index)
    ckptfs_cli.wait_for_greetings(first.mountpoint)
    assert read_whole(first.path(ODD)) == published.tree.sha256[ODD]
    plain = os.path.join(test_dir, "plain")
    os.mkdir(plain)
    # The first mount named again, as a path of its own: its numbers once, as one series each.
    again = os.path.join(first.mountpoint, ".")
    result = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "stats", "--prometheus", first.mountpoint,
                             second.mountpoint, plain, again], timeout=30)

    # Every mount's numbers are printed; the one that is not a mount is down, and said once.
    assert result.returncode == 1, result.describe()
    lines = result.stderr_lines()
    assert len(lines) == 1 and plain in lines[0], result.describe()
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    up = [(s.labels["mountpoint"], s.value) for s in families["ckptfs_up"].samples]
    assert up == [(first.mountpoint, 1), (second.mountpoint, 1), (plain, 0)], up

    reads = families["ckptfs_fs_bytes_read"]
    assert reads.type == "counter", reads
    read = {s.labels["mountpoint"]: s.value for s in reads.samples}
    assert read == {first.mountpoint: source_tree.FILES[ODD][0], second.mountpoint: 0}, read
    assert families["ckptfs_cache_capacity_bytes"].type == "gauge"
    in_flight = families["ckptfs_node_in_flight"].samples
    assert {(s.labels["mountpoint"], s.labels["node"]) for s in in_flight} == {
        (m.mountpoint, n.name) for m in (first, second) for n in published.nodes}, in_flight
    # The same numbers as the plain text, one sample per line of it.
    plain_text = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "stats", second.mountpoint],
                                timeout=30)
    samples = sum(len(f.samples) for f in families.values())
    assert samples == 3 + len(stats(first)) + len(plain_text.stdout.splitlines()), result.stdout

    usage = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "stats", first.mountpoint,
                            second.mountpoint], timeout=30)
    assert usage.returncode == 2, usage.describe()
    assert "--prometheus" in usage.stderr, usage.describe()

    # Without a mountpoint: every ckptfs mount in the mount table, both of these among them.
    every = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "stats", "--prometheus"], timeout=60)
    families = {f.name: f for f in text_string_to_metric_families(every.stdout)}
    up = {s.labels["mountpoint"]: s.value for s in families["ckptfs_up"].samples}
    assert up[first.mountpoint] == 1 and up[second.mountpoint] == 1, every.describe()
    assert plain not in up, up
    first.unmount()
    after = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "stats", "--prometheus"], timeout=60)
    up = {s.labels["mountpoint"]: s.value
          for f in text_string_to_metric_families(after.stdout) if f.name == "ckptfs_up"
          for s in f.samples}
    assert first.mountpoint not in up and up.get(second.mountpoint) == 1, after.describe()


def test_the_daemon_threads_are_named_by_their_job(published, mount):
    mnt = mount(published.index, fetchers=3)
    assert read_whole(mnt.path(ODD)) == published.tree.sha256[ODD]
    [pid] = ckptfs_cli.daemon_pids(mnt.mountpoint)
    names = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            names[f.read().strip()] += 1
    # One prefetch worker per fetcher; the main thread and libfuse's workers keep the process
    # name, which ps and pgrep show.
    assert names["ckptfs-prefetch"] == 3, names
    assert names["ckptfs-fetch"] >= 1 and names["ckptfs-cachewr"] == 1, names
    assert names["ckptfs"] >= 2, names
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "ckptfs"


def test_ls_l_of_a_directory_makes_no_request_per_entry(cluster, mount, test_dir):
    src = os.path.join(test_dir, "many")
    os.makedirs(os.path.join(src, "dir"))
    names = [f"f{i:03}" for i in range(300)]
    for i, name in enumerate(names):
        with open(os.path.join(src, "dir", name), "w") as f:
            f.write("x" * i)
    index = os.path.join(test_dir, "many.index")
    ckptfs_cli.publish(src, index, cluster)
    mnt = mount(index)
    listed = os.path.join(mnt.mountpoint, "dir")

    before = stats(mnt)
    ls = ckptfs_cli.run(["ls", "-l", listed], timeout=60)
    after = stats(mnt)

    assert ls.returncode == 0, ls.describe()
    sizes = {line.split()[-1]: int(line.split()[4]) for line in ls.stdout.splitlines()[1:]}
    assert sizes == {name: i for i, name in enumerate(names)}, ls.stdout
    # The listing (READDIRPLUS) carries each entry's attributes, so nothing is looked up but
    # "dir" itself; with plain READDIR each of the 300 names was a LOOKUP.
    assert after["fs.lookups"] - before["fs.lookups"] <= 2, (before, after)
    # ls asks for security.selinux and the ACL of the first entry, gets EOPNOTSUPP and asks no
    # more on this file system; with ENODATA it asked for each of the 300 (600 requests). The
    # stats of `after` are one request too.
    assert after["fs.xattr_requests"] - before["fs.xattr_requests"] <= 5, (before, after)


def _assert_one_line_failure(result, *needles):
    assert result.returncode != 0, result.describe()
    lines = result.stderr_lines()
    assert len(lines) == 1 and lines[0].startswith("ckptfs: "), result.describe()
    for needle in needles:
        assert needle in lines[0], result.describe()
    assert result.stdout == "", result.describe()


def test_stats_of_something_not_a_mount_fails_with_one_clear_line(published, mount, test_dir):
    plain = os.path.join(test_dir, "plain")
    os.mkdir(plain)
    run = ckptfs_cli.run
    _assert_one_line_failure(run([ckptfs_cli.ckptfs_bin(), "stats", plain]),
                             plain, "is not the root of a ckptfs mount")
    missing = os.path.join(test_dir, "missing")
    _assert_one_line_failure(run([ckptfs_cli.ckptfs_bin(), "stats", missing]),
                             missing, "no such file or directory")
    mnt = mount(published.index)
    inside = mnt.path("nested")
    _assert_one_line_failure(run([ckptfs_cli.ckptfs_bin(), "stats", inside]),
                             inside, "is not the root of a ckptfs mount")


def test_stats_of_a_mount_whose_daemon_is_stopped_fails_instead_of_hanging(published, mount):
    """An operator asks a stuck mount what it is doing: the answer must come, even if it is
    that the daemon does not answer (before, `ckptfs stats` waited for it for ever)."""
    mnt = mount(published.index)
    pids = mnt.pids()
    assert pids, "no daemon found for the mount"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        result = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "stats", mnt.mountpoint], timeout=60)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    _assert_one_line_failure(result, mnt.mountpoint, "did not answer within 5 s",
                             "stopped or hung")
    assert result.elapsed < 30, result.describe()
    # The daemon, going on, answers again.
    assert ckptfs_cli.mount_stats(mnt.mountpoint)["fs.reads"] >= 0


def _small_file_and_its_first_replica(published):
    """A one-chunk file and the node the mount asks first for it (replicas in node id order)."""
    with published.db() as db:
        for rel in published.tree.single_chunk_files(4 << 20):
            extents = db.extents(rel)
            if len(extents) == 1 and len(extents[0].nodes) >= 2:
                return rel, extents[0].nodes[0]
    raise AssertionError("no one-chunk file with two replicas in the published tree")


def test_stats_show_a_stopped_node_failing(published, mount):
    rel, first_replica = _small_file_and_its_first_replica(published)
    mnt = mount(published.index)
    ckptfs_cli.wait_for_greetings(mnt.mountpoint)
    published.node(first_replica).stop()

    assert read_whole(mnt.path(rel)) == published.tree.sha256[rel]

    values = stats(mnt)
    failures = values[f"node.{first_replica}.consecutive_failures"]
    backing_off = values[f"node.{first_replica}.backing_off"]
    assert failures >= 1 or backing_off == 1, values
    assert values["fetch.failed_attempts"] >= 1, values
    assert values["fs.eio_fetch"] == 0, values
    others = [n.name for n in published.nodes if n.name != first_replica]
    assert all(values[f"node.{name}.consecutive_failures"] == 0 for name in others), values
