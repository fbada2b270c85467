"""index_sha256=: a mount that accepts only the index version whose SHA-256 publish printed.

An index URL names whatever was published there last. A pinned mount gets the version it names
or nothing, and once it has that version it needs neither the index server nor its agreement:
a later publish to the same URL, or the server being down, changes nothing for it.
"""

import hashlib
import os
import re
import shutil

import ckptfs_cli
import source_tree
from source_tree import MiB

SHA256_LINE = re.compile(r"^  index SHA-256: ([0-9a-f]{64}) \(-o index_sha256= pins this version\)$",
                         re.MULTILINE)


def _printed_sha256(result):
    found = SHA256_LINE.findall(result.stdout)
    assert len(found) == 1, result.describe()
    return found[0]


def _refusal(mnt):
    """Runs the mount of `mnt`, which must fail with one line and mount nothing; the line."""
    result = ckptfs_cli.run(ckptfs_cli.mount_args(mnt.index, mnt.mountpoint, mnt.options),
                            timeout=60)
    assert result.returncode != 0, result.describe()
    lines = result.stderr_lines()
    assert len(lines) == 1 and lines[0].startswith("ckptfs: "), result.describe()
    assert not ckptfs_cli.is_mounted(mnt.mountpoint), "mounted despite the error"
    return lines[0]


def _version(test_dir, name, seed):
    src = os.path.join(test_dir, name)
    source_tree.write_file(os.path.join(src, "weights.bin"),
                           source_tree.random_bytes(seed, 3 * MiB + 17))
    source_tree.write_file(os.path.join(src, "config.json"), f'{{"version": "{name}"}}\n'.encode())
    return src


def _publish_to(url, src, nodes):
    result = ckptfs_cli.run(ckptfs_cli.publish_args(src, url, nodes, store=False,
                                                    chunk_size="1M"), timeout=300)
    assert result.returncode == 0, result.describe()
    return _printed_sha256(result)


def _same_tree(src, mnt):
    diff = ckptfs_cli.run(["diff", "-r", src, mnt.mountpoint], timeout=120)
    assert diff.returncode == 0, diff.describe()


def _index_gets(node, uri):
    return [status for method, got_uri, status, _ in node.log_lines()
            if method == "GET" and got_uri == uri]


def test_publish_prints_the_sha256_of_the_index_it_wrote(published):
    with open(published.index, "rb") as f:
        assert _printed_sha256(published.result) == hashlib.sha256(f.read()).hexdigest()


def test_a_local_index_mounts_only_with_its_own_sha256(published, mount):
    printed = _printed_sha256(published.result)
    mnt = mount(published.index, index_sha256=printed.upper())
    assert source_tree.sha256_file(mnt.path(source_tree.ODD)) == published.tree.sha256[source_tree.ODD]
    mnt.unmount()

    other = hashlib.sha256(b"another index").hexdigest()
    line = _refusal(mount(published.index, index_sha256=other, start=False))
    assert line == (f"ckptfs: index {published.index} has SHA-256 {printed}, not the {other} "
                    "asked for"), line
    line = _refusal(mount(published.index, index_sha256=printed[:63], start=False))
    assert "option index_sha256 must be 64 hex digits" in line, line


def test_check_and_gc_take_only_the_index_version_they_are_pinned_to(published):
    printed = _printed_sha256(published.result)
    other = hashlib.sha256(b"another index").hexdigest()
    check = [ckptfs_cli.ckptfs_bin(), "check", published.index]
    stores = [arg for node in published.nodes for arg in ("--store", node.store_dir)]
    gc = [ckptfs_cli.ckptfs_bin(), "gc", published.index, *stores, "--min-age", "0"]
    objects = {node.name: node.objects() for node in published.nodes}

    for args in (check + ["--index-sha256", other], gc + ["--delete", "--index-sha256", other]):
        result = ckptfs_cli.run(args, timeout=120)
        assert result.returncode == 1, result.describe()
        assert result.stderr_lines() == [f"ckptfs: index {published.index} has SHA-256 {printed}, "
                                         f"not the {other} asked for"], result.describe()
    result = ckptfs_cli.run(gc + ["--index-sha256", printed, "--index-sha256", printed])
    assert result.returncode == 1 and result.stderr_lines() == [
        "ckptfs: --index-sha256 given 2 times for 1 indexes: give one per index, in their order"
    ], result.describe()
    result = ckptfs_cli.run(check + ["--index-sha256", printed[:63]])
    assert result.returncode == 1, result.describe()
    assert "--index-sha256 must be 64 hex digits" in result.stderr, result.describe()
    assert not any(node.log_lines() for node in published.nodes), "a refused check asked the nodes"
    assert {node.name: node.objects() for node in published.nodes} == objects

    result = ckptfs_cli.run(check + ["--index-sha256", printed.upper()], timeout=120)
    assert result.returncode == 0, result.describe()
    result = ckptfs_cli.run(gc + ["--index-sha256", printed], timeout=120)  # Tells, removes nothing.
    assert result.returncode == 0 and "all stores:" in result.stdout, result.describe()


def test_a_pinned_index_url_mounts_its_version_after_the_url_moved_on_and_with_its_server_down(
        cluster, test_dir, mount):
    first, second = _version(test_dir, "first", 51), _version(test_dir, "second", 52)
    uri = "/indexes/latest.ckptfs"
    url = cluster[0].url + uri
    first_sha = _publish_to(url, first, cluster)
    cache = os.path.join(test_dir, "cache")

    mnt = mount(url, cache_dir=cache, index_sha256=first_sha)
    _same_tree(first, mnt)
    mnt.unmount()
    assert _index_gets(cluster[0], uri) == [200]

    # A new version published to the same URL: the pinned mount still gets the first, unasked.
    second_sha = _publish_to(url, second, cluster)
    assert second_sha != first_sha
    cluster[0].clear_log()
    mnt = mount(url, cache_dir=cache, index_sha256=first_sha)
    _same_tree(first, mnt)
    mnt.unmount()
    assert _index_gets(cluster[0], uri) == []
    # An unpinned mount gets what the URL names now; so does one pinned to it.
    mnt = mount(url, cache_dir=cache)
    _same_tree(second, mnt)
    mnt.unmount()
    mnt = mount(url, cache_dir=cache, index_sha256=second_sha)
    _same_tree(second, mnt)
    mnt.unmount()
    assert _index_gets(cluster[0], uri) == [200, 200]
    kept = sorted(f for f in os.listdir(os.path.join(cache, "indexes")) if f.startswith("sha256-"))
    assert kept == sorted(f"sha256-{sha}.ckptfs" for sha in (first_sha, second_sha)), kept

    # The index server down: both pinned versions mount without index_fallback (the chunks are
    # on the other nodes as well, R=2).
    cluster[0].stop()
    for src, sha in ((first, first_sha), (second, second_sha)):
        mnt = mount(url, cache_dir=cache, index_sha256=sha, timeout=10)
        _same_tree(src, mnt)
        mnt.unmount()
    line = _refusal(mount(url, cache_dir=cache, start=False))
    assert "cannot download the index" in line, line


def test_a_pinned_mount_refuses_another_version_and_keeps_none_of_it(cluster, test_dir, mount):
    first, second = _version(test_dir, "first", 61), _version(test_dir, "second", 62)
    url = cluster[0].url + "/indexes/latest.ckptfs"
    first_sha = _publish_to(url, first, cluster)
    second_sha = _publish_to(url, second, cluster)
    cache = os.path.join(test_dir, "cache")
    os.makedirs(cache, mode=0o700)

    line = _refusal(mount(url, cache_dir=cache, index_sha256=first_sha, start=False))
    assert line == (f"ckptfs: index {url} has SHA-256 {second_sha}, not the {first_sha} of "
                    "index_sha256="), line
    assert os.listdir(os.path.join(cache, "indexes")) == []


def test_a_pinned_copy_changed_on_disk_is_downloaded_again(cluster, test_dir, mount):
    src = _version(test_dir, "only", 71)
    uri = "/indexes/latest.ckptfs"
    url = cluster[0].url + uri
    sha = _publish_to(url, src, cluster)
    cache = os.path.join(test_dir, "cache")
    mount(url, cache_dir=cache, index_sha256=sha).unmount()
    copy = os.path.join(cache, "indexes", f"sha256-{sha}.ckptfs")
    with open(copy, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0x01]))

    mnt = mount(url, cache_dir=cache, index_sha256=sha)
    warned = [l for l in mnt.result.stderr_lines() if "is not the version pinned" in l]
    assert len(warned) == 1 and copy in warned[0], mnt.result.describe()
    _same_tree(src, mnt)
    assert _index_gets(cluster[0], uri) == [200, 200]
    with open(copy, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == sha
