"""`ckptfs gc`: objects that no index in use needs leave the nodes' store directories, and the
indexes in use still mount and read back."""

import os

import pytest

import ckptfs_cli
import source_tree
from index_db import IndexDb
from source_tree import MiB


def _publish_two_versions(cluster, test_dir):
    """Publishes an old and a new checkpoint that share one file; returns their (src, index)."""
    shared = source_tree.random_bytes(21, 2 * MiB)
    versions = {}
    for name, own_seed in (("old", 22), ("new", 23)):
        src = os.path.join(test_dir, name)
        source_tree.write_file(os.path.join(src, "shared.bin"), shared)
        source_tree.write_file(os.path.join(src, name + ".bin"),
                               source_tree.random_bytes(own_seed, 3 * MiB + 5))
        index = os.path.join(test_dir, name + ".index")
        ckptfs_cli.publish(src, index, cluster, store=True, chunk_size="1M")
        versions[name] = (src, index)
    return versions


def _chunks(index):
    with IndexDb(index) as db:
        return set(db.chunks())


def _objects(cluster):
    """{node name: set of hex digests} of the objects in the nodes' stores."""
    return {node.name: set(node.objects()) for node in cluster}


def _gc(index, cluster, *extra):
    args = [ckptfs_cli.ckptfs_bin(), "gc", index]
    for node in cluster:
        args += ["--store", node.store_dir]
    return ckptfs_cli.run(args + list(extra), timeout=120)


@pytest.mark.parametrize("given_as", ["file", "url"])
def test_gc_removes_what_only_an_old_index_needed_and_the_new_one_still_reads_back(
        cluster, test_dir, mount, given_as):
    versions = _publish_two_versions(cluster, test_dir)
    in_use = versions["new"][1]
    if given_as == "url":  # As a publish to -o URL leaves it, for machines to mount.
        in_use = f"{cluster[0].url}/indexes/new.ckptfs"
        published = ckptfs_cli.run(ckptfs_cli.publish_args(versions["new"][0], in_use, cluster,
                                                           chunk_size="1M"), timeout=300)
        assert published.returncode == 0, published.describe()
    only_old = _chunks(versions["old"][1]) - _chunks(versions["new"][1])
    assert len(only_old) == 4, "old.bin's 4 chunks"
    before = _objects(cluster)
    assert all(any(d in objs for objs in before.values()) for d in only_old)

    told = _gc(in_use, cluster, "--min-age", "0")
    assert told.returncode == 0, told.describe()
    assert "would remove 8 objects (6.0 MiB) that no index needs (run with --delete)" in (
        told.stdout), told.stdout
    assert _objects(cluster) == before, "removed without --delete"

    done = _gc(in_use, cluster, "--min-age", "0", "--delete")
    assert done.returncode == 0, done.describe()
    assert "removed 8 objects (6.0 MiB) that no index needs" in done.stdout, done.stdout
    after = _objects(cluster)
    assert after == {name: objs - only_old for name, objs in before.items()}, (before, after)

    mnt = mount(versions["new"][1])
    diff = ckptfs_cli.run(["diff", "-r", versions["new"][0], mnt.mountpoint], timeout=120)
    assert diff.returncode == 0, diff.describe()
    new_check = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "check", versions["new"][1]])
    assert new_check.returncode == 0, new_check.describe()
    old_check = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "check", versions["old"][1]])
    assert old_check.returncode == 1 and "missing" in old_check.stdout, old_check.describe()


def test_gc_keeps_objects_written_within_the_last_hour(cluster, test_dir):
    # A publish writes its objects before its index: a gc meanwhile must not take them.
    versions = _publish_two_versions(cluster, test_dir)
    before = _objects(cluster)
    result = _gc(versions["new"][1], cluster, "--delete")
    assert result.returncode == 0, result.describe()
    assert "removed 0 objects" in result.stdout and "kept 8 files too recent" in result.stdout, (
        result.stdout)
    assert _objects(cluster) == before


def test_gc_of_a_bad_index_or_without_a_store_fails_with_one_line_and_removes_nothing(
        cluster, test_dir):
    versions = _publish_two_versions(cluster, test_dir)
    before = _objects(cluster)
    bad = os.path.join(test_dir, "bad.index")
    with open(bad, "w") as f:
        f.write("not an index")
    result = _gc(bad, cluster, "--min-age", "0", "--delete")
    assert result.returncode == 1, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptfs: ") and bad in lines[0], lines
    no_store = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "gc", versions["new"][1], "--delete"])
    assert no_store.returncode == 2 and "--store" in no_store.stderr, no_store.describe()
    assert _objects(cluster) == before
