"""Fixtures for the loader tests: real ML libraries loading checkpoints from a real ckptfs mount.

The artifacts are generated once per session (tests/loaders/artifacts.py), published once to three
real nginx nodes on 127.0.0.1 with R=2 and --store, and every test mounts the index it needs with
a fresh cache_dir. Teardown runs also when a test fails: mounts are unmounted (fusermount3 -u,
then -uz, the daemon killed if it lingers), nginx is stopped and the temporary tree is removed.

The nginx node, the ckptfs command driver and the index reader come from tests/integration
(nginx_node.py, ckptfs_cli.py, index_db.py), imported as modules; their conftest is not used.
See docs/LOADERS.md.
"""

import os
import shutil
import sys
import tempfile

# Before TensorFlow, Keras or PyTorch is imported anywhere: quiet logs, two cores.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, HERE)

import ckptfs_cli  # noqa: E402
import nginx_node  # noqa: E402
from index_db import IndexDb  # noqa: E402

import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(2)
tf.config.experimental.enable_op_determinism()
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

import artifacts  # noqa: E402

NODE_NAMES = ("n1", "n2", "n3")
REPLICAS = 2

# Facts the tests want to see in the run's output even when they pass (bytes measured, which
# torch.load variant ran); printed at the end by pytest_terminal_summary.
NOTES = []


@pytest.fixture(scope="session")
def note():
    """note(text): a line for the "loader notes" section at the end of the run."""
    return NOTES.append


def pytest_terminal_summary(terminalreporter):
    if NOTES:
        terminalreporter.section("loader notes")
        for text in NOTES:
            terminalreporter.write_line(text)


def _fail(message):
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def ckptfs_bin():
    """$CKPTFS_BIN (else <repo>/build/cli/ckptfs); a missing binary fails the test."""
    try:
        return ckptfs_cli.ckptfs_bin()
    except RuntimeError as e:
        _fail(str(e))


@pytest.fixture(scope="session")
def machine_ok(ckptfs_bin):
    """What every test needs from the machine; anything missing fails with the reason."""
    problems = ckptfs_cli.machine_problems("loader")
    if problems:
        _fail("; ".join(problems))


@pytest.fixture(scope="session")
def work_root(machine_ok):
    """One directory for the run ($CKPTFS_LOADERS_TMP or /tmp), removed at the end."""
    base = tempfile.mkdtemp(prefix="ckptfs-loaders-",
                            dir=os.environ.get("CKPTFS_LOADERS_TMP", "/tmp"))
    yield base
    ckptfs_cli.unmount_everything_under(base)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def nodes(work_root):
    """Three running nginx nodes n1..n3 on 127.0.0.1 for the whole session."""
    started = []
    try:
        for name in NODE_NAMES:
            node = nginx_node.NginxNode(name, os.path.join(work_root, "node-" + name))
            started.append(node)
            node.start()
        yield started
    finally:
        for node in started:
            node.stop()


class Published:
    """A tree published to the session's nodes: its index, chunk size and access-log counters."""

    def __init__(self, tree, index, nodes, publish_result):
        self.tree = tree
        self.index = index
        self.nodes = nodes
        self.publish_result = publish_result
        with IndexDb(index) as db:
            self.chunk_size = int(db.meta()["chunk_size"])

    def clear_logs(self):
        for node in self.nodes:
            node.clear_log()

    def settled_chunk_gets(self):
        """[(node, digest, bytes)] of chunk GETs since clear_logs(), whole (200) and Range GETs
        of blocks (206), once the logs are quiet."""
        whole = nginx_node.settle_chunk_gets(self.nodes)
        ranges = nginx_node.settle_range_gets(self.nodes)
        return [(name, digest, sent) for gets in (whole, ranges)
                for name, entries in sorted(gets.items()) for digest, sent in entries]

    def extents(self, relpath):
        with IndexDb(self.index) as db:
            return db.extents(relpath)


def _publish(tree, name, nodes, work_root):
    index = os.path.join(work_root, name + ".ckptfs")
    result = ckptfs_cli.publish(tree.root, index, nodes, store=True, replicas=REPLICAS,
                                timeout=900)
    return Published(tree, index, nodes, result)


@pytest.fixture(scope="session")
def small_published(work_root, nodes):
    """Every small artifact (TF checkpoint, SavedModel, Keras, safetensors, torch, npy),
    published."""
    tree = artifacts.make_small_tree(os.path.join(work_root, "small"))
    return _publish(tree, "small", nodes, work_root)


@pytest.fixture(scope="session")
def big_published(work_root, nodes):
    """The >1 GiB TF checkpoint and safetensors file, published; the source is then deleted."""
    tree = artifacts.make_big_tree(os.path.join(work_root, "big"))
    assert tree.total_tensor_bytes >= artifacts.GiB, tree.total_tensor_bytes
    published = _publish(tree, "big", nodes, work_root)
    # Keep the small files the tests measure against, drop the gigabytes of source data.
    published.tf_index_bytes = os.path.getsize(
        os.path.join(tree.root, tree.tf_prefix + ".index"))
    published.tf_data_bytes = sum(
        os.path.getsize(os.path.join(tree.root, os.path.dirname(tree.tf_prefix), f))
        for f in os.listdir(os.path.join(tree.root, os.path.dirname(tree.tf_prefix)))
        if ".data-" in f)
    st_path = os.path.join(tree.root, tree.safetensors)
    published.st_bytes = os.path.getsize(st_path)
    published.st_header_bytes = artifacts.safetensors_header_bytes(st_path)
    published.st_offsets = artifacts.safetensors_offsets(st_path)
    shutil.rmtree(tree.root)
    return published


@pytest.fixture
def test_dir(work_root, request):
    """A fresh directory for one test, removed after it (after its mounts are gone)."""
    with ckptfs_cli.test_directory(work_root, request.node.name) as path:
        yield path


class MountFactory:
    """mount(published) → a ckptfs_cli.Mount that is up, with a fresh cache_dir."""

    def __init__(self, base):
        self.base = base
        self.mounts = []

    def __call__(self, published, **options):
        n = len(self.mounts)
        options.setdefault("cache_dir", os.path.join(self.base, f"cache-{n}"))
        mnt = ckptfs_cli.Mount(published.index, os.path.join(self.base, f"mnt-{n}"), options)
        self.mounts.append(mnt)
        mnt.start()
        return mnt

    def unmount_all(self):
        errors = []
        for mnt in reversed(self.mounts):
            try:
                mnt.unmount()
            except Exception as e:  # Keep unmounting the others.
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def mount(test_dir, ckptfs_bin):
    """Factory: mount(published, **options) → a mounted ckptfs_cli.Mount; unmounted afterwards."""
    factory = MountFactory(test_dir)
    yield factory
    factory.unmount_all()
