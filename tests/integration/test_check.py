"""`ckptfs check`: every replica an index lists, asked of its node; and the repair it points to."""

import os

import ckptfs_cli
import source_tree
from index_db import IndexDb

MiB = 1 << 20


def _check(index, *extra):
    return ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "check", index, *extra], timeout=120)


def _lines(result, prefix):
    return [line for line in result.stdout.splitlines() if line.startswith(prefix)]


def test_check_finds_lost_and_damaged_replicas_and_a_second_publish_repairs_them(cluster,
                                                                                 test_dir):
    src = os.path.join(test_dir, "src")
    source_tree.write_file(os.path.join(src, "weights.bin"),
                           source_tree.random_bytes(51, 5 * MiB + 77))
    source_tree.write_file(os.path.join(src, "config.json"), b'{"heads": 8}\n')
    index = os.path.join(test_dir, "check.index")
    ckptfs_cli.publish(src, index, cluster, store=True, chunk_size="1M")
    with IndexDb(index) as db:
        chunks = sorted(db.chunks().items())
    replicas = sum(len(nodes) for _, (_, nodes) in chunks)

    clean = _check(index, "--verify")
    assert clean.returncode == 0, clean.describe()
    assert f"checked {len(chunks)} chunks, {replicas} replicas (GET and SHA-256): {replicas} ok" \
        in clean.stdout, clean.stdout

    # A lost object on one node, and one damaged in place (same size) on another.
    (lost, (_, lost_on)), (damaged, (size, damaged_on)) = chunks[0], chunks[1]
    lost_node = next(n for n in cluster if n.name == lost_on[0])
    damaged_node = next(n for n in cluster if n.name == damaged_on[-1])
    os.remove(lost_node.object_path(lost))
    with open(damaged_node.object_path(damaged), "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))

    heads = _check(index)
    assert heads.returncode == 1, heads.describe()
    assert _lines(heads, f"node {lost_node.name}: missing: HTTP 404 from HEAD "), heads.stdout
    assert not _lines(heads, f"node {damaged_node.name}: corrupt"), heads.stdout
    verified = _check(index, "--verify")
    assert verified.returncode == 1, verified.describe()
    corrupt = _lines(verified, f"node {damaged_node.name}: corrupt: ")
    assert len(corrupt) == 1 and damaged in corrupt[0], verified.stdout
    assert "chunks with no good replica: 0" in verified.stdout, verified.stdout

    # The repair: drop the damaged object (publish keeps an object of the right size), publish
    # the same source again; it writes only what is missing.
    os.remove(damaged_node.object_path(damaged))
    again = ckptfs_cli.publish(src, index, cluster, store=True, chunk_size="1M")
    assert "sent 1 (" in again.stdout, again.stdout
    repaired = _check(index, "--verify")
    assert repaired.returncode == 0, repaired.describe()


def test_check_of_a_node_that_is_down_counts_every_replica_on_it(cluster, test_dir):
    src = os.path.join(test_dir, "src")
    source_tree.write_file(os.path.join(src, "weights.bin"),
                           source_tree.random_bytes(52, 12 * MiB))
    index = os.path.join(test_dir, "down.index")
    ckptfs_cli.publish(src, index, cluster, store=True, chunk_size="1M")
    with IndexDb(index) as db:
        on_down = sum(1 for _, (_, nodes) in db.chunks().items() if cluster[2].name in nodes)
    cluster[2].stop()
    result = _check(index)
    assert result.returncode == 1, result.describe()
    assert len(_lines(result, f"node {cluster[2].name}: unreachable: ")) == min(on_down, 5), \
        result.stdout
    assert f"{on_down} unreachable" in _lines(result, f"node {cluster[2].name} (")[0], result.stdout
    assert "chunks with no good replica: 0" in result.stdout, "R=2 kept a copy of every chunk"


def test_check_of_a_bad_index_fails_with_one_line(test_dir):
    path = os.path.join(test_dir, "garbage.index")
    source_tree.write_file(path, source_tree.random_bytes(53, 4096))
    result = _check(path)
    assert result.returncode == 1 and result.stdout == "", result.describe()
    lines = result.stderr_lines()
    assert len(lines) == 1 and lines[0].startswith("ckptfs: "), result.describe()
