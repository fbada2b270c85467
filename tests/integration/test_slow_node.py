"""A node that still answers, only slowly (a failing disk, a congested link, a server that caps
each connection), must not set the pace of reads that have fast replicas to turn to.

Three nodes hold every chunk (R=3); one of them sends each connection 1 MB/s (nginx limit_rate
1m), so that a 4 MiB chunk would take it 4 s, against milliseconds from the others. A 64 MiB file
is read on a fresh mount: the first fetches spread over all three nodes, none of them measured
yet. An attempt on the slow node is left for a fast replica once it has run for the grace
(500 ms; nginx sends its limit once a second, so the first look comes at about 1 s) and its
speed says it would take more than 4 times as long as the faster node, and the fetch resumes
there from its verified bytes; the measured speeds then keep reads on the fast nodes.
"""

import os

import pytest

import ckptfs_cli
import source_tree
from nginx_node import settle_chunk_gets, settle_range_gets
from source_tree import MiB

CHUNK = 4 * MiB
BIG = "big.bin"


@pytest.fixture
def cluster(nginx_node):
    return [nginx_node("fast1"), nginx_node("fast2"), nginx_node("slow", limit_rate="1m")]


@pytest.fixture
def published(cluster, test_dir):
    src = os.path.join(test_dir, "src")
    data = source_tree.random_bytes(5151, 64 * MiB)
    source_tree.write_file(os.path.join(src, BIG), data)
    index = os.path.join(test_dir, "slow.index")
    ckptfs_cli.publish(src, index, cluster, store=True, replicas=3)
    for node in cluster:
        node.clear_log()
    return data, index


def test_a_slow_node_is_left_for_fast_replicas_and_never_delivers_a_whole_chunk(
        published, cluster, mount):
    data, index = published
    slow = cluster[2]
    # nginx sends a limited connection its bytes in bursts a second apart: a 2 s stall timeout
    # keeps the gaps from being taken for a stall, so that only speed decides here.
    mnt = mount(index, foreground=True, stall_timeout=2)
    ckptfs_cli.wait_for_greetings(mnt.mountpoint)
    with open(mnt.path(BIG), "rb") as f:
        assert f.read() == data
    stats = ckptfs_cli.mount_stats(mnt.mountpoint)
    log = mnt.output()
    gets = settle_chunk_gets(cluster)
    whole = [sent for _, sent in gets[slow.name] if sent == CHUNK]
    print(f"slow node: {len(gets[slow.name])} GET(s), {len(whole)} whole; "
          f"{stats.get('fetch.slow_attempts')} left as too slow")
    assert gets[slow.name], (
        f"the slow node was never asked, so this proves nothing: {gets}, {stats}")
    assert not whole, f"the slow node delivered {len(whole)} whole chunk(s) at 1 MB/s: {gets}"
    assert stats["fs.eio_fetch"] == 0, stats
    assert stats["fetch.slow_attempts"] >= 1, stats
    assert stats["fetch.failed_attempts"] == stats["fetch.slow_attempts"], (
        f"an attempt failed for another reason than being too slow (a timeout?): {stats}{log}")
    assert f"node {slow.name}" in log and "too slow" in log, log
    # Each chunk left behind was resumed on a fast node with a Range GET of what it lacked.
    resumed = settle_range_gets(cluster[:2])
    assert sum(len(r) for r in resumed.values()) >= stats["fetch.slow_attempts"], resumed
    assert stats["fetch.resumed_attempts"] >= stats["fetch.slow_attempts"], stats
