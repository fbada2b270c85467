"""FUSE mounts under test: ckptfs, httpdirfs and rclone, each started and stopped in bounded time.

Stopping always tries `fusermount3 -u`, then aborts the FUSE connection (fusectl) and detaches the
mount lazily, then SIGTERM/SIGKILLs the daemon by its pid, so a hung filesystem cannot keep the
bench (or the machine) stuck. Drive mounts from the main thread only.
"""

import os
import shutil
import subprocess
import tempfile
import time

import reader
from common import (MeasureFailed, MiB, cpu_seconds, log, pid_alive, run, sync_and_drop_caches,
                    terminate_pid, vm_hwm_bytes)

FUSECTL = "/sys/fs/fuse/connections"


def _unescape(path):
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace(
        "\\134", "\\")


def mount_info(mnt):
    """(major:minor, fstype) of the mount at path mnt, or None when nothing is mounted there."""
    mnt = os.path.abspath(mnt)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == mnt:
                sep = fields.index("-")
                return fields[2], fields[sep + 1]
    return None


def is_mounted(mnt):
    return mount_info(mnt) is not None


def abort_fuse(mnt):
    """Aborts the FUSE connection behind mnt (so blocked readers get ENOTCONN) and detaches it."""
    info = mount_info(mnt)
    if info is None:
        return
    minor = info[0].split(":")[1]
    if not os.path.isdir(os.path.join(FUSECTL, minor)):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", FUSECTL], capture_output=True,
                       timeout=10)
    try:
        with open(os.path.join(FUSECTL, minor, "abort"), "w") as f:
            f.write("1")
    except OSError as e:
        log(f"could not abort FUSE connection of {mnt}: {e}")
    subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=15)


class FuseMount:
    """Common stop logic; subclasses start the daemon and set self.pid."""

    kind = "fuse"

    def __init__(self, mnt):
        self.mnt = os.path.abspath(mnt)
        self.pid = None
        os.makedirs(self.mnt, exist_ok=True)

    def abort(self):
        abort_fuse(self.mnt)

    def cpu(self):
        return cpu_seconds(self.pid) if self.pid else None

    def stop(self):
        if is_mounted(self.mnt):
            try:
                cp = subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True,
                                    timeout=20)
                ok = cp.returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
            if not ok:
                log(f"{self.kind}: fusermount3 -u {self.mnt} failed; aborting the connection")
                abort_fuse(self.mnt)
        if self.pid is not None:
            terminate_pid(self.pid, timeout=15)
        self._reap()

    def _reap(self):
        pass

    def _wait_mounted(self, timeout, alive=lambda: True):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_mounted(self.mnt):
                return
            if not alive():
                raise MeasureFailed(f"{self.kind} exited before mounting; {self._log_tail()}")
            time.sleep(0.05)
        raise MeasureFailed(f"{self.kind} did not mount within {timeout:.0f} s; {self._log_tail()}")

    def _log_tail(self):
        return ""


class CkptfsMount(FuseMount):
    """`ckptfs mount INDEX MNT -o ...` (daemonizes once mounted); the daemon pid is found by argv."""

    kind = "ckptfs"

    def __init__(self, binary, index, mnt, cache_dir, options=()):
        super().__init__(mnt)
        self.binary = binary
        self.index = index
        self.cache_dir = cache_dir
        self.options = ",".join([f"cache_dir={cache_dir}", *options])

    def argv(self):
        return [self.binary, "mount", self.index, self.mnt, "-o", self.options]

    def start(self):
        os.makedirs(self.cache_dir, exist_ok=True)
        run(self.argv(), timeout=60)
        if not is_mounted(self.mnt):
            raise MeasureFailed(f"ckptfs mount returned 0 but {self.mnt} is not mounted")
        self.pid = self._find_daemon()
        if self.pid is None:
            raise MeasureFailed("ckptfs daemon process not found after mount")
        return self

    def _find_daemon(self):
        want = self.argv()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")[:-1]
            except OSError:
                continue
            if [a.decode(errors="replace") for a in argv] == want and pid_alive(int(name)):
                return int(name)
        return None

    def vm_hwm(self):
        return vm_hwm_bytes(self.pid) if self.pid else None


def cold_ckptfs_read(binary, index, work, rel_path, options=()):
    """Reads `rel_path` whole (1 MiB reads) through a fresh ckptfs mount of `index` with its own
    new cache under `work`, page cache dropped first; returns (bytes, seconds, daemon CPU
    seconds). The mount and its cache go away after, also on failure."""
    mount = CkptfsMount(binary, index, os.path.join(work, "mnt"), tempfile.mkdtemp(dir=work),
                        options)
    try:
        mount.start()
        sync_and_drop_caches()
        cpu_before = mount.cpu()
        view = reader.aligned_buffer(MiB)
        t0 = time.perf_counter()
        read = reader.read_file(os.path.join(mount.mnt, rel_path), view)
        seconds = time.perf_counter() - t0
        cpu = mount.cpu() - cpu_before
    finally:
        mount.stop()
        shutil.rmtree(mount.cache_dir, ignore_errors=True)
    return read, seconds, cpu


class HttpdirfsMount(FuseMount):
    """httpdirfs in the foreground (-f), with its disk cache on, reading nginx autoindex pages."""

    kind = "httpdirfs"

    def __init__(self, url, mnt, cache_dir, log_path):
        super().__init__(mnt)
        self.url = url.rstrip("/") + "/"
        self.cache_dir = cache_dir
        self.log_path = log_path
        self.proc = None

    def start(self):
        os.makedirs(self.cache_dir, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                ["httpdirfs", "-f", "--cache", "--cache-location", self.cache_dir,
                 "--no-range-check", self.url, self.mnt],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
        self.pid = self.proc.pid
        self._wait_mounted(60, alive=lambda: self.proc.poll() is None)
        return self

    def _reap(self):
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _log_tail(self):
        return _tail(self.log_path)

    def crashed(self):
        return self.proc is not None and self.proc.poll() is not None


class RcloneMount(FuseMount):
    """rclone mount of an :http: remote with --vfs-cache-mode full, read-only, in the foreground."""

    kind = "rclone"

    def __init__(self, url, mnt, cache_dir, log_path, config_path):
        super().__init__(mnt)
        self.url = url.rstrip("/") + "/"
        self.cache_dir = cache_dir
        self.log_path = log_path
        self.config_path = config_path
        self.proc = None

    def start(self):
        os.makedirs(self.cache_dir, exist_ok=True)
        if not os.path.exists(self.config_path):
            open(self.config_path, "w").close()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                ["rclone", "mount", ":http:", self.mnt, "--http-url", self.url,
                 "--vfs-cache-mode", "full", "--read-only", "--cache-dir", self.cache_dir,
                 "--config", self.config_path, "--log-level", "NOTICE"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
        self.pid = self.proc.pid
        self._wait_mounted(60, alive=lambda: self.proc.poll() is None)
        return self

    def _reap(self):
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _log_tail(self):
        return _tail(self.log_path)

    def crashed(self):
        return self.proc is not None and self.proc.poll() is not None


def _tail(path, lines=5):
    try:
        with open(path, errors="replace") as f:
            return "log: " + " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path
