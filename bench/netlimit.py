"""The network limit: the same chunk objects fetched from the same nodes by parallel curl.

`fetch()` splits a list of chunk GETs over N curl processes (N streams, default 8); each process
fetches its share in order over one keep-alive connection per node. The bytes go to /dev/null
(the limit) or, for download-then-load baselines, are written at their offset in local files.
With `verify`, every body is hashed with SHA-256 as it streams in and checked against the digest
its URL names, as a client that checks what it downloads must: the limit for verified bytes.
Only the standard library is used, so the loader venv's python can import this module too.
"""

import fcntl
import hashlib
import os
import subprocess
import tempfile
import threading
import time

CURL = "curl"
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Get:
    """One chunk object GET: url, expected size, and where its bytes go (dest None = discard)."""
    __slots__ = ("url", "size", "dest", "offset")

    def __init__(self, url, size, dest=None, offset=0):
        self.url = url
        self.size = size
        self.dest = dest
        self.offset = offset


def gets_for_files(chunk_map, rel_paths, node_urls=None, dest_dir=None):
    """Chunk GETs of the given files in file order, alternating replicas to spread the load."""
    urls = node_urls or chunk_map.node_urls
    out = []
    i = 0
    for rel in rel_paths:
        dest = os.path.join(dest_dir, rel) if dest_dir else None
        for ext in chunk_map.extents(rel):
            node = ext.nodes[i % len(ext.nodes)]
            out.append(Get(urls[node] + ext.path_on_node(), ext.size, dest, ext.offset))
            i += 1
    return out


def _split(gets, streams):
    return [gets[k::streams] for k in range(streams) if gets[k::streams]]


def fetch(gets, streams=8, timeout=600, verify=False, curl_options=()):
    """Fetches every GET with `streams` curl processes; returns the seconds from start to the end.

    With `verify` (for GETs without a dest), the bodies are read and hashed instead of discarded.
    `curl_options` are added to every curl's command line (e.g. --cacert FILE).

    Raises RuntimeError when a transfer fails or a byte count is off.
    """
    for dest in {g.dest for g in gets if g.dest}:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb"):
            pass
    shares = _split(gets, streams)
    with tempfile.TemporaryDirectory(prefix="bench-curl-") as tmp:
        configs = [_write_config(tmp, k, share, verify) for k, share in enumerate(shares)]
        t0 = time.perf_counter()
        procs = [_start(cfg, share, verify, curl_options)
                 for cfg, share in zip(configs, shares)]
        errors = []
        threads = [threading.Thread(target=_drain, args=(p, share, errors, timeout, verify))
                   for p, share in zip(procs, shares)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
    if errors:
        raise RuntimeError("parallel curl: " + "; ".join(errors[:3]))
    return seconds


def _write_config(tmp, k, share, verify):
    path = os.path.join(tmp, f"stream{k}.cfg")
    with open(path, "w") as f:
        for g in share:
            f.write(f'url = "{g.url}"\n')
            if g.dest is None and not verify:
                f.write('output = "/dev/null"\n')
    return path


def _start(cfg, share, verify, curl_options):
    to_stdout = share[0].dest is not None or verify
    argv = [CURL, "-q", "--silent", "--show-error", "--fail", *curl_options, "--config", cfg]
    if not to_stdout:
        argv += ["--write-out", "%{http_code} %{size_download}\\n"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    if to_stdout:
        # A 1 MiB pipe instead of 64 KiB: fewer wake-ups between curl and the reader.
        fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, 1 << 20)
    return proc


def _drain(proc, share, errors, timeout, verify):
    """Reads one curl's stdout: per-transfer sizes, the bodies hashed, or written at offsets."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        if verify:
            _hash_bodies(proc.stdout, share, errors)
        elif share[0].dest is None:
            _check_sizes(proc.stdout.read().decode(), share, errors)
        else:
            _write_bodies(proc.stdout, share, errors)
        err = proc.stderr.read().decode(errors="replace").strip()
        rc = proc.wait()
        if rc != 0:
            errors.append(f"curl exited {rc}: {err[-300:]}")
    finally:
        timer.cancel()


def _check_sizes(text, share, errors):
    lines = text.split()
    got = [(lines[i], int(lines[i + 1])) for i in range(0, len(lines) - 1, 2)]
    if len(got) != len(share):
        errors.append(f"{len(got)} of {len(share)} transfers reported")
        return
    for (code, n), g in zip(got, share):
        if code != "200" or n != g.size:
            errors.append(f"{g.url}: HTTP {code}, {n} of {g.size} bytes")
            return


class _StreamError(Exception):
    """A curl stream that did not hold exactly the bodies of its GETs."""


def _body_pieces(pipe, g, view):
    """Yields the body of GET `g` from a curl stream, in pieces of at most len(view) bytes."""
    left = g.size
    while left:
        n = pipe.readinto(view[:min(left, len(view))])
        if not n:
            raise _StreamError(f"{g.url}: stream ended {left} bytes short")
        yield view[:n]
        left -= n


def _check_drained(pipe):
    if pipe.read(1):
        raise _StreamError("more bytes than expected in a curl stream")


def _hash_bodies(pipe, share, errors):
    """Hashes each body as it arrives (hashlib is OpenSSL and releases the GIL for large updates,
    so the streams hash in parallel) and compares it with the digest that ends its URL."""
    view = memoryview(bytearray(1 << 20))
    try:
        for g in share:
            h = hashlib.sha256()
            for piece in _body_pieces(pipe, g, view):
                h.update(piece)
            if h.hexdigest() != g.url.rsplit("/", 1)[-1]:
                raise _StreamError(f"{g.url}: SHA-256 mismatch")
        _check_drained(pipe)
    except _StreamError as e:
        errors.append(str(e))


def _write_bodies(pipe, share, errors):
    fds = {}
    view = memoryview(bytearray(1 << 20))
    try:
        for g in share:
            fd = fds.get(g.dest)
            if fd is None:
                fd = fds[g.dest] = os.open(g.dest, os.O_WRONLY)
            pos = g.offset
            for piece in _body_pieces(pipe, g, view):
                os.pwrite(fd, piece, pos)
                pos += len(piece)
        _check_drained(pipe)
    except _StreamError as e:
        errors.append(str(e))
    finally:
        for fd in fds.values():
            os.close(fd)


def first_byte_seconds(url, timeout=30):
    """curl's time to the first response byte for one GET (connect included)."""
    cp = subprocess.run([CURL, "-q", "--silent", "--show-error", "--fail", "-o", "/dev/null",
                         "--write-out", "%{time_starttransfer}", url],
                        capture_output=True, text=True, timeout=timeout)
    if cp.returncode != 0:
        raise RuntimeError(f"curl {url}: exit {cp.returncode}: {cp.stderr.strip()}")
    return float(cp.stdout)
