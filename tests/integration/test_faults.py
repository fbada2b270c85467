"""Node failures and bad replicas: the disk cache, digest checks, EIO and recovery."""

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

import ckptfs_cli
import source_tree
from nginx_node import settle_chunk_gets
from source_tree import BIG, ODD, MiB


def _read_all_and_compare(mnt, tree):
    _read_all_and_compare_files(mnt, tree, tree.files())


def _read_all_and_compare_files(mnt, tree, files):
    wrong = [rel for rel in files if source_tree.sha256_file(mnt.path(rel)) != tree.sha256[rel]]
    assert not wrong, f"files read back differently: {wrong}"


@pytest.mark.slow
def test_warm_cache_serves_every_file_with_all_nodes_stopped(published, mount, test_dir):
    cache = os.path.join(test_dir, "shared-cache")
    first = mount(published.index, cache_dir=cache, cache_size="1G")
    _read_all_and_compare(first, published.tree)
    first.unmount()

    with published.db() as db:
        chunks = db.chunks()
    for digest in chunks:
        path = os.path.join(cache, digest[:2], digest)
        assert os.path.isfile(path), f"chunk {digest} not in the disk cache at {path}"
        assert source_tree.sha256_file(path) == digest
    assert os.path.isdir(os.path.join(cache, "tmp")), "cache has no tmp/ directory"

    for node in published.nodes:
        node.stop()
    second = mount(published.index, cache_dir=cache, cache_size="1G", timeout=5)
    _read_all_and_compare(second, published.tree)


def test_corrupt_replica_is_skipped_and_content_stays_correct(published, mount):
    with published.db() as db:
        extents = db.extents(BIG)[10:18]
    originals = []
    try:
        for i, extent in enumerate(extents):
            # Alternate which replica is bad, so whatever order the reader tries replicas in, it
            # meets some of the corrupt copies first.
            bad = published.node(extent.nodes[i % 2])
            path = bad.object_path(extent.digest)
            with open(path, "r+b") as f:
                head = f.read(64)
                originals.append((path, head))
                f.seek(0)
                f.write(bytes(b ^ 0xFF for b in head))
        mnt = mount(published.index)

        start, end = extents[0].offset, extents[-1].offset + extents[-1].size
        fd = os.open(mnt.path(BIG), os.O_RDONLY)
        try:
            data = os.pread(fd, end - start, start)
        finally:
            os.close(fd)

        assert hashlib.sha256(data).digest() == hashlib.sha256(
            published.tree.read(BIG, start, end - start)).digest(), "wrong bytes returned"
        gets = settle_chunk_gets(published.nodes)
        corrupt_served = [
            e.digest for i, e in enumerate(extents)
            if e.digest in {d for d, _ in gets[e.nodes[i % 2]]}
        ]
        assert corrupt_served, ("no corrupt copy was ever fetched, so the test proved nothing: "
                                f"{gets}")
        for name in os.listdir(mnt.cache_dir):
            sub = os.path.join(mnt.cache_dir, name)
            if name == "tmp" or not os.path.isdir(sub):
                continue
            for digest in os.listdir(sub):
                if digest.endswith(".part"):
                    continue  # Partial chunks are checked block by block whenever they are read.
                assert source_tree.sha256_file(os.path.join(sub, digest)) == digest, (
                    f"cache holds a bad copy of {digest}")
    finally:
        for path, head in originals:
            with open(path, "r+b") as f:
                f.write(head)


def _unavailable_chunk_and_survivor_file(published):
    """A chunk of the big file held only by two nodes, and a small file the third node holds."""
    with published.db() as db:
        big = db.extents(BIG)
        small = {rel: db.extents(rel) for rel in published.tree.single_chunk_files(4 * MiB)}
    names = sorted(n.name for n in published.nodes)
    for survivor in names:
        lost = tuple(n for n in names if n != survivor)
        readable = [rel for rel, ext in small.items() if all(survivor in e.nodes for e in ext)]
        victims = [i for i, e in enumerate(big) if e.nodes == lost and 0 < i < len(big) - 1]
        if readable and victims:
            return big[victims[len(victims) // 2]], lost, readable[0]
    raise AssertionError("placement left no chunk/file pair for this test")


def _big_file_chunks_held_only_by(published, nodes):
    with published.db() as db:
        return [e for e in db.extents(BIG) if e.nodes == nodes]


def _read_byte(path, offset):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, 1, offset)
    finally:
        os.close(fd)


def test_unavailable_chunk_gives_eio_in_time_then_recovers(published, mount):
    extent, lost, readable = _unavailable_chunk_and_survivor_file(published)
    offset = extent.offset + extent.size // 2
    expected = published.tree.read(BIG, offset, 1)
    mnt = mount(published.index, timeout=3)
    for name in lost:
        published.node(name).stop()

    start = time.monotonic()
    with pytest.raises(OSError) as info:
        _read_byte(mnt.path(BIG), offset)
    elapsed = time.monotonic() - start

    print(f"EIO after {elapsed:.1f}s")
    assert info.value.errno == errno.EIO, repr(info.value)
    assert elapsed < 30, f"EIO took {elapsed:.1f}s with timeout=3"
    assert source_tree.sha256_file(mnt.path(readable)) == published.tree.sha256[readable], (
        f"{readable} (held by the surviving node) did not read back")

    for name in lost:
        published.node(name).start()
    # The nodes are back: the same read must succeed on this mount. A node that failed may be in
    # backoff for a while, so retry for a bounded time rather than demand the first try.
    attempts, deadline, data = 0, time.monotonic() + 30, None
    while data is None:
        attempts += 1
        try:
            data = _read_byte(mnt.path(BIG), offset)
        except OSError as e:
            assert e.errno == errno.EIO, repr(e)
            assert time.monotonic() < deadline, f"no recovery after {attempts} attempts in 30s"
            time.sleep(0.5)
    print(f"recovered after {attempts} attempt(s)")
    assert data == expected


def test_once_a_chunks_nodes_have_been_down_for_half_the_timeout_its_reads_fail_at_once(
        published, mount):
    """The first read to meet dead nodes waits for them until its deadline (timeout=), in case
    they come back. A read that starts once they have been dead for half of that asks each of
    them once and fails at once: before, every read waited out a deadline of its own, so that
    copying a model whose nodes were gone took one deadline per chunk. The nodes are still
    asked, so the first read after they are back is served."""
    _, lost, _ = _unavailable_chunk_and_survivor_file(published)
    victims = _big_file_chunks_held_only_by(published, lost)
    assert len(victims) >= 3, f"only {len(victims)} chunks of {BIG} are held by {lost} alone"
    first, second, third = victims[0], victims[len(victims) // 2], victims[-1]
    read_timeout = 6
    mnt = mount(published.index, timeout=read_timeout, dir_readahead=0)
    ckptfs_cli.wait_for_greetings(mnt.mountpoint)
    for name in lost:
        published.node(name).stop()

    def timed_read(extent):
        offset = extent.offset + extent.size // 2
        start = time.monotonic()
        try:
            data = _read_byte(mnt.path(BIG), offset)
            outcome = "read" if data == published.tree.read(BIG, offset, 1) else "wrong bytes"
        except OSError as e:
            outcome = errno.errorcode.get(e.errno, str(e.errno))
        return outcome, time.monotonic() - start

    outcome, waited = timed_read(first)
    assert outcome == "EIO", outcome
    assert waited > read_timeout / 2, f"the first read gave up after {waited:.1f} s"
    outcome, took = timed_read(second)
    print(f"first read: EIO after {waited:.2f} s; the next: {outcome} after {took:.3f} s")
    assert outcome == "EIO", outcome
    assert took < read_timeout / 2, (
        f"a read of a chunk whose nodes had been down for {waited:.1f} s waited {took:.1f} s")
    stats = ckptfs_cli.mount_stats(mnt.mountpoint)
    assert stats["fetch.down_fetches"] >= 1, stats
    assert all(stats[f"node.{name}.down"] == 1 for name in lost), stats

    for name in lost:
        published.node(name).start()
    outcome, took = timed_read(third)
    assert outcome == "read", f"{outcome} after {took:.1f} s from nodes that are back"
    stats = ckptfs_cli.mount_stats(mnt.mountpoint)
    assert any(stats[f"node.{name}.down"] == 0 for name in lost), stats


def test_reads_waiting_for_chunks_whose_nodes_are_all_down_keep_no_other_read_waiting(
        published, mount):
    """A read of a chunk whose nodes are all down waits for them until its deadline. Twenty such
    reads at once, more than the kernel's 12 asynchronous requests by default and more than the
    mount's fetch slots, must leave the rest of the mount to the other readers: a file on the
    surviving node reads at once. The build before kept it waiting until they failed."""
    _, lost, readable = _unavailable_chunk_and_survivor_file(published)
    victims = _big_file_chunks_held_only_by(published, lost)
    assert len(victims) >= 16, f"only {len(victims)} chunks of {BIG} are held by {lost} alone"
    read_timeout = 15
    mnt = mount(published.index, timeout=read_timeout, dir_readahead=0)
    ckptfs_cli.wait_for_greetings(mnt.mountpoint)
    for name in lost:
        published.node(name).stop()

    outcomes = []

    def read_lost(extent):
        start = time.monotonic()
        try:
            _read_byte(mnt.path(BIG), extent.offset + extent.size // 2)
            outcome = "read"
        except OSError as e:
            outcome = errno.errorcode.get(e.errno, str(e.errno))
        outcomes.append((outcome, time.monotonic() - start))

    waiting = [threading.Thread(target=read_lost, args=(e,), daemon=True) for e in victims[:20]]
    for thread in waiting:
        thread.start()
    time.sleep(1.0)  # All of them are waiting for their nodes now.
    start = time.monotonic()
    digest = source_tree.sha256_file(mnt.path(readable))
    elapsed = time.monotonic() - start
    still_waiting = sum(thread.is_alive() for thread in waiting)
    for thread in waiting:
        thread.join(read_timeout + 30)
    print(f"{readable} read in {elapsed:.3f} s beside {still_waiting} waiting reads; "
          f"they ended {sorted(outcomes)}")
    assert digest == published.tree.sha256[readable]
    assert elapsed < 5, (f"{readable}, on a live node, took {elapsed:.1f} s to read beside "
                         f"{len(waiting)} reads waiting for dead nodes")
    assert still_waiting >= 16, f"only {still_waiting} reads were still waiting: proves nothing"
    assert len(outcomes) == len(waiting), "reads of dead chunks still waiting after the deadline"
    assert all(outcome == "EIO" for outcome, _ in outcomes), outcomes


def test_a_frozen_node_costs_one_short_stall_then_is_passed_over(published, mount):
    """A node that hangs after the mount greeted it (its port still takes connections and
    requests, nothing answers) is left once it has not answered for its first-byte timeout, 8
    times how soon its greeting was answered and no less than 250 ms, while another replica can
    take over: not at the 1 s stall timeout, nor at the transport's low-speed limit, 3 s. The
    mount must then leave it for 10 times that, not try it again after a quick failure's few
    hundred milliseconds and stall again."""
    others = [rel for rel in published.tree.files() if rel != BIG]
    with published.db() as db:
        frozen = published.node(db.extents(BIG)[0].nodes[0])  # The first node the read asks.
        held = sum(frozen.name in e.nodes for rel in others for e in db.extents(rel))
    assert held > 0, f"{frozen.name} holds no chunk of the other files, so they prove nothing"
    mnt = mount(published.index, foreground=True)  # Its log is the test's to read.
    ckptfs_cli.wait_for_greetings(mnt.mountpoint)
    frozen.freeze()
    try:
        assert source_tree.sha256_file(mnt.path(BIG)) == published.tree.sha256[BIG]
        after_big = ckptfs_cli.mount_stats(mnt.mountpoint)
        failed = after_big["fetch.failed_attempts"]
        print(f"{frozen.name} frozen: {failed} failed attempt(s) reading {BIG}")
        assert failed >= 1, f"the frozen node was never tried, so this proved nothing: {after_big}"
        assert after_big[f"node.{frozen.name}.backing_off"] == 1, after_big
        log = mnt.output()
        assert f"node {frozen.name}" in log and "no answer within 250 ms" in log, (
            f"the attempt on the frozen node did not end at its first-byte timeout: {log}")

        # Longer than the backoff `failed` quick failures in a row earn (200 ms doubling, +25%).
        pause = min(0.2 * 2 ** (failed - 1), 5.0) * 1.25 + 0.5
        left_ms = after_big[f"node.{frozen.name}.backoff_ms"]
        assert left_ms > pause * 1000, (
            f"the frozen node's backoff ends in {left_ms} ms, as if its failure had been quick")
        time.sleep(pause)
        later = ckptfs_cli.mount_stats(mnt.mountpoint)
        assert later[f"node.{frozen.name}.backing_off"] == 1, (
            f"a node that stalled for 250 ms is asked again {pause:.2f} s later: {later}")

        _read_all_and_compare_files(mnt, published.tree, others)
        end = ckptfs_cli.mount_stats(mnt.mountpoint)
        assert end["fetch.failed_attempts"] == failed, (
            f"the frozen node stalled reads again while backing off: {end}")
        assert end["fs.eio_fetch"] == 0, end
    finally:
        frozen.thaw()


@contextlib.contextmanager
def _unreachable_url():
    """An http URL on 127.0.0.1 whose port never completes a connection: its listening socket's
    accept queue is full and never drained, so the kernel drops further SYNs, as for a host that
    is down or cut off by the network."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        try:
            for _ in range(2):  # A backlog of 0 queues one connection; two fill it.
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
            yield "http://127.0.0.1:%d" % listener.getsockname()[1]
        finally:
            for filler in fillers:
                filler.close()


def _stalls(stats):
    """Failed attempts but those left as too slow, which TSan's slowdown brings: a node left so
    answers, and is not backed off."""
    return stats["fetch.failed_attempts"] - stats["fetch.slow_attempts"]


@pytest.mark.parametrize("down", ["unreachable", "frozen"])
def test_a_node_down_before_the_mount_is_found_by_its_greeting_and_no_read_waits_for_it(
        published, mount, down):
    """The commonest way a server dies is its host going away: connections to it are not refused,
    they are never answered (`unreachable`); or its server hangs (`frozen`: the port takes the
    request, nothing answers). The mount greets every node as it starts; the greeting of the
    dead node gets no answer for the stall timeout (1 s; connecting counts as receiving nothing,
    so not the 3 s connect timeout), and meanwhile reads ask the nodes that answered. No read
    waits for the dead node, which is then passed over until a probe answers."""
    with published.db() as db:
        lost = published.node(db.extents(BIG)[0].nodes[0])  # The first node the read asks.
    others = [node.name for node in published.nodes if node is not lost]
    with contextlib.ExitStack() as stack:
        options = {}
        if down == "unreachable":
            options[f"node.{lost.name}"] = stack.enter_context(_unreachable_url())
        else:
            lost.freeze()
            stack.callback(lost.thaw)
        mnt = mount(published.index, foreground=True, **options)
        answered = ckptfs_cli.wait_until(lambda: all(
            ckptfs_cli.mount_stats(mnt.mountpoint)[f"node.{name}.unanswered"] == 0
            for name in others), timeout=10)
        assert answered, ckptfs_cli.mount_stats(mnt.mountpoint)
        _read_all_and_compare(mnt, published.tree)
        read = ckptfs_cli.mount_stats(mnt.mountpoint)
        greeted = ckptfs_cli.wait_until(
            lambda: ckptfs_cli.mount_stats(mnt.mountpoint)["fetch.greetings"] == len(
                published.nodes), timeout=10)
        stats = ckptfs_cli.mount_stats(mnt.mountpoint)
        log = mnt.output()
    print(f"{lost.name} {down}: {read['fetch.failed_attempts']} failed attempt(s), "
          f"{stats['fetch.failed_greetings']} failed greeting(s)")
    assert greeted, f"the greeting of {lost.name} did not end: {stats}"
    assert stats["fetch.failed_greetings"] == 1, stats
    # Its greeting (and any probe of it) are the dead node's only failures: a read that asked it
    # would have added one. A live node left once as too slow (a slow attempt, which a
    # sanitizer's slowdown can cause) is not waiting for the dead one.
    assert stats[f"node.{lost.name}.consecutive_failures"] == 1 + stats["fetch.failed_probes"], (
        f"a read asked the dead node: {stats}{log}")
    assert _stalls(read) == 0, (
        f"a read waited for the dead node: {read}{log}")
    assert _stalls(stats) == 0, stats
    assert stats[f"node.{lost.name}.backing_off"] == 1, stats
    assert stats[f"node.{lost.name}.awaiting_probe"] == 1, stats
    assert read["fs.eio_fetch"] == 0, read
    assert f"greeting of node {lost.name}" in log and "nothing received for 1000 ms" in log, (
        f"the greeting of the dead node did not end at the stall timeout: {log}")


def _sha256_of_range(path, offset, length):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            block = f.read(min(length, MiB))
            assert block, f"{path} ended early"
            digest.update(block)
            length -= len(block)
    return digest.hexdigest()


def test_a_measured_node_that_stops_answering_is_left_well_before_the_stall_timeout(
        published, mount):
    """Once a mount has seen how soon a node answers (milliseconds here), a request that gets no
    answer at all is left at 8 times that, and no sooner than 250 ms, not at the 1 s stall
    timeout: a node that hangs costs the reads in flight a quarter of what it did."""
    mnt = mount(published.index, foreground=True, dir_readahead=0)
    half = source_tree.BIG_SIZE // 2
    path = mnt.path(BIG)
    assert _sha256_of_range(path, 0, half) == _sha256_of_range(
        published.tree.path(BIG), 0, half)
    before = ckptfs_cli.mount_stats(mnt.mountpoint)
    for node in published.nodes:
        assert before[f"node.{node.name}.bytes_per_second"] > 0, (
            f"{node.name} was not measured by the first half, so this proves nothing: {before}")
    # The fastest: reads ask a node by its speed, and under load the nodes' speeds can differ
    # five-fold, so that a slower node may not be asked at all by the second half.
    frozen = max(published.nodes, key=lambda n: before[f"node.{n.name}.bytes_per_second"])
    frozen.freeze()
    try:
        assert _sha256_of_range(path, half, half) == _sha256_of_range(
            published.tree.path(BIG), half, half)
    finally:
        frozen.thaw()
    stats = ckptfs_cli.mount_stats(mnt.mountpoint)
    log = mnt.output()
    assert stats["fetch.failed_attempts"] > before["fetch.failed_attempts"], (
        f"{frozen.name} was never asked while frozen, so this proves nothing: {stats}")
    assert stats["fs.eio_fetch"] == 0, stats
    assert f"node {frozen.name}" in log and "no answer within 250 ms" in log, (
        f"no attempt on the frozen node ended at its first-byte timeout: {log}")


# A stall timeout of 0.3 s backs a hung node off for 3 s (+-25%), which keeps these tests short.
_SHORT_STALL = 0.3


def _stall_on_first_replica_of(published, mount, rel):
    """Mounts in the foreground (the test reads the log) with a short stall timeout and no
    directory readahead, freezes the node a read of `rel` asks first and reads `rel`: one stall.
    Returns (mount, frozen node); the caller thaws it."""
    with published.db() as db:
        frozen = published.node(db.extents(rel)[0].nodes[0])
        held = sum(frozen.name in e.nodes for e in db.extents(BIG))
    assert held > 0, f"{frozen.name} holds no chunk of {BIG}, so it proves nothing"
    mnt = mount(published.index, foreground=True, stall_timeout=_SHORT_STALL, dir_readahead=0)
    ckptfs_cli.wait_for_greetings(mnt.mountpoint)
    frozen.freeze()
    assert source_tree.sha256_file(mnt.path(rel)) == published.tree.sha256[rel]
    stats = ckptfs_cli.mount_stats(mnt.mountpoint)
    assert _stalls(stats) == 1, f"the read of {rel} did not stall once: {stats}"
    assert stats[f"node.{frozen.name}.awaiting_probe"] == 1, stats
    return mnt, frozen


def _wait_for_backoff_end(mnt, node):
    ended = ckptfs_cli.wait_until(
        lambda: ckptfs_cli.mount_stats(mnt.mountpoint)[f"node.{node.name}.backoff_ms"] == 0,
        timeout=20)
    assert ended, f"{node.name}'s backoff did not end: {ckptfs_cli.mount_stats(mnt.mountpoint)}"


def test_a_node_that_stays_frozen_is_probed_instead_of_stalling_reads_again(published, mount):
    """When a hung node's backoff ends, the reads that would ask it again do not: they go to the
    other replicas while a probe in the background finds it still hung."""
    mnt, frozen = _stall_on_first_replica_of(published, mount, ODD)
    try:
        _wait_for_backoff_end(mnt, frozen)
        # Its chunks of BIG would make the read ask it first, as they did for ODD.
        assert source_tree.sha256_file(mnt.path(BIG)) == published.tree.sha256[BIG]
        stats = ckptfs_cli.mount_stats(mnt.mountpoint)
        assert _stalls(stats) == 1, f"a read stalled on the node again: {stats}"
        assert stats["fs.eio_fetch"] == 0, stats
        probed = ckptfs_cli.wait_until(
            lambda: ckptfs_cli.mount_stats(mnt.mountpoint)["fetch.failed_probes"] >= 1, timeout=20)
        stats = ckptfs_cli.mount_stats(mnt.mountpoint)
        assert probed, f"no probe found the node still hung: {stats}"
        assert stats[f"node.{frozen.name}.awaiting_probe"] == 1, stats
        assert stats[f"node.{frozen.name}.backoff_ms"] > 0, stats
        log = mnt.output()
        assert f"probe of node {frozen.name}" in log and "nothing received for 300 ms" in log, log
    finally:
        frozen.thaw()


def test_a_node_that_thaws_answers_its_probe_and_is_read_from_again(published, mount):
    """A hung node that comes back goes back into use once its probe, not a read, had an
    answer."""
    mnt, frozen = _stall_on_first_replica_of(published, mount, ODD)
    frozen.thaw()
    _wait_for_backoff_end(mnt, frozen)
    published.clear_logs()
    assert source_tree.sha256_file(mnt.path(BIG)) == published.tree.sha256[BIG]
    stats = ckptfs_cli.mount_stats(mnt.mountpoint)
    assert stats["fetch.probes"] >= 1 and stats["fetch.failed_probes"] == 0, stats
    assert stats[f"node.{frozen.name}.awaiting_probe"] == 0, stats
    assert _stalls(stats) == 1, {
        k: v for k, v in stats.items() if k.startswith(("fetch.", "node."))}
    probes = [(digest, sent) for digest, sent in frozen.range_gets() if sent == 1]
    assert probes, f"no 1-byte probe reached {frozen.name}: {frozen.log_lines()}"
    served = settle_chunk_gets([frozen])[frozen.name]
    assert served, f"{frozen.name} answered its probe, but no read asked it for a chunk"
    assert f"node {frozen.name} ({frozen.url}) answered a probe" in mnt.output()


@contextlib.contextmanager
def _tmpfs(path, size):
    """A tmpfs of `size` mounted at `path` for the test: a file system that fills up."""
    os.makedirs(path, exist_ok=True)
    # 0700: a tmpfs root is otherwise writable by every user, which a cache directory may not be.
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                   check=True)
    try:
        yield path
    finally:
        # Lazily: after a failure the mount fixture unmounts ckptfs, which holds files there, later.
        subprocess.run(["umount", "-l", path], check=False)


def test_a_cache_whose_file_system_fills_up_keeps_caching_the_newest_chunks(
        published, mount, test_dir):
    """cache_size promises more than the cache directory's file system has room for. Once a
    write finds it full, the cache takes what it holds as its bound and evicts its least recently
    used chunks for new ones, instead of failing every later write and keeping only the first
    chunks it wrote."""
    with published.db() as db:
        last_chunk = db.extents(BIG)[-1].digest
    with _tmpfs(os.path.join(test_dir, "small-fs"), "40m") as cache:
        mnt = mount(published.index, foreground=True, cache_dir=cache, cache_size="1G")
        assert source_tree.sha256_file(mnt.path(BIG)) == published.tree.sha256[BIG]
        stats = ckptfs_cli.mount_stats(mnt.mountpoint)
        log = mnt.output()
        mnt.unmount()
        last_cached = os.path.isfile(os.path.join(cache, last_chunk[:2], last_chunk))
    print(f"cache after reading {BIG}: {stats['cache.used_bytes']} bytes in "
          f"{stats['cache.entries']} entries, bound {stats['cache.capacity_bytes']}, "
          f"{stats['store.cache_write_errors']} failed writes")
    assert stats["fs.eio_fetch"] == 0 and stats["fs.eio_internal"] == 0, stats
    assert stats["cache.capacity_bytes"] <= 40 * MiB, (
        f"the bound stayed at cache_size on a full file system: {stats}")
    assert 0 < stats["cache.used_bytes"] <= stats["cache.capacity_bytes"], stats
    # 75 chunks, room for about 9: every write after the first failure would fail without it.
    assert stats["store.cache_write_errors"] <= 8, stats
    assert log.count("is full with") == 1, f"not logged once: {log}"
    assert last_cached, f"the last chunk of {BIG} is not in the cache"


def test_a_cache_whose_file_system_has_room_again_grows_back(published, mount, test_dir):
    """Other files filled the cache's file system, and the cache's bound fell to what it held;
    once they are deleted, the chunks written next raise it again, up to cache_size, instead of
    the cache staying small until the next mount."""
    with _tmpfs(os.path.join(test_dir, "shared-fs"), "96m") as fs_root:
        cache = os.path.join(fs_root, "cache")
        filler = os.path.join(fs_root, "other-files")
        with open(filler, "wb") as f:
            f.write(b"\0" * (64 * MiB))
        mnt = mount(published.index, cache_dir=cache, cache_size="1G")
        assert source_tree.sha256_file(mnt.path(BIG)) == published.tree.sha256[BIG]
        full = ckptfs_cli.mount_stats(mnt.mountpoint)
        assert full["cache.capacity_bytes"] <= 32 * MiB, f"the bound did not fall: {full}"

        os.unlink(filler)
        ckptfs_cli.drop_page_cache()
        assert source_tree.sha256_file(mnt.path(BIG)) == published.tree.sha256[BIG]
        grown = ckptfs_cli.mount_stats(mnt.mountpoint)
        mnt.unmount()
    print(f"bound {full['cache.capacity_bytes']} with the file system full, "
          f"{grown['cache.capacity_bytes']} once it had room; held {grown['cache.used_bytes']}")
    assert grown["cache.capacity_bytes"] >= full["cache.capacity_bytes"] + 16 * MiB, (
        f"the bound stayed low with 64 MiB free: {full} then {grown}")
    assert full["cache.capacity_bytes"] < grown["cache.used_bytes"] <= (
        grown["cache.capacity_bytes"]), grown
    assert grown["fs.eio_fetch"] == 0, grown


def _wait_until_cache_written(cache, quiet=0.5, limit=30.0):
    """Waits until the mount has written what it read into `cache`: its files stay the same for
    `quiet` seconds and none is being written (tmp/ empty). The writes come after the replies;
    under a sanitizer's slowdown a removal right after a read met them still going."""
    def snapshot():
        return sorted(os.path.join(d, n) for d, _, names in os.walk(cache) for n in names)
    deadline = time.monotonic() + limit
    last, since = snapshot(), time.monotonic()
    while True:
        time.sleep(0.05)
        now = snapshot()
        writing = any(f.startswith(os.path.join(cache, "tmp") + os.sep) for f in now)
        if now != last or writing:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        assert time.monotonic() < deadline, f"the cache kept changing: {now}"


def test_a_cache_directory_removed_under_a_mount_is_made_again(published, mount, test_dir):
    """Someone (a cleaner of old files, an operator freeing space) removes the cache directory
    while it is mounted: reads go on, and the writes that follow make the directories they need
    again, so the cache works again instead of failing every write until the next mount."""
    cache = os.path.join(test_dir, "cache")
    mnt = mount(published.index, foreground=True, cache_dir=cache, dir_readahead=0)
    assert source_tree.sha256_file(mnt.path(ODD)) == published.tree.sha256[ODD]
    _wait_until_cache_written(cache)
    shutil.rmtree(cache)
    ckptfs_cli.drop_page_cache()
    assert source_tree.sha256_file(mnt.path(ODD)) == published.tree.sha256[ODD]
    assert source_tree.sha256_file(mnt.path(BIG)) == published.tree.sha256[BIG]
    stats = ckptfs_cli.mount_stats(mnt.mountpoint)
    log = mnt.output()
    mnt.unmount()
    assert stats["store.cache_write_errors"] == 0, f"writes failed after the removal: {stats}"
    assert stats["fs.eio_fetch"] == 0 and stats["fs.eio_internal"] == 0, stats
    assert log.count("was removed under the mount") == 1, log

    # The cache made again is a cache: a new mount on it reads the big file without the network.
    again = mount(published.index, cache_dir=cache, dir_readahead=0)
    ckptfs_cli.drop_page_cache()
    assert source_tree.sha256_file(again.path(BIG)) == published.tree.sha256[BIG]
    warm = ckptfs_cli.mount_stats(again.mountpoint)
    assert warm["fetch.fetches"] == 0 and warm["store.cache_hits"] > 0, warm


@contextlib.contextmanager
def _reads_denied(paths):
    """Every read of the files at `paths` fails (EPERM) while their opens still succeed, as on a
    disk with bad sectors under them: a fanotify group whose thread answers each read's
    permission event with FAN_DENY. Yields a list that counts the denied reads."""
    fan_class_content, fan_cloexec, fan_nonblock = 0x4, 0x1, 0x2
    fan_access_perm, fan_mark_add, fan_deny, at_fdcwd = 0x20000, 0x1, 0x2, -100
    libc = ctypes.CDLL(None, use_errno=True)
    group = libc.fanotify_init(fan_class_content | fan_cloexec | fan_nonblock, os.O_RDONLY)
    assert group >= 0, f"fanotify_init: {os.strerror(ctypes.get_errno())} (the tests run as root)"
    for path in paths:
        marked = libc.fanotify_mark(group, fan_mark_add, ctypes.c_uint64(fan_access_perm),
                                    at_fdcwd, path.encode())
        assert marked == 0, f"fanotify_mark {path}: {os.strerror(ctypes.get_errno())}"
    denied, stop = [], threading.Event()

    def answer():
        header = struct.Struct("IBBHQii")  # struct fanotify_event_metadata
        while not stop.is_set():
            try:
                events = os.read(group, 4096)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            for at in range(0, len(events), header.size):
                event_fd = header.unpack_from(events, at)[5]
                if event_fd >= 0:
                    os.write(group, struct.pack("iI", event_fd, fan_deny))
                    os.close(event_fd)
                    denied.append(1)

    answerer = threading.Thread(target=answer, daemon=True)
    answerer.start()
    try:
        yield denied
    finally:
        stop.set()
        answerer.join()
        os.close(group)


def test_a_cached_chunk_whose_file_cannot_be_read_is_fetched_again(published, mount, test_dir):
    """The disk cache is a copy of what the nodes hold. A cache file that opens but cannot be
    read (a bad sector under it) must cost a fetch, not fail the read with EIO as it did."""
    cache = os.path.join(test_dir, "cache")
    first = mount(published.index, cache_dir=cache, dir_readahead=0)
    assert source_tree.sha256_file(first.path(ODD)) == published.tree.sha256[ODD]
    first.unmount()
    with published.db() as db:
        files = [os.path.join(cache, e.digest[:2], e.digest) for e in db.extents(ODD)]
    assert all(os.path.isfile(f) for f in files), "the first mount did not cache every chunk"
    again = mount(published.index, foreground=True, cache_dir=cache, dir_readahead=0)
    with _reads_denied(files) as denied:
        assert source_tree.sha256_file(again.path(ODD)) == published.tree.sha256[ODD]
    stats = ckptfs_cli.mount_stats(again.mountpoint)
    print(f"{len(denied)} cache file reads denied; {stats['store.cache_read_errors']} dropped")
    assert denied, "nothing read the cache files, so this proved nothing"
    assert 1 <= stats["store.cache_read_errors"] <= len(files), stats
    assert stats["fs.eio_internal"] == 0 and stats["fs.eio_fetch"] == 0, stats
    assert stats["fetch.bytes_fetched"] > 0, stats
    assert "dropped it from the disk cache" in again.output(), again.output()
