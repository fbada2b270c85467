"""Helpers shared by the bench modules: logging, bounded subprocesses, caches, cleanup, signals.

Everything here is single-threaded (the bench runs one measurement at a time) except where a
function says otherwise.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

MiB = 1 << 20
GiB = 1 << 30

_T0 = time.monotonic()


def log(msg):
    """One progress line on stderr, prefixed with the elapsed time of the bench."""
    elapsed = time.monotonic() - _T0
    print(f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {msg}", file=sys.stderr, flush=True)


def elapsed_seconds():
    return time.monotonic() - _T0


class Interrupted(Exception):
    """Raised in the main thread by SIGINT/SIGTERM/SIGHUP so that finally blocks clean up."""


class MeasureFailed(Exception):
    """A measurement could not produce a number (timeout, crash, wrong bytes...)."""


_interrupting = False


def _on_signal(signum, _frame):
    global _interrupting
    if _interrupting:  # Already unwinding: let the cleanup finish.
        return
    _interrupting = True
    raise Interrupted(signal.Signals(signum).name)


def install_signal_handlers():
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


class Cleanup:
    """A stack of undo actions, run last-in first-out; a failing action does not stop the rest."""

    def __init__(self):
        self._actions = []

    def push(self, name, fn):
        self._actions.append((name, fn))
        return fn

    def discard(self, fn):
        self._actions = [(n, f) for n, f in self._actions if f is not fn]

    def run_all(self):
        while self._actions:
            name, fn = self._actions.pop()
            try:
                fn()
            except BaseException as e:  # Keep cleaning up whatever happens.
                log(f"cleanup: {name} failed: {e!r}")


def sync_and_drop_caches():
    """Writes back dirty pages, then drops the page cache, dentries and inodes (needs root)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run(cmd, timeout, check=True, env=None, cwd=None):
    """Runs cmd to completion within timeout seconds; returns CompletedProcess (text output)."""
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise MeasureFailed(f"{os.path.basename(cmd[0])} timed out after {timeout:.0f} s") from e
    if check and cp.returncode != 0:
        raise MeasureFailed(
            f"{' '.join(cmd[:3])}... exited {cp.returncode}: {cp.stderr.strip()[-800:]}")
    return cp


def run_bounded(cmd, timeout, on_timeout=None, env=None, stop_grace=0):
    """Runs a worker in its own process group; returns (stdout, stderr).

    On timeout the group is SIGKILLed and on_timeout() runs (for example aborting a FUSE
    connection so that a reader stuck in the kernel can exit), then MeasureFailed is raised.
    A non-zero exit also raises MeasureFailed. With stop_grace, the group first gets SIGTERM and
    that many seconds to clean up (a worker that made a network namespace removes it).
    """
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc, stop_grace)
        if on_timeout is not None:
            try:
                on_timeout()
            except Exception as e:  # The timeout is the news; a failed abort is logged.
                log(f"on_timeout action failed: {e!r}")
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            log(f"worker {proc.pid} still not gone 20 s after SIGKILL (stuck in the kernel)")
        raise MeasureFailed(f"timed out after {timeout:.0f} s") from None
    except BaseException:
        _stop_group(proc, stop_grace)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        raise
    if proc.returncode != 0:
        tail = (err or "").strip().splitlines()[-6:]
        raise MeasureFailed(f"worker exited {proc.returncode}: {' | '.join(tail)}")
    return out, err


class ReaderJobs:
    """Runs reader.py jobs, each as its own process from a numbered job file in `jobs_dir`.

    A job that outlives its timeout is killed and `mount`'s FUSE connection aborted. Returns the
    reader's one JSON result.
    """

    READER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reader.py")

    def __init__(self, jobs_dir):
        self.jobs_dir = jobs_dir
        self._count = 0

    def run(self, job, timeout, mount=None):
        self._count += 1
        path = os.path.join(self.jobs_dir, f"job-{self._count}.json")
        os.makedirs(self.jobs_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(job, f)
        if job.get("drop"):
            os.sync()  # Write-back outside the worker's clock and timeout.
        on_timeout = mount.abort if mount is not None else None
        out, err = run_bounded([sys.executable, self.READER, path], timeout, on_timeout)
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError) as e:
            raise MeasureFailed(f"reader printed no result: {err.strip()[-300:]}") from e


def _stop_group(proc, grace):
    if grace > 0:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    _kill_group(proc)  # Whatever is left of the group.


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_pid_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def terminate_pid(pid, timeout=10.0, sig=signal.SIGTERM):
    """Sends sig to one process we started, waits, and SIGKILLs it if it is still there."""
    if pid is None or not pid_alive(pid):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if not wait_pid_gone(pid, timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_pid_gone(pid, 5)


def children_of(pid):
    """Direct children of pid, from /proc/<pid>/task/*/children."""
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def vm_hwm_bytes(pid):
    """Peak resident set size (VmHWM) of a live process, in bytes; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid):
    """User + system CPU time of a live process (all its threads), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values):
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-p * len(sorted_values) // 100)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def side_by_side_args(doc, size_mib, workdir):
    """The parser of a script that measures --bin, and --compare alternately with it, on a
    file of --size-mib MiB in --workdir, --runs times; the first paragraph of `doc` describes it.
    binaries(cfg) lists the binaries to measure."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--bin", default=os.environ.get("CKPTFS_BIN", "build/cli/ckptfs"))
    p.add_argument("--compare", help="another ckptfs binary, measured alternately with --bin")
    p.add_argument("--size-mib", type=int, default=size_mib)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", default=workdir)
    return p


def binaries(cfg):
    """--bin, then --compare if given, as absolute paths."""
    return [os.path.abspath(cfg.bin)] + ([os.path.abspath(cfg.compare)] if cfg.compare else [])
