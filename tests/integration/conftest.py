"""Fixtures for the ckptfs integration tests: real nginx nodes, a real binary, real FUSE mounts.

Every fixture that starts something stops it in its teardown, also when the test fails:
mounts are unmounted (fusermount3 -u, then -uz) and their daemons waited for or killed, nginx is
stopped (SIGTERM, then SIGKILL) and temporary directories are removed. See docs/TESTING.md.
"""

import os
import shutil
import signal
import stat
import tempfile
import threading

import pytest

import ckptfs_cli
import source_tree
from index_db import IndexDb
from nginx_node import NginxNode

NODE_NAMES = ("n1", "n2", "n3")


def _fail_setup(message):
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def ckptfs_bin():
    """Path of the binary under test; a missing binary fails the test."""
    try:
        return ckptfs_cli.ckptfs_bin()
    except RuntimeError as e:
        _fail_setup(str(e))


@pytest.fixture(scope="session")
def environment_ok():
    """The things every test needs from the machine; anything missing fails with the reason."""
    problems = ckptfs_cli.machine_problems("integration")
    if problems:
        _fail_setup("; ".join(problems))


@pytest.fixture(scope="session")
def work_root(environment_ok, ckptfs_bin):
    """One directory for the whole run ($CKPTFS_IT_TMP or /tmp), removed at the end."""
    base = tempfile.mkdtemp(prefix="ckptfs-it-", dir=os.environ.get("CKPTFS_IT_TMP", "/tmp"))
    yield base
    ckptfs_cli.unmount_everything_under(base)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def test_dir(work_root, request):
    """A fresh directory for one test, removed after it (after its mounts are gone)."""
    with ckptfs_cli.test_directory(work_root, request.node.name) as path:
        yield path


class NodeFactory:
    """Creates and starts nginx nodes; stop_all() stops every one it made."""

    def __init__(self, base):
        self.base = base
        self.nodes = []

    def __call__(self, name, start=True, limit_rate=None, authorization=None, tls=None,
                 host="127.0.0.1"):
        node = NginxNode(name, os.path.join(self.base, "node-" + name), limit_rate=limit_rate,
                         authorization=authorization, tls=tls, host=host)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def stop_all(self):
        errors = []
        for node in self.nodes:
            try:
                node.stop()
            except Exception as e:  # Keep stopping the others.
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def nginx_node(test_dir):
    """Factory: nginx_node(name, limit_rate=None, authorization=None, tls=None,
    host="127.0.0.1") → a started NginxNode under this test's directory."""
    factory = NodeFactory(test_dir)
    yield factory
    factory.stop_all()


@pytest.fixture
def cluster(nginx_node):
    """Three fresh, empty, running nodes n1..n3 for this test."""
    return [nginx_node(name) for name in NODE_NAMES]


class MountFactory:
    """Mounts indexes for one test; unmount_all() unmounts every mount it made."""

    def __init__(self, base):
        self.base = base
        self.mounts = []
        self.watchdog_fired = False

    def __call__(self, index, foreground=False, start=True, **options):
        n = len(self.mounts)
        options.setdefault("cache_dir", os.path.join(self.base, f"cache-{n}"))
        mnt = Mount(index, os.path.join(self.base, f"mnt-{n}"), options, foreground=foreground)
        self.mounts.append(mnt)
        if start:
            mnt.start()
        return mnt

    def watchdog(self):
        # A daemon that stops answering leaves the test's thread blocked in the kernel, where
        # pytest-timeout's signal cannot reach it. Killing the daemon fails those requests, so
        # the test ends and its teardown runs.
        self.watchdog_fired = True
        for mnt in self.mounts:
            mnt.kill_daemons()

    def unmount_all(self):
        for mnt in reversed(self.mounts):
            mnt.unmount()


Mount = ckptfs_cli.Mount


def _test_timeout(request):
    marker = request.node.get_closest_marker("timeout")
    if marker and marker.args:
        return float(marker.args[0])
    value = request.config.getoption("timeout", None) or request.config.getini("timeout")
    return float(value or 300)


@pytest.fixture
def mount(test_dir, ckptfs_bin, request):
    """Factory: mount(index, foreground=False, start=True, **options) → a Mount (up if started).

    Options become `-o key=value` (True → a bare flag); the cache_dir is a fresh one per mount
    unless given. A watchdog kills this test's daemons shortly before the test's timeout.
    """
    factory = MountFactory(test_dir)
    timer = threading.Timer(max(10.0, _test_timeout(request) - 20.0), factory.watchdog)
    timer.daemon = True
    timer.start()
    yield factory
    timer.cancel()
    factory.unmount_all()
    if factory.watchdog_fired:
        pytest.fail("watchdog: the test ran into its timeout with a mount up; its ckptfs daemons "
                    "were killed (a read or stat on the mount hung)", pytrace=False)


class Published:
    """The session's source tree, published once to three nodes with R=2 and --store."""

    def __init__(self, tree, nodes, index, result):
        self.tree = tree
        self.nodes = nodes
        self.index = index
        self.result = result

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    def db(self):
        return IndexDb(self.index)

    def clear_logs(self):
        for node in self.nodes:
            node.clear_log()

    def chunk_gets(self):
        """{node name: [(digest, bytes), ...]} of chunk GETs since the last clear_logs()."""
        return {node.name: node.chunk_gets() for node in self.nodes}

    def ensure_running(self):
        for node in self.nodes:
            node.start()


@pytest.fixture(scope="session")
def source(work_root):
    """The generated source tree (built once per run)."""
    return source_tree.build(os.path.join(work_root, "src"))


@pytest.fixture(scope="session")
def published_session(work_root, source, ckptfs_bin):
    base = os.path.join(work_root, "published")
    nodes = [NginxNode(name, os.path.join(base, "node-" + name)) for name in NODE_NAMES]
    try:
        for node in nodes:
            node.start()
        index = os.path.join(base, "ckpt.index")
        result = ckptfs_cli.publish(source.root, index, nodes, store=True, replicas=2)
        yield Published(source, nodes, index, result)
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def published(published_session):
    """The published session tree with all three nodes running and empty access logs.

    Tests may stop nodes; they are started again afterwards.
    """
    published_session.ensure_running()
    published_session.clear_logs()
    yield published_session
    published_session.ensure_running()


@pytest.fixture
def user_sandbox(published):
    """A directory any user can reach (the run's directory is root's alone), holding a copy of
    the published index, a copy of the binary under test (the checkout may be where only root
    can reach, such as /root), a home and a mountpoint owned by `nobody`, and a FUSE device node
    that `nobody` may open: this machine's /dev/fuse may be root's alone (0600), and a test lays
    its own node over it in a private mount namespace rather than change the machine's. Removed
    afterwards, with any daemon left."""
    base = tempfile.mkdtemp(prefix="ckptfs-user-", dir="/tmp")
    os.chmod(base, 0o755)
    paths = {name: os.path.join(base, name) for name in ("home", "mnt", "fuse")}
    for name in ("home", "mnt"):
        os.mkdir(paths[name])
        shutil.chown(paths[name], "nobody", "nogroup")
    os.mknod(paths["fuse"], 0o666 | stat.S_IFCHR, os.stat("/dev/fuse").st_rdev)
    os.chmod(paths["fuse"], 0o666)
    paths["base"] = base
    paths["index"] = os.path.join(base, "ckpt.ckptfs")
    shutil.copyfile(published.index, paths["index"])
    os.chmod(paths["index"], 0o644)
    paths["ckptfs"] = os.path.join(base, "ckptfs")
    shutil.copyfile(ckptfs_cli.ckptfs_bin(), paths["ckptfs"])
    os.chmod(paths["ckptfs"], 0o755)
    # Runs the rest of a shell command line as `nobody`, with the sandbox's home.
    paths["as_user"] = (f"setpriv --reuid=nobody --regid=nogroup --clear-groups "
                        f"env HOME={paths['home']} XDG_CACHE_HOME=")
    yield paths
    for pid in ckptfs_cli.pids_where(lambda argv: paths["mnt"] in argv):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)
