"""Driving the real `ckptfs` binary from tests: publish, mount, unmount, find the daemon.

Output of every ckptfs command goes to files, not pipes: a daemon that kept the caller's pipe open
would otherwise hang the test instead of failing it.
"""

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_BIN = os.path.join(REPO, "build", "cli", "ckptfs")


def ckptfs_bin():
    """The binary under test: $CKPTFS_BIN, else <repo>/build/cli/ckptfs. Raises when missing."""
    path = os.environ.get("CKPTFS_BIN", DEFAULT_BIN)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise RuntimeError(
            f"ckptfs binary not found at {path}: build it (scripts/build.sh) or set CKPTFS_BIN")
    return path


class Completed:
    """Exit code and output of one finished command."""

    def __init__(self, args, returncode, stdout, stderr, elapsed):
        self.args = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed

    def describe(self):
        return (f"$ {' '.join(self.args)}\nexit {self.returncode} after {self.elapsed:.1f}s\n"
                f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}")

    def stderr_lines(self):
        return [line for line in self.stderr.splitlines() if line.strip()]


def run(args, timeout=120, prefix=None):
    """Runs a command to completion with output captured through temporary files."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.run(list(prefix or []) + list(args), stdin=subprocess.DEVNULL,
                              stdout=out, stderr=err, timeout=timeout)
        elapsed = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        return Completed(list(prefix or []) + list(args), proc.returncode,
                         out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                         elapsed)


def publish_args(src, index, nodes, store=True, replicas=None, chunk_size=None):
    """The argument list of `ckptfs publish` for NginxNode objects."""
    args = [ckptfs_bin(), "publish", src, "-o", index]
    for node in nodes:
        args += ["--node", f"{node.name}={node.url}"]
        if store:
            args += ["--store", f"{node.name}={node.store_dir}"]
    if replicas is not None:
        args += ["--replicas", str(replicas)]
    if chunk_size is not None:
        args += ["--chunk-size", str(chunk_size)]
    return args


def publish(src, index, nodes, store=True, replicas=None, chunk_size=None, timeout=300):
    """Runs `ckptfs publish` and raises with its output unless it succeeded."""
    result = run(publish_args(src, index, nodes, store, replicas, chunk_size), timeout=timeout)
    if result.returncode != 0 or not os.path.isfile(index):
        raise AssertionError("publish failed:\n" + result.describe())
    return result


def unescape_mount_field(field):
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def unmount_everything_under(base):
    """Last resort for mounts a fixture lost track of: lazy-unmount whatever is below base."""
    with open("/proc/self/mountinfo") as f:
        points = [unescape_mount_field(line.split()[4]) for line in f]
    for point in sorted(points, reverse=True):
        if point.startswith(base + os.sep):
            run(["fusermount3", "-uz", point], timeout=30)


@contextlib.contextmanager
def test_directory(parent, test_name):
    """A fresh directory for one test under `parent`, removed after it (after its mounts)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)[:60]
    path = tempfile.mkdtemp(prefix=name + "-", dir=parent)
    try:
        yield path
    finally:
        unmount_everything_under(path)
        shutil.rmtree(path, ignore_errors=True)


def machine_problems(suite):
    """What a FUSE test needs from the machine and lacks here, one reason each."""
    from nginx_node import require_nginx
    problems = []
    if os.geteuid() != 0:
        problems.append(f"the {suite} tests run as root (FUSE mounts, drop_caches)")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing")
    if shutil.which("fusermount3") is None:
        problems.append("fusermount3 is missing (apt-get install fuse3)")
    if shutil.which("openssl") is None:
        problems.append("openssl is missing (apt-get install openssl): the https tests make "
                        "their certificates with it")
    try:
        require_nginx()
    except RuntimeError as e:
        problems.append(str(e))
    return problems


def resolve_mountpoint(path):
    """The absolute, symlink-free path of a mountpoint, without touching the mount itself.

    realpath() would lstat the last component, which is the root of the FUSE file system: with
    a daemon that does not answer, that call never returns.
    """
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def mounts_at(path):
    """The filesystem types mounted exactly at `path`, topmost last.

    Reads /proc/self/mountinfo rather than os.path.ismount(): a FUSE mount whose daemon died
    ("Transport endpoint is not connected") makes lstat fail, and ismount() then says False.
    """
    path = resolve_mountpoint(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if unescape_mount_field(fields[4]) == path:
                found.append(fields[sep + 1])
    return found


def mount_fstype(path):
    """The filesystem type mounted exactly at `path` (the topmost), or None."""
    found = mounts_at(path)
    return found[-1] if found else None


def is_mounted(path):
    return mount_fstype(path) is not None


def run_in_mount_namespace(script, mountpoints, timeout=120):
    """Runs the shell script `script` in a private mount namespace of its own (`unshare
    --mount`): what it mounts, or lays over the machine's files, nobody else sees, and it goes
    with the namespace. A daemon serving one of `mountpoints` that the script could not unmount
    would keep the namespace alive; it is killed."""
    try:
        return run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                   timeout=timeout)
    finally:
        for pid in pids_where(lambda argv: any(m in argv for m in mountpoints)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pids_where(matches):
    """Pids of the processes (other than this one) whose argv, a list of str, `matches`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if argv and matches(argv):
            pids.append(int(entry))
    return pids


def daemon_pids(mountpoint):
    """Pids of `ckptfs mount` (or mount.ckptfs) processes whose command line names `mountpoint`."""
    wanted = {mountpoint, resolve_mountpoint(mountpoint)}

    def is_daemon(argv):
        name = os.path.basename(argv[0])
        return (((name == "ckptfs" and "mount" in argv) or name == "mount.ckptfs") and
                bool(wanted & set(argv)))
    return pids_where(is_daemon)


def parse_stats(text):
    """`name value` lines, as `ckptfs stats` prints them, as {name: int}; each name once."""
    values = {}
    for line in text.splitlines():
        name, value = line.split(" ")
        assert name not in values, f"{name} twice:\n{text}"
        values[name] = int(value)
    return values


def mount_stats(mountpoint):
    """The mount's statistics (its root's user.ckptfs.stats attribute) as {name: int}."""
    return parse_stats(os.getxattr(mountpoint, "user.ckptfs.stats").decode())


def wait_for_greetings(mountpoint, timeout=10):
    """Waits until every node has answered, or failed, the greeting the mount sends it as it
    starts (node.NAME.unanswered 0 for all), so that a test that then stops or freezes a node
    knows its reads, not the greeting, meet that. Returns the stats."""
    def settled():
        values = mount_stats(mountpoint)
        unanswered = [k for k, v in values.items() if k.endswith(".unanswered") and v]
        return None if unanswered else values

    values = wait_until(settled, timeout)
    assert values is not None, f"greetings still unanswered: {mount_stats(mountpoint)}"
    return values


def wait_until(predicate, timeout, interval=0.05):
    """Polls `predicate` until it is true or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def format_options(options):
    """{"cache_dir": "/x", "ro": True} → "cache_dir=/x,ro"."""
    parts = []
    for key, value in options.items():
        if value is True:
            parts.append(key)
        elif value is not None and value is not False:
            parts.append(f"{key}={value}")
    return ",".join(parts)


def mount_args(index, mountpoint, options, foreground=False):
    args = [ckptfs_bin(), "mount", index, mountpoint]
    if foreground:
        args.append("-f")
    opts = format_options(options)
    if opts:
        args += ["-o", opts]
    return args


class Mount:
    """One `ckptfs mount` of an index; unmount() cleans up whatever state it is in."""

    def __init__(self, index, mountpoint, options, foreground=False, log_dir=None):
        self.index = index
        self.mountpoint = mountpoint
        self.options = dict(options)
        self.foreground = foreground
        self.log_dir = log_dir or os.path.dirname(mountpoint)
        self.proc = None
        self.result = None
        self.prefix = None  # Run in front of `ckptfs mount`, as run(prefix=...) does.
        os.makedirs(mountpoint, exist_ok=True)

    @property
    def cache_dir(self):
        return self.options.get("cache_dir")

    def start(self, timeout=30):
        """Mounts; returns once the mountpoint is a mount. Raises with the output otherwise."""
        args = mount_args(self.index, self.mountpoint, self.options, self.foreground)
        if self.foreground:
            self._start_foreground(args, timeout)
        else:
            try:
                self.result = run(args, timeout=timeout, prefix=self.prefix)
            except subprocess.TimeoutExpired:
                self.kill_daemons()
                raise AssertionError(f"`{' '.join(args)}` did not return within {timeout}s")
            if self.result.returncode != 0:
                raise AssertionError("mount failed:\n" + self.result.describe())
            # Without -f, `ckptfs mount` returns only once the mount is up, so that
            # `ckptfs mount ... && ls MNT` works: no polling here.
            if not is_mounted(self.mountpoint):
                raise AssertionError("`ckptfs mount` returned before the mount was up:\n" +
                                     self.result.describe())
        if not wait_until(lambda: is_mounted(self.mountpoint), timeout):
            raise AssertionError(f"{self.mountpoint} is not a mount {timeout}s after "
                                 f"`ckptfs mount` {self.output()}")
        if not stat_returns(self.mountpoint, timeout):
            self.kill_daemons()
            raise AssertionError(f"stat({self.mountpoint}) hung for {timeout}s: the daemon does "
                                 f"not answer FUSE requests {self.output()}")
        return self

    def kill_daemons(self):
        """SIGKILLs the daemon: the kernel then fails every request pending on the mount."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _start_foreground(self, args, timeout):
        log = open(os.path.join(self.log_dir, "mount-fg.log"), "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        ok = wait_until(lambda: is_mounted(self.mountpoint) or self.proc.poll() is not None,
                        timeout)
        if not ok or self.proc.poll() is not None:
            raise AssertionError(f"foreground mount did not come up (exit {self.proc.poll()}) "
                                 f"{self.output()}")

    def output(self):
        if self.result is not None:
            return "\n" + self.result.describe()
        try:
            with open(os.path.join(self.log_dir, "mount-fg.log"), errors="replace") as f:
                return "\n--- log\n" + f.read()[-4000:]
        except OSError:
            return ""

    def pids(self):
        pids = daemon_pids(self.mountpoint)
        if self.proc is not None and self.proc.poll() is None and self.proc.pid not in pids:
            pids.append(self.proc.pid)
        return pids

    def path(self, *parts):
        return os.path.join(self.mountpoint, *parts)

    def unmount(self, timeout=15):
        """fusermount3 -u (then -uz), waits for the daemon to exit, kills it if it does not."""
        if is_mounted(self.mountpoint):
            r = run(["fusermount3", "-u", self.mountpoint], timeout=timeout)
            if r.returncode != 0 and is_mounted(self.mountpoint):
                run(["fusermount3", "-uz", self.mountpoint], timeout=timeout)
        if not wait_until(lambda: not self.pids(), timeout):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in self.pids():
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                if wait_until(lambda: not self.pids(), 5):
                    break
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if is_mounted(self.mountpoint):
            run(["umount", "-l", self.mountpoint], timeout=timeout)


def stat_returns(path, timeout):
    """True when os.stat(path) returns (with any result) within `timeout` seconds.

    The stat runs in a helper thread: a FUSE daemon that never answers would otherwise block the
    test's own thread in the kernel, where no Python signal (so no pytest-timeout) reaches it.
    """
    done = threading.Event()

    def probe():
        try:
            os.stat(path)
        except OSError:
            pass
        done.set()

    threading.Thread(target=probe, daemon=True).start()
    return done.wait(timeout)


def page_cache_bytes(path):
    """Bytes of the file at `path` that are in the page cache (mincore over a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
    finally:
        os.close(fd)
    try:
        vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
        if libc.mincore(addr, size, vec) != 0:
            raise OSError(ctypes.get_errno(), f"mincore {path}")
        return sum(v & 1 for v in vec) * page
    finally:
        libc.munmap(addr, size)


def pread_file(path, offset, length):
    """`length` bytes of the file at `offset`, with one pread (no buffering in between)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def drop_page_cache():
    """Drops the kernel's clean page cache, dentries and inodes (needs root)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
