"""`ckptfs publish`: what lands on the nodes and in the index, and how it fails."""

import hashlib
import os
import re
import socket
import stat
import time

import pytest

import ckptfs_cli
import source_tree
from index_db import IndexDb

GiB = 1 << 30
MiB = 1 << 20


def _summary_number(out, pattern):
    m = re.search(pattern, out)
    assert m, f"summary has no match for {pattern!r}:\n{out}"
    return int(m.group(1))


def test_publish_summary_reports_the_tree(published):
    out = published.result.stdout
    with published.db() as db:
        unique = len(db.chunks())
        total = db.extent_count()
    want = {
        r"\bfiles: (\d+)": len(source_tree.FILES),
        r"\bdirectories: (\d+)": len(source_tree.DIRS),  # The root included.
        r"\bsymlinks: (\d+)": len(source_tree.SYMLINKS),
        r"\bbytes: (\d+)": sum(size for size, _, _ in source_tree.FILES.values()),
        r"\bchunks: (\d+)": total,
        r"\bunique chunks: (\d+)": unique,
    }
    for node in published.nodes:
        stored = sum(os.path.getsize(p) for p in node.objects().values())
        want[rf"\bnode {node.name}: (\d+) bytes"] = stored
    got = {pattern: _summary_number(out, pattern) for pattern in want}
    assert got == want, f"summary:\n{out}"


def test_index_lists_the_sha256_of_every_block_of_every_chunk(published):
    """Schema v2: meta block_size and, per chunk, one row of the blocks table with the digests of
    its block_size blocks in order, checked against the stored objects with an independent hash.
    The digests are not in chunks, whose rows stay small."""
    with published.db() as db:
        meta = db.meta()
        block_size = db.block_size()
        blocks = db.blocks()
        chunks = db.chunks()
        chunk_columns = db.chunk_columns()
    assert meta["schema_version"] == "2"
    assert chunk_columns == ["id", "digest", "size"]
    assert block_size == 64 * 1024, f"default block size: {block_size}"
    objects = {}
    for node in published.nodes:
        objects.update(node.objects())
    assert set(blocks) == set(chunks)
    for digest, listed in blocks.items():
        size, _ = chunks[digest]
        assert len(listed) == -(-size // block_size), f"{digest}: {len(listed)} blocks"
        with open(objects[digest], "rb") as f:
            data = f.read()
        want = [hashlib.sha256(data[i:i + block_size]).hexdigest()
                for i in range(0, len(data), block_size)]
        assert listed == want, f"block digests of chunk {digest}"


def test_identical_content_is_stored_once(published):
    with published.db() as db:
        unique = len(db.chunks())
        total = db.extent_count()
        dup_a = db.extents(source_tree.DUP_A)
        dup_b = db.extents(source_tree.DUP_B)
    assert unique < total, f"no dedup: {unique} unique chunks for {total} extents"
    assert [e.digest for e in dup_a] == [e.digest for e in dup_b]


def test_store_objects_are_named_by_their_sha256(published):
    for node in published.nodes:
        objects = node.objects()
        assert objects, f"node {node.name} stores nothing"
        for name, path in objects.items():
            with open(path, "rb") as f:
                actual = hashlib.sha256(f.read()).hexdigest()
            assert actual == name, f"{path} holds bytes with sha256 {actual}"
            assert os.path.basename(os.path.dirname(path)) == name[:2]


def test_every_chunk_is_on_exactly_two_nodes(published):
    with published.db() as db:
        chunks = db.chunks()
    stored = {node.name: set(node.objects()) for node in published.nodes}
    for digest, (size, replicas) in chunks.items():
        holders = tuple(sorted(name for name, objs in stored.items() if digest in objs))
        assert len(replicas) == 2, f"chunk {digest} has replicas {replicas} in the index"
        assert holders == replicas, f"chunk {digest}: index says {replicas}, stores hold {holders}"
        for name in holders:
            assert os.path.getsize(published.node(name).object_path(digest)) == size
    extra = set().union(*stored.values()) - set(chunks)
    assert not extra, f"objects not in the index: {sorted(extra)[:5]}"


def test_bytes_per_node_are_balanced(published):
    per_node = {
        node.name: sum(os.path.getsize(p) for p in node.objects().values())
        for node in published.nodes
    }
    mean = sum(per_node.values()) / len(per_node)
    for name, size in per_node.items():
        assert abs(size - mean) <= 0.05 * mean, (
            f"node {name} holds {size} bytes, mean {mean:.0f}: {per_node}")


def _small_tree(root):
    source_tree.write_file(os.path.join(root, "a.txt"), b"hello ckptfs\n")
    source_tree.write_file(os.path.join(root, "sub", "weights.bin"),
                           source_tree.random_bytes(11, 3 * MiB + 512 * 1024 + 7))
    source_tree.write_file(os.path.join(root, "sub", "deeper", "c.bin"),
                           source_tree.random_bytes(12, 4096))
    return root


def test_publish_by_http_put_then_mount_reads_back(cluster, test_dir, mount):
    src = _small_tree(os.path.join(test_dir, "src"))
    index = os.path.join(test_dir, "put.index")
    ckptfs_cli.publish(src, index, cluster, store=False, chunk_size="1M")

    puts = [e for node in cluster for e in node.log_lines() if e[0] == "PUT"]
    assert puts, "publish without --store sent no PUT"
    assert all(status in (201, 204) for _, _, status, _ in puts), puts
    with IndexDb(index) as db:
        chunks = db.chunks()
    assert len(chunks) == 6  # 4 chunks of weights.bin + a.txt + c.bin at 1 MiB chunks.
    for digest, (_, replicas) in chunks.items():
        assert len(replicas) == 2, f"{digest}: replicas {replicas}, default R is min(2, nodes)"
        for name in replicas:
            node = next(n for n in cluster if n.name == name)
            with open(node.object_path(digest), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest

    mnt = mount(index)
    diff = ckptfs_cli.run(["diff", "-r", src, mnt.mountpoint], timeout=120)
    assert diff.returncode == 0, diff.describe()


def test_publish_again_sends_only_what_the_nodes_lack(cluster, test_dir, mount):
    # Run again after a failed publish, or for the next checkpoint that shares chunks with this
    # one, publish asks each node (HEAD) and sends only what it lacks: here, one object lost.
    src = _small_tree(os.path.join(test_dir, "src"))
    index = os.path.join(test_dir, "again.index")
    ckptfs_cli.publish(src, index, cluster, store=False, chunk_size="1M")
    with IndexDb(index) as db:
        chunks = db.chunks()
    placed = sorted((digest, name) for digest, (_, replicas) in chunks.items()
                    for name in replicas)
    assert len(placed) == 12

    for node in cluster:
        node.clear_log()
    result = ckptfs_cli.publish(src, index, cluster, store=False, chunk_size="1M")
    requests = [e for node in cluster for e in node.log_lines()]
    # Each node also gets this publish's lease, the list of what it found, and a look for a gc.
    leases = [e for e in requests if e[1].startswith("/leases/")]
    assert sorted(e[0] + " " + e[1].rsplit(".", 1)[-1] for e in leases) == sorted(
        ["PUT publishing", "HEAD /leases/gc", "PUT found", "DELETE publishing"] * 3), leases
    requests = [e for e in requests if not e[1].startswith("/leases/")]
    assert not [e for e in requests if e[0] == "PUT"], requests
    heads = sorted(e for e in requests if e[0] == "HEAD")
    assert len(heads) == 12 and all(e[2] == 200 for e in heads), heads
    assert result.stdout.count("sent 0 (0 B), already there") == len(cluster), result.stdout

    lost_digest, lost_name = placed[0]
    lost = next(n for n in cluster if n.name == lost_name)
    os.remove(lost.object_path(lost_digest))
    for node in cluster:
        node.clear_log()
    ckptfs_cli.publish(src, index, cluster, store=False, chunk_size="1M")
    puts = [(node.name, e[1]) for node in cluster for e in node.log_lines()
            if e[0] == "PUT" and e[1].startswith("/chunks/")]
    assert puts == [(lost_name, f"/chunks/{lost_digest[:2]}/{lost_digest}")], puts

    mnt = mount(index)
    diff = ckptfs_cli.run(["diff", "-r", src, mnt.mountpoint], timeout=120)
    assert diff.returncode == 0, diff.describe()


def test_publish_to_an_index_url_then_mount_that_url(cluster, test_dir, mount):
    # One command from a checkpoint directory to an index URL that machines mount.
    src = _small_tree(os.path.join(test_dir, "src"))
    url = f"{cluster[0].url}/indexes/ckpt.ckptfs"
    result = ckptfs_cli.run(ckptfs_cli.publish_args(src, url, cluster, store=False,
                                                    chunk_size="1M"), timeout=300)
    assert result.returncode == 0, result.describe()
    assert f"to {url}" in result.stdout, result.stdout
    puts = [e for e in cluster[0].log_lines() if e[0] == "PUT"]
    assert puts[-1][1] == "/indexes/ckpt.ckptfs" and puts[-1][2] in (201, 204), puts[-3:]
    others = [e for node in cluster[1:] for e in node.log_lines() if e[0] == "PUT"]
    assert others, "no object went to the other nodes"

    mnt = mount(url)
    diff = ckptfs_cli.run(["diff", "-r", src, mnt.mountpoint], timeout=120)
    assert diff.returncode == 0, diff.describe()


def test_nodes_on_the_ipv6_loopback_publish_mount_and_check(nginx_node, test_dir, mount):
    # URLs with an IPv6 literal, "http://[::1]:PORT", from publish by PUT to mount and check.
    nodes = [nginx_node(name, host="::1") for name in ("n1", "n2", "n3")]
    src = _small_tree(os.path.join(test_dir, "src"))
    url = f"{nodes[0].url}/indexes/ckpt.ckptfs"
    assert url.startswith("http://[::1]:"), url
    result = ckptfs_cli.run(ckptfs_cli.publish_args(src, url, nodes, store=False,
                                                    chunk_size="1M"), timeout=300)
    assert result.returncode == 0, result.describe()
    assert all(any(e[0] == "PUT" for e in node.log_lines()) for node in nodes), (
        "a node was sent nothing")

    mnt = mount(url)
    diff = ckptfs_cli.run(["diff", "-r", src, mnt.mountpoint], timeout=120)
    assert diff.returncode == 0, diff.describe()
    checked = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "check", "--verify", url])
    assert checked.returncode == 0, checked.describe()
    assert "0 missing, 0 wrong size, 0 corrupt, 0 unreachable" in checked.stdout, (
        checked.describe())


@pytest.mark.parametrize("failure", ["stopped", "frozen"])
def test_publish_to_a_dead_node_fails_soon_with_one_line_and_no_index(cluster, test_dir, failure):
    # A stopped node refuses at once (tried 3 times, in under a second); a frozen one accepts and
    # never answers: its first HEAD waits out the low-speed limit (3 s) and the publish ends
    # there. Before, uploads under way each went through all their attempts: 31.8 s.
    src = _small_tree(os.path.join(test_dir, "src"))
    index = os.path.join(test_dir, "dead.index")
    dead = cluster[1]
    if failure == "stopped":
        dead.stop()
    else:
        dead.freeze()
    try:
        start = time.monotonic()
        result = ckptfs_cli.run(ckptfs_cli.publish_args(src, index, cluster, store=False,
                                                        chunk_size="1M"), timeout=120)
        elapsed = time.monotonic() - start
    finally:
        dead.thaw()
    assert result.returncode != 0, result.describe()
    lines = result.stderr_lines()
    assert len(lines) == 1 and lines[0].startswith(f"ckptfs: cannot upload to node {dead.name}"), \
        result.describe()
    assert not os.path.exists(index)
    print(f"{failure}: failed in {elapsed:.1f} s: {lines[0]}")
    assert elapsed < 15, f"publish to a {failure} node failed only after {elapsed:.1f} s"


def _make_fifo(root):
    os.mkfifo(os.path.join(root, "pipe"))


def _make_socket(root):
    # Bound through /proc/self/fd: a socket path is limited to 107 bytes, the test dir is deeper.
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(f"/proc/self/fd/{fd}/sock")
    finally:
        os.close(fd)
    assert stat.S_ISSOCK(os.lstat(os.path.join(root, "sock")).st_mode)


def _make_device(root):
    os.mknod(os.path.join(root, "null"), 0o600 | 0o020000, os.makedev(1, 3))


def _make_unreadable(root):
    path = os.path.join(root, "sub", "secret.bin")
    source_tree.write_file(path, b"x" * 1000, mode=0o000)


# setpriv drops the capabilities that let root read or write past file modes.
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]

PUBLISH_ERRORS = {
    # case: (tree change, extra args, store?, command prefix)
    "missing_src_dir": (None, [], True, None),
    "unreadable_file": (_make_unreadable, [], True, NO_DAC),
    "fifo_in_tree": (_make_fifo, [], True, None),
    "socket_in_tree": (_make_socket, [], True, None),
    "device_in_tree": (_make_device, [], True, None),
    "unknown_node_in_store": ("store_n9", [], True, None),
    "replicas_above_node_count": (None, ["--replicas", "4"], True, None),
    "unwritable_store": ("unwritable", [], True, NO_DAC),
}


@pytest.mark.parametrize("case", sorted(PUBLISH_ERRORS))
def test_publish_error_exits_nonzero_with_one_line_and_no_index(case, cluster, test_dir):
    change, extra, store, prefix = PUBLISH_ERRORS[case]
    src = _small_tree(os.path.join(test_dir, "src"))
    if case == "missing_src_dir":
        src = os.path.join(test_dir, "does-not-exist")
    elif change == "unwritable":
        os.chmod(cluster[1].store_dir, 0o555)
    elif change == "store_n9":
        extra = ["--store", "n9=" + os.path.join(test_dir, "n9-store")]
    elif change is not None:
        change(src)
    out_dir = os.path.join(test_dir, "out")
    os.makedirs(out_dir)
    index = os.path.join(out_dir, "ckpt.index")

    args = ckptfs_cli.publish_args(src, index, cluster, store=store) + extra
    result = ckptfs_cli.run(args, timeout=120, prefix=prefix)

    assert result.returncode != 0, result.describe()
    lines = result.stderr_lines()
    assert len(lines) == 1 and lines[0].startswith("ckptfs: "), result.describe()
    assert not os.path.exists(index), f"index created despite the error\n{result.describe()}"
    left = os.listdir(out_dir)
    assert not left, f"publish left {left} beside the index\n{result.describe()}"


@pytest.mark.timeout(240)
def test_sparse_file_over_4gib_publishes_fast_and_reads_past_4gib(cluster, test_dir, mount):
    src = os.path.join(test_dir, "src")
    os.makedirs(src)
    path = os.path.join(src, "huge.bin")
    size = 4 * GiB + GiB // 2
    marker_offset = int(4.2 * GiB)
    marker = source_tree.random_bytes(21, 64 * 1024)
    tail = b"end of the sparse file\n"
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(marker_offset)
        f.write(marker)
        f.seek(size - len(tail))
        f.write(tail)
    index = os.path.join(test_dir, "sparse.index")
    result = ckptfs_cli.publish(src, index, cluster, store=True)
    print(f"publish of a sparse {size} byte file took {result.elapsed:.1f}s")
    with IndexDb(index) as db:
        unique = len(db.chunks())
        extents = db.extents("huge.bin")
    assert sum(e.size for e in extents) == size
    assert unique <= 5, f"zeros did not dedup: {unique} unique chunks"

    mnt = mount(index)
    assert os.stat(mnt.path("huge.bin")).st_size == size
    fd = os.open(mnt.path("huge.bin"), os.O_RDONLY)
    try:
        assert os.pread(fd, len(marker), marker_offset) == marker
        assert os.pread(fd, 4096, marker_offset - 4096) == bytes(4096)
        assert os.pread(fd, len(tail) + 100, size - len(tail)) == tail
        assert os.pread(fd, 4096, GiB) == bytes(4096)
    finally:
        os.close(fd)
