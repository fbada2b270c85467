"""Directory readahead: a file read from its start to its end continues its readahead into the
next files of its directory (in name order), so that chunks of files not opened yet are already
being fetched; dir_readahead=0 turns it off, and an isolated read never does it.

Each test publishes its own directory of single-chunk files (2 MiB chunks: a run from the start
opens its window once it has read 2 MiB) to three fresh nodes, and reads the nginx access logs.
"""

import os

import pytest

import ckptfs_cli
import source_tree
from index_db import IndexDb
from nginx_node import settle_chunk_bytes, settle_chunk_gets, settle_range_gets
from source_tree import MiB

SHARDS = 12
CHUNK = 2 * MiB
PAGE = 4096


def _name(i):
    return f"shards/shard-{i:02d}.bin"


@pytest.fixture
def shards(cluster, test_dir):
    """{relpath: content} of SHARDS one-chunk files under shards/, and the published index."""
    src = os.path.join(test_dir, "src")
    files = {_name(i): source_tree.random_bytes(100 + i, CHUNK) for i in range(SHARDS)}
    for rel, data in files.items():
        source_tree.write_file(os.path.join(src, rel), data)
    # A file of another directory that sorts after every shard: never read ahead.
    source_tree.write_file(os.path.join(src, "zz", "other.bin"), source_tree.random_bytes(99, CHUNK))
    index = os.path.join(test_dir, "shards.index")
    ckptfs_cli.publish(src, index, cluster, store=True, replicas=2, chunk_size="2M")
    with IndexDb(index) as db:
        digest = {rel: [e.digest for e in db.extents(rel)] for rel in list(files) + ["zz/other.bin"]}
    for node in cluster:
        node.clear_log()
    return files, index, digest


def _read_in_order(mnt, files, count):
    for i in range(count):
        with open(mnt.path(_name(i)), "rb") as f:
            assert f.read() == files[_name(i)], f"{_name(i)} read back wrong"


def _fetched(cluster):
    """{digest: times fetched} once the logs are quiet, as bytes sent over the chunk size: a
    chunk fetched once, in one GET or as parallel parts, counts 1."""
    return {digest: sent / CHUNK for digest, sent in settle_chunk_bytes(cluster).items()}


def test_reading_files_in_order_fetches_the_next_files_before_they_are_opened(
        shards, cluster, mount):
    files, index, digest = shards
    mnt = mount(index)

    _read_in_order(mnt, files, 4)

    fetched = _fetched(cluster)
    for i in range(4):
        assert [fetched.get(d) for d in digest[_name(i)]] == [1], f"{_name(i)}: {fetched}"
    # Never opened, and fetched all the same: the stream's readahead ran ahead of the reader.
    ahead = [i for i in range(4, SHARDS) if all(d in fetched for d in digest[_name(i)])]
    assert {4, 5} <= set(ahead), f"shards fetched ahead of the reader: {ahead}"
    assert all(n == 1 for n in fetched.values()), f"a chunk fetched twice: {fetched}"
    assert not set(digest["zz/other.bin"]) & set(fetched), "read ahead into another directory"


def test_with_dir_readahead_off_only_the_files_read_are_fetched(shards, cluster, mount):
    files, index, digest = shards
    mnt = mount(index, dir_readahead=0)

    _read_in_order(mnt, files, 4)

    fetched = _fetched(cluster)
    read = {d for i in range(4) for d in digest[_name(i)]}
    assert set(fetched) == read, (
        f"fetched {sorted(set(fetched) - read)[:3]} besides the {len(read)} chunks read")


def test_partial_reads_fetch_nothing_of_the_siblings(shards, cluster, mount):
    files, index, digest = shards
    mnt = mount(index)
    middle, head = _name(5), _name(8)

    # One page in the middle of a file, and a peek at the header of another: neither reaches the
    # end of its file, so neither window goes past it. (Reading half of a file would not do: the
    # kernel's own readahead, 1 MiB on the mount, reads such a small file to its end.)
    data = ckptfs_cli.pread_file(mnt.path(middle), CHUNK // 2, PAGE)
    header = ckptfs_cli.pread_file(mnt.path(head), 0, 64 * 1024)

    assert data == files[middle][CHUNK // 2:CHUNK // 2 + PAGE]
    assert header == files[head][:64 * 1024]
    whole = settle_chunk_gets(cluster)
    ranges = settle_range_gets(cluster)
    touched = {d for gets in (whole, ranges) for v in gets.values() for d, _ in v}
    assert touched, "nothing was fetched, so the test proved nothing"
    assert touched <= set(digest[middle]) | set(digest[head]), (
        f"chunks of other files fetched: whole {whole}, ranges {ranges}")


def test_readahead_does_not_load_back_a_file_the_mount_has_just_served_whole(
        shards, cluster, mount):
    # Concurrent readers of a directory spill their readahead into files another reader has
    # just read. Such a file is in the page cache; loading its chunk back from the disk cache
    # into memory would only take the room of chunks readers still need.
    files, index, digest = shards
    mnt = mount(index)
    with open(mnt.path(_name(3)), "rb") as f:
        assert f.read() == files[_name(3)]
    # Until its cache write ends, the chunk's fetch stays registered and readahead passes it by
    # as in flight; on a slow disk the reads below could overtake that write.
    cached = os.path.join(mnt.cache_dir, digest[_name(3)][0][:2], digest[_name(3)][0])
    assert ckptfs_cli.wait_until(lambda: os.path.exists(cached), 30), "shard 3 never cached"

    _read_in_order(mnt, files, 3)  # Their readahead reaches shard 3 again.

    stats = ckptfs_cli.mount_stats(mnt.mountpoint)
    assert stats["store.disk_loads"] == 0, stats
    assert stats["store.prefetch_skipped"] >= 1, stats
    fetched = _fetched(cluster)
    assert fetched.get(digest[_name(3)][0]) == 1, f"shard 3 fetched more than once: {fetched}"
