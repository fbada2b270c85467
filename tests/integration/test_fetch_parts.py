"""Lone fetches in parts: a chunk fetched while no other fetch runs (a file read on its own), from
nodes whose single connection has been slow, comes as parallel Range GETs of 1 MiB parts spread
over its replicas, each part verified and failing over on its own; fetch_parts=1 keeps one GET.

The nodes cap every connection (nginx limit_rate 16m, as a store that limits connections or a
link with a long round trip would), so that one GET of a 4 MiB chunk takes about 250 ms, well
over the 20 ms from which splitting pays. Each test publishes 4 MiB files (one 4 MiB chunk of
64 KiB blocks each) to three such nodes with three replicas, reads one file to measure the nodes,
then reads another alone and looks at the nginx access logs.
"""

import os

import pytest

import ckptfs_cli
import source_tree
from index_db import IndexDb
from nginx_node import settle_chunk_gets, settle_range_gets
from source_tree import MiB

SIZE = 4 * MiB
FIRST, LONE = "first.bin", "lone.bin"


@pytest.fixture
def slow_cluster(nginx_node):
    return [nginx_node(name, limit_rate="16m") for name in ("n1", "n2", "n3")]


@pytest.fixture
def published(slow_cluster, test_dir):
    """({relpath: bytes}, index path, {relpath: chunk digest})."""
    src = os.path.join(test_dir, "src")
    files = {FIRST: source_tree.random_bytes(4141, SIZE), LONE: source_tree.random_bytes(4242, SIZE)}
    for rel, data in files.items():
        source_tree.write_file(os.path.join(src, rel), data)
    index = os.path.join(test_dir, "lone.index")
    ckptfs_cli.publish(src, index, slow_cluster, store=True, replicas=3)
    digests = {}
    with IndexDb(index) as db:
        for rel in files:
            [extent] = db.extents(rel)
            digests[rel] = extent.digest
    return files, index, digests


def _read(mnt, rel):
    with open(mnt.path(rel), "rb") as f:
        return f.read()


def _requests_for(digest, gets):
    """{node name: sorted body sizes} of the GETs of `digest` in settle_*_gets output."""
    return {name: sorted(n for d, n in v if d == digest) for name, v in gets.items()
            if any(d == digest for d, _ in v)}


def _measure_then_clear(mnt, files, nodes):
    """Reads FIRST, the mount's first fetch: one GET, which measures the node it came from."""
    assert _read(mnt, FIRST) == files[FIRST]
    settle_chunk_gets(nodes)
    for node in nodes:
        node.clear_log()


def test_a_file_read_alone_from_slow_nodes_comes_as_parallel_parts(published, slow_cluster,
                                                                    mount):
    files, index, digests = published
    mnt = mount(index, dir_readahead=0)
    _measure_then_clear(mnt, files, slow_cluster)
    assert ckptfs_cli.mount_stats(mnt.mountpoint)["fetch.split_fetches"] == 0, (
        "the first fetch had no measured node and should have been one GET")

    assert _read(mnt, LONE) == files[LONE]

    whole = _requests_for(digests[LONE], settle_chunk_gets(slow_cluster))
    parts = _requests_for(digests[LONE], settle_range_gets(slow_cluster))
    assert whole == {}, f"a plain GET besides the parts: {whole}"
    assert sorted(n for sizes in parts.values() for n in sizes) == [MiB] * 4, parts
    assert len(parts) == 3, f"the four parts should start on all three nodes: {parts}"
    stats = ckptfs_cli.mount_stats(mnt.mountpoint)
    assert stats["fetch.split_fetches"] == 1, stats
    assert stats["fetch.bytes_fetched"] == 2 * SIZE, stats
    assert stats["fetch.range_fetches"] == 0, stats


def test_with_fetch_parts_1_a_lone_chunk_is_one_get(published, slow_cluster, mount):
    files, index, digests = published
    mnt = mount(index, dir_readahead=0, fetch_parts=1)
    _measure_then_clear(mnt, files, slow_cluster)

    assert _read(mnt, LONE) == files[LONE]

    whole = _requests_for(digests[LONE], settle_chunk_gets(slow_cluster))
    assert sorted(whole.values()) == [[SIZE]], f"expected one GET of the chunk: {whole}"
    assert _requests_for(digests[LONE], settle_range_gets(slow_cluster)) == {}
    assert ckptfs_cli.mount_stats(mnt.mountpoint)["fetch.split_fetches"] == 0


def test_parts_whose_node_is_down_come_from_the_other_replicas(published, slow_cluster, mount):
    files, index, digests = published
    mnt = mount(index, dir_readahead=0)
    _measure_then_clear(mnt, files, slow_cluster)
    down = slow_cluster[1]
    down.stop()
    alive = [node for node in slow_cluster if node is not down]

    assert _read(mnt, LONE) == files[LONE]

    # nginx logs a request once it is done, which under load can be after the read returned.
    assert _requests_for(digests[LONE], settle_chunk_gets(alive)) == {}, "a plain GET"
    parts = _requests_for(digests[LONE], settle_range_gets(alive))
    assert sorted(n for sizes in parts.values() for n in sizes) == [MiB] * 4, parts
    stats = ckptfs_cli.mount_stats(mnt.mountpoint)
    assert stats["fetch.split_fetches"] == 1, stats
    assert stats["fetch.failed_attempts"] >= 1, f"no part tried the stopped node: {stats}"
