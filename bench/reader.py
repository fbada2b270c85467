"""Reader worker: one timed read pattern over files, run as its own process by the bench.

    python reader.py JOB.json   ->   prints one JSON result line

Running reads in a separate process lets the bench kill a reader stuck on a hung FUSE mount
without hanging itself. With "drop": true the worker syncs and drops the page cache just before
its clock starts (it runs as root), so interpreter start-up never touches cold data.

Jobs (all sizes in bytes, all times in seconds):
  {"mode": "seq", "files": [...], "bufsize": N}             -> {"bytes", "seconds"}
  {"mode": "seq_verify", "files": {path: sha256hex}}          -> {"bytes", "seconds", "bad": [...]}
  {"mode": "concurrent", "groups": [[...], ...], "bufsize": N} -> {"bytes", "seconds"}
  {"mode": "random", "file", "offsets": [...], "size": N}    -> {"seconds", "lat": [...], "sha256"}
  {"mode": "ttfb", "root": MNT, "files": [...]}  (drop applies before each file) -> {"ttfb": [...]}
"""

import hashlib
import json
import mmap
import os
import sys
import threading
import time


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def aligned_buffer(size):
    """A page-aligned buffer, as dd or a C loader would use: a bytearray's data starts 16 or 32
    bytes into its allocation, and copy_to_user into a misaligned 1 MiB buffer is several times
    slower (measured: 2 GB/s against 11 GB/s from page cache), which would hide real differences."""
    return memoryview(mmap.mmap(-1, size))


def read_file(path, view, hasher=None):
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        while True:
            n = os.readv(fd, [view])
            if n == 0:
                return total
            if hasher is not None:
                hasher.update(view[:n])
            total += n
    finally:
        os.close(fd)


def seq(job):
    view = aligned_buffer(job.get("bufsize", 1 << 20))
    t0 = time.perf_counter()
    total = sum(read_file(p, view) for p in job["files"])
    return {"bytes": total, "seconds": time.perf_counter() - t0}


def seq_verify(job):
    view = aligned_buffer(1 << 20)
    bad = []
    total = 0
    t0 = time.perf_counter()
    for path, want in job["files"].items():
        h = hashlib.sha256()
        total += read_file(path, view, h)
        if h.hexdigest() != want:
            bad.append(path)
    return {"bytes": total, "seconds": time.perf_counter() - t0, "bad": bad}


def concurrent(job):
    groups = job["groups"]
    totals = [0] * len(groups)
    errors = []

    def reader(k):
        view = aligned_buffer(job.get("bufsize", 1 << 20))
        try:
            totals[k] = sum(read_file(p, view) for p in groups[k])
        except OSError as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(len(groups))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise OSError("; ".join(errors))
    return {"bytes": sum(totals), "seconds": seconds}


def random_reads(job):
    size = job["size"]
    offsets = job["offsets"]
    lat = []
    h = hashlib.sha256()
    fd = os.open(job["file"], os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        for off in offsets:
            a = time.perf_counter()
            data = os.pread(fd, size, off)
            lat.append(time.perf_counter() - a)
            h.update(data)
            if len(data) != size:
                raise OSError(f"short read at {off}: {len(data)} bytes")
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
    return {"seconds": seconds, "lat": lat, "sha256": h.hexdigest()}


def ttfb(job):
    # Paths are opened relative to the mount's root, held open from before the cache drops: the
    # local file system's own lookups of the directories above the mountpoint (a disk read each
    # after a drop) are not the mounted file system's time to first byte.
    root = os.open(job["root"], os.O_RDONLY | os.O_DIRECTORY)
    out = []
    try:
        for path in job["files"]:
            rel = os.path.relpath(path, job["root"])
            if job.get("drop"):
                drop_caches()
            t0 = time.perf_counter()
            fd = os.open(rel, os.O_RDONLY, dir_fd=root)
            try:
                data = os.read(fd, 1)
            finally:
                os.close(fd)
            out.append(time.perf_counter() - t0)
            if len(data) != 1:
                raise OSError(f"{path}: no first byte")
            # Curl downloads each whole object before its next sample; a mount goes on fetching
            # the rest of the chunk (or file) in the background. A pause keeps that transfer out
            # of the next sample, as curl's is.
            time.sleep(job.get("pause", 1.0))
    finally:
        os.close(root)
    return {"ttfb": out}


MODES = {"seq": seq, "seq_verify": seq_verify, "concurrent": concurrent,
         "random": random_reads, "ttfb": ttfb}


def main():
    with open(sys.argv[1]) as f:
        job = json.load(f)
    if job.get("drop") and job["mode"] != "ttfb":
        drop_caches()
    print(json.dumps(MODES[job["mode"]](job)))


if __name__ == "__main__":
    main()
