"""`ckptfs gc`: objects that no index in use needs leave the nodes' store directories, and the
indexes in use still mount and read back."""

import os
import shutil
import signal
import subprocess
import time

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


# Publishes by PUT and gc: the leases of store_leases.h.

def _age_files(paths, seconds):
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def _store_files(cluster):
    return [os.path.join(root, name) for node in cluster
            for root, _, names in os.walk(os.path.join(node.store_dir, "chunks")) for name in names]


def _leases(cluster, suffix):
    found = []
    for node in cluster:
        directory = os.path.join(node.store_dir, "leases")
        if os.path.isdir(directory):
            found += [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(suffix)]
    return found


def _wait_for(predicate, what, limit=30.0):
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {limit} s"
        time.sleep(0.001)


def _kill(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    proc.wait(timeout=30)


def test_what_a_publish_by_put_found_stays_until_its_index_is_named_to_gc(
        cluster, test_dir, mount):
    versions = _publish_two_versions(cluster, test_dir)
    _age_files(_store_files(cluster), 7200)
    # The next checkpoint, published by PUT, finds new.bin's and shared.bin's old objects on the
    # nodes and sends only its own file; a gc told only of the old index runs after it.
    newer = os.path.join(test_dir, "newer")
    shutil.copytree(versions["new"][0], newer)
    source_tree.write_file(os.path.join(newer, "newer.bin"), source_tree.random_bytes(24, MiB))
    newer_index = os.path.join(test_dir, "newer.index")
    published = ckptfs_cli.run(ckptfs_cli.publish_args(newer, newer_index, cluster, store=False,
                                                       chunk_size="1M"), timeout=300)
    assert published.returncode == 0, published.describe()
    assert _leases(cluster, ".publishing") == [], "a lease stayed after the publish"
    assert len(_leases(cluster, ".found")) == 3
    found_only_by_newer = _chunks(newer_index) - _chunks(versions["old"][1])

    kept = _gc(versions["old"][1], cluster, "--delete")
    assert kept.returncode == 0, kept.describe()
    # new.bin's 4 chunks, found (2 replicas each), and newer.bin's one, sent.
    assert "removed 0 objects" in kept.stdout, kept.stdout
    assert "kept 10 files too recent to remove" in kept.stdout, kept.stdout
    mnt = mount(newer_index)
    diff = ckptfs_cli.run(["diff", "-r", newer, mnt.mountpoint], timeout=120)
    assert diff.returncode == 0, diff.describe()

    # An hour on, the lists are old: by then the new index is named, or its objects may go.
    _age_files(_leases(cluster, ".found"), 7200)
    _age_files(_store_files(cluster), 7200)
    gone = _gc(versions["old"][1], cluster, "--delete")
    assert gone.returncode == 0, gone.describe()
    assert _leases(cluster, ".found") == [], "old lists of found objects stayed"
    left = set().union(*_objects(cluster).values())
    assert not (found_only_by_newer & left), "objects no named index needs stayed"


def test_gc_and_a_publish_by_put_refuse_to_run_together(cluster, nginx_node, test_dir):
    versions = _publish_two_versions(cluster, test_dir)
    _age_files(_store_files(cluster), 7200)
    big = os.path.join(test_dir, "big")
    source_tree.write_file(os.path.join(big, "big.bin"), source_tree.random_bytes(25, 192 * MiB))

    # A publish by PUT under way: caught right after its leases are on the nodes.
    publish = subprocess.Popen(ckptfs_cli.publish_args(big, os.path.join(test_dir, "big.index"),
                                                       cluster, store=False, chunk_size="1M"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(_leases(cluster, ".publishing")) == 3, "publish leases")
        publish.send_signal(signal.SIGSTOP)
        assert publish.poll() is None, "the publish ended before it could be caught"
        before = _objects(cluster)
        refused = _gc(versions["new"][1], cluster, "--min-age", "0", "--delete")
        assert refused.returncode == 1, refused.describe()
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "a publish by PUT is under way: " in lines[0] and (
            f"pid: {publish.pid}" in lines[0] or f"pid {publish.pid}" in lines[0]), lines
        assert _objects(cluster) == before, "gc removed objects during a publish"
        publish.send_signal(signal.SIGCONT)
        out, err = publish.communicate(timeout=300)
        assert publish.returncode == 0, err
    finally:
        _kill(publish)
    assert _leases(cluster, ".publishing") == []

    # A gc at work: held while it downloads its index from a node that has stopped answering.
    index_node = nginx_node("idx")
    shutil.copy(versions["new"][1], os.path.join(index_node.store_dir, "new.ckptfs"))
    index_node.freeze()
    gc = subprocess.Popen(
        [ckptfs_cli.ckptfs_bin(), "gc", f"{index_node.url}/new.ckptfs", "--delete", "--min-age",
         "0"] + [arg for node in cluster for arg in ("--store", node.store_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    notes = [os.path.join(node.store_dir, "leases", "gc") for node in cluster]
    try:
        _wait_for(lambda: all(os.path.exists(n) for n in notes), "gc notes")
        gc.send_signal(signal.SIGSTOP)
        small = os.path.join(test_dir, "small")
        source_tree.write_file(os.path.join(small, "s.bin"), source_tree.random_bytes(26, MiB))
        before = _objects(cluster)
        args = ckptfs_cli.publish_args(small, os.path.join(test_dir, "small.index"), cluster,
                                       store=False, chunk_size="1M")
        stopped = ckptfs_cli.run(args, timeout=120)
        assert stopped.returncode == 1, stopped.describe()
        lines = stopped.stderr.strip().splitlines()
        assert len(lines) == 1 and "`ckptfs gc` is removing unused objects" in lines[0], lines
        assert _objects(cluster) == before, "the publish stored objects while gc worked"
        assert _leases(cluster, ".publishing") == [], "the refused publish left its leases"
        assert not os.path.exists(os.path.join(test_dir, "small.index"))

        # A gc that dies leaves its notes: they hold publishes off until they are 10 minutes
        # old, then are passed over.
        gc.send_signal(signal.SIGKILL)
        gc.wait(timeout=30)
        assert all(os.path.exists(n) for n in notes)
        assert ckptfs_cli.run(args, timeout=120).returncode == 1
        _age_files(notes, 601)
        passed = ckptfs_cli.run(args, timeout=120)
        assert passed.returncode == 0, passed.describe()
        assert "passing over" in passed.stderr and "(a gc that did not finish)" in passed.stderr, (
            passed.stderr)
    finally:
        _kill(gc)
        index_node.thaw()
    # The next gc takes the stale notes over and removes them at its end.
    after = _gc(versions["new"][1], cluster, "--delete")
    assert after.returncode == 0, after.describe()
    assert not any(os.path.exists(n) for n in notes)
