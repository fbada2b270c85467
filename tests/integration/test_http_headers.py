"""Nodes that want credentials: `publish`, `mount`, `check` and `gc` send the headers of a header
file (`--http-headers FILE`, `-o http_headers=FILE`) with every request, and a running mount
takes up a rotated token without a remount."""

import errno
import os
import time

import pytest

import ckptfs_cli
import source_tree
from source_tree import MiB

TOKEN = "Bearer t0k3n-one"
ROTATED = "Bearer t0k3n-two"


@pytest.fixture
def private_cluster(nginx_node):
    """Three nodes that answer 401 to any request without TOKEN."""
    return [nginx_node(name, authorization=TOKEN) for name in ("n1", "n2", "n3")]


def _write_headers(path, authorization):
    """Writes the header file by rename, as a secret store swaps a file; mode 0600."""
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# the nodes' token\nAuthorization: {authorization}\n")
    os.rename(path + ".new", path)
    return path


def _tree(test_dir):
    return source_tree.write_two_files(os.path.join(test_dir, "src"), 41)


def test_publish_mount_check_and_gc_reach_nodes_that_want_a_token(
        private_cluster, test_dir, mount):
    src = _tree(test_dir)
    headers = _write_headers(os.path.join(test_dir, "headers"), TOKEN)
    index_url = f"{private_cluster[0].url}/indexes/model.ckptfs"
    args = ckptfs_cli.publish_args(src, index_url, private_cluster, store=False, chunk_size="1M")

    refused = ckptfs_cli.run(args, timeout=300)
    assert refused.returncode == 1, refused.describe()
    assert len(refused.stderr_lines()) == 1 and "HTTP 401 from PUT" in refused.stderr, (
        refused.describe())

    published = ckptfs_cli.run(args + ["--http-headers", headers], timeout=300)
    assert published.returncode == 0, published.describe()

    no_token = ckptfs_cli.Mount(index_url, os.path.join(test_dir, "mnt-refused"), {})
    started = ckptfs_cli.run(ckptfs_cli.mount_args(no_token.index, no_token.mountpoint, {}))
    assert started.returncode == 1, started.describe()
    assert "HTTP 401 from GET " + index_url in started.stderr, started.describe()
    assert not ckptfs_cli.is_mounted(no_token.mountpoint)

    mnt = mount(index_url, http_headers=headers)
    diff = ckptfs_cli.run(["diff", "-r", src, mnt.mountpoint], timeout=120)
    assert diff.returncode == 0, diff.describe()

    bin_ = ckptfs_cli.ckptfs_bin()
    checked = ckptfs_cli.run([bin_, "check", "--verify", index_url, "--http-headers", headers])
    assert checked.returncode == 0, checked.describe()
    assert "checked 9 chunks, 18 replicas (GET and SHA-256): 18 ok" in checked.stdout, (
        checked.describe())
    unchecked = ckptfs_cli.run([bin_, "check", index_url])
    assert unchecked.returncode == 1, unchecked.describe()
    assert "HTTP 401" in unchecked.stderr + unchecked.stdout, unchecked.describe()

    stores = []
    for node in private_cluster:
        stores += ["--store", node.store_dir]
    collected = ckptfs_cli.run([bin_, "gc", index_url, "--min-age", "0", "--http-headers",
                                headers] + stores)
    assert collected.returncode == 0, collected.describe()
    assert "would remove 0 objects" in collected.stdout, collected.describe()
    uncollected = ckptfs_cli.run([bin_, "gc", index_url] + stores)
    assert uncollected.returncode == 1, uncollected.describe()
    assert "HTTP 401" in uncollected.stderr, uncollected.describe()


def test_a_bad_header_file_stops_the_mount_with_one_line_that_names_its_line(
        private_cluster, test_dir):
    src = _tree(test_dir)
    index = os.path.join(test_dir, "model.ckptfs")
    ckptfs_cli.publish(src, index, private_cluster, chunk_size="1M")
    bad = os.path.join(test_dir, "bad-headers")
    with open(bad, "w") as f:
        f.write("Authorization: Bearer x\nBearer s3cret\n")
    mountpoint = os.path.join(test_dir, "mnt")
    os.makedirs(mountpoint)
    for headers, says in ((bad, f"http_headers: {bad} line 2: not a header"),
                          (bad + ".missing", f"http_headers: {bad}.missing: No such file")):
        started = ckptfs_cli.run(ckptfs_cli.mount_args(index, mountpoint,
                                                       {"http_headers": headers}))
        assert started.returncode == 1, started.describe()
        assert started.stderr_lines() == [started.stderr_lines()[0]], started.describe()
        assert says in started.stderr, started.describe()
        assert "s3cret" not in started.stderr
        assert not ckptfs_cli.is_mounted(mountpoint)


def test_a_running_mount_takes_up_a_rotated_token(private_cluster, test_dir, mount):
    src = _tree(test_dir)
    index = os.path.join(test_dir, "model.ckptfs")
    ckptfs_cli.publish(src, index, private_cluster, chunk_size="1M")
    headers = _write_headers(os.path.join(test_dir, "headers"), TOKEN)
    # A read that no replica answers but with 401 goes on asking until its deadline: a token
    # rotated meanwhile still lets it finish. A short one keeps the refused read below short.
    mnt = mount(index, foreground=True, http_headers=headers, timeout=3)
    with open(mnt.path("model.bin"), "rb") as f:
        assert f.read() == source_tree.random_bytes(41, 5 * MiB)

    for node in private_cluster:  # The store rotates its token; the mount still has the old one.
        node.require_authorization(ROTATED)
    with pytest.raises(OSError) as refused:
        with open(mnt.path("sub", "opt.bin"), "rb") as f:
            f.read()
    assert refused.value.errno == errno.EIO
    with open(mnt.path("model.bin"), "rb") as f:  # What the mount has cached still reads.
        assert f.read() == source_tree.random_bytes(41, 5 * MiB)

    _write_headers(headers, ROTATED)
    expected = source_tree.random_bytes(42, 3 * MiB + 7)

    def reads_back():
        try:
            with open(mnt.path("sub", "opt.bin"), "rb") as f:
                return f.read() == expected
        except OSError as e:
            assert e.errno == errno.EIO, e
            return False

    # The file is looked at once a second, and a chunk that just failed fails at once for 2 s.
    deadline = time.monotonic() + 30
    while not reads_back():
        assert time.monotonic() < deadline, "the rotated token never reached the nodes" + (
            mnt.output())
        time.sleep(0.2)
    assert "http_headers: read " + headers + " again (1 header)" in mnt.output(), mnt.output()
