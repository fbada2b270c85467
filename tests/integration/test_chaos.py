"""Readers of every kind against nodes that fail at random: the bytes are right or the read fails.

While two mounts that share one cache directory (small enough to evict, with a small memory
budget) are read by sequential readers, random `pread`s and a process that reads through `mmap`,
the nodes are stopped, frozen and given corrupt objects at random, one node at a time. Each chunk
then always has a good replica, so every read must return the published bytes, none may fail, and
none may wait long. Then two nodes stay down: a fresh mount must fail exactly the reads of chunks
held only by them, with EIO and in bounded time, and serve the others. Once the nodes are back,
every mount reads every file right again.
"""

import collections
import errno
import hashlib
import os
import random
import subprocess
import sys
import threading
import time

import pytest

import ckptfs_cli
from index_db import IndexDb

MiB = 1 << 20
CHUNK = MiB
# relpath → size. Sizes off chunk and block boundaries; about 70 MiB in all, so that the 24 MiB
# disk cache keeps evicting and reads keep going to the nodes.
FILES = {
    "shard-0.data": 28 * MiB + 4097,
    "shard-1.data": 21 * MiB + 1,
    "shard-2.data": 9 * MiB - 3,
    "model.index": 300_001,
    "vocab/tokens.bin": 4 * MiB + 65_537,
    "vocab/small.bin": 77,
    "tensor.npy": 7 * MiB,
}
CHAOS_SECONDS = 25
# A reader's pass (a whole file, or four preads) that takes longer than this, with a good replica
# of each chunk up, has met a hang. The read deadline is 20 s; failing over costs a stall timeout
# (1 s) or a connect failure per attempt.
SLOW_PASS = 15.0

_MMAP_READER = r"""
import mmap, os, random, sys, time
source, mounted, seconds, seed = sys.argv[1:5]
rng = random.Random(int(seed))
names = sys.argv[5:]
deadline = time.monotonic() + float(seconds)
ops = 0
while time.monotonic() < deadline:
    name = rng.choice(names)
    with open(os.path.join(mounted, name), "rb") as f, open(os.path.join(source, name), "rb") as s:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            continue
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            for _ in range(8):
                offset = rng.randrange(size)
                length = min(rng.choice((1, 4096, 65536, 1 << 20, 3 << 20)), size - offset)
                if m[offset:offset + length] != os.pread(s.fileno(), length, offset):
                    print(f"{name}: wrong bytes at {offset}+{length}", flush=True)
                    sys.exit(1)
                ops += 1
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
print(f"ops {ops}", flush=True)
"""


def _write_tree(root):
    rng = random.Random(20261207)
    for rel, size in FILES.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))


class Readers:
    """Reader threads over the given mounts; each records its failures instead of raising."""

    def __init__(self, source, mounts, seed):
        self.source = source
        self.mounts = mounts
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.errors = []
        self.ops = collections.Counter()
        self.slowest = 0.0
        self.lock = threading.Lock()
        self.threads = []

    def start(self, kinds):
        for i, kind in enumerate(kinds):
            seed = self.rng.randrange(1 << 30)
            target = getattr(self, "_" + kind)
            thread = threading.Thread(target=self._run, args=(kind, target, random.Random(seed)),
                                      name=f"{kind}-{i}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def join(self, timeout):
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]

    def _run(self, kind, target, rng):
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                target(rng)
            except Exception as e:  # Recorded and reported; the other readers go on.
                with self.lock:
                    self.errors.append(f"{kind}: {e!r}")
            elapsed = time.monotonic() - start
            with self.lock:
                self.ops[kind] += 1
                self.slowest = max(self.slowest, elapsed)
                if elapsed > SLOW_PASS:
                    self.errors.append(f"{kind}: one pass took {elapsed:.1f} s")

    def _expected(self, rel, offset, length):
        with open(os.path.join(self.source, rel), "rb") as f:
            return os.pread(f.fileno(), length, offset)

    def _sequential(self, rng):
        rel = rng.choice(sorted(FILES))
        mnt = rng.choice(self.mounts)
        block = rng.choice((4096, 131072, MiB, 4 * MiB))
        digest = hashlib.sha256()
        with open(mnt.path(rel), "rb", buffering=0) as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            while chunk := f.read(block):
                digest.update(chunk)
        with open(os.path.join(self.source, rel), "rb") as f:
            want = hashlib.file_digest(f, "sha256").hexdigest()
        if digest.hexdigest() != want:
            raise AssertionError(f"{rel} read in {block}-byte reads on {mnt.mountpoint} differs")

    def _random(self, rng):
        rel = rng.choice(sorted(FILES))
        mnt = rng.choice(self.mounts)
        size = FILES[rel]
        fd = os.open(mnt.path(rel), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            for _ in range(4):
                offset = rng.randrange(size)
                length = rng.choice((1, 4096, 65536 + 17, 2 * MiB))
                got = os.pread(fd, length, offset)
                if got != self._expected(rel, offset, length):
                    raise AssertionError(f"{rel}: wrong bytes at {offset}+{length} on "
                                         f"{mnt.mountpoint}")
        finally:
            os.close(fd)

    def _listing(self, rng):
        mnt = rng.choice(self.mounts)
        seen = {}
        for top, _, names in os.walk(mnt.mountpoint):
            for name in names:
                path = os.path.join(top, name)
                seen[os.path.relpath(path, mnt.mountpoint)] = os.stat(path).st_size
        if seen != FILES:
            raise AssertionError(f"listing of {mnt.mountpoint}: {seen}")
        time.sleep(0.05)


class Chaos:
    """Impairs one node at a time: stopped, frozen, or serving corrupt copies of some objects.
    Drive it from the test's thread (NginxNode is not thread safe); restore() undoes all."""

    KINDS = ("stop", "freeze", "corrupt")

    def __init__(self, nodes, seed):
        self.nodes = nodes
        self.rng = random.Random(seed)
        self.done = collections.Counter()
        self.corrupted = []  # (path, offset, original byte)

    def run(self, seconds):
        deadline = time.monotonic() + seconds
        plan = []
        while time.monotonic() < deadline:
            if not plan:
                plan = list(self.KINDS)
                self.rng.shuffle(plan)
            kind = plan.pop()
            node = self.rng.choice(self.nodes)
            getattr(self, "_" + kind)(node)
            try:
                time.sleep(self.rng.uniform(0.3, 2.0))
            finally:
                self.restore()
            self.done[kind] += 1
            time.sleep(self.rng.uniform(0.1, 0.8))

    def _stop(self, node):
        node.stop()

    def _freeze(self, node):
        node.freeze()

    def _corrupt(self, node):
        objects = sorted(node.objects().values())
        for path in self.rng.sample(objects, min(8, len(objects))):
            size = os.path.getsize(path)
            offset = self.rng.randrange(size)
            with open(path, "r+b") as f:
                original = os.pread(f.fileno(), 1, offset)
                self.corrupted.append((path, offset, original))
                os.pwrite(f.fileno(), bytes([original[0] ^ 0x5A]), offset)

    def restore(self):
        for node in self.nodes:
            node.thaw()
            node.start()
        while self.corrupted:
            path, offset, original = self.corrupted.pop()
            with open(path, "r+b") as f:
                os.pwrite(f.fileno(), original, offset)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_everything_once_the_nodes_are_back(mnt, source):
    """Every file reads back right; EIO is allowed only while nodes leave their backoff."""
    deadline = time.monotonic() + 60
    for rel in sorted(FILES):
        while True:
            try:
                got = _sha256(mnt.path(rel))
                break
            except OSError as e:
                assert e.errno == errno.EIO and time.monotonic() < deadline, (
                    f"{rel} on {mnt.mountpoint} still fails with all nodes up: {e!r}")
                time.sleep(0.5)
        assert got == _sha256(os.path.join(source, rel)), f"{rel} on {mnt.mountpoint} differs"


def _mmap_readers(source, mnt, seconds, seed, count):
    return [subprocess.Popen([sys.executable, "-c", _MMAP_READER, source, mnt.mountpoint,
                              str(seconds), str(seed + i), *sorted(FILES)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(count)]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_every_read_is_right_while_nodes_fail_at_random(cluster, mount, test_dir):
    seed = int(os.environ.get("CKPTFS_CHAOS_SEED", time.time_ns() % (1 << 30)))
    print(f"seed {seed} (CKPTFS_CHAOS_SEED={seed} repeats this run)")
    source = os.path.join(test_dir, "src")
    _write_tree(source)
    index = os.path.join(test_dir, "chaos.index")
    ckptfs_cli.publish(source, index, cluster, replicas=2, chunk_size="1M")

    shared = os.path.join(test_dir, "shared-cache")
    options = dict(cache_dir=shared, cache_size="24M", memory_cache="16M")
    mounts = [mount(index, **options), mount(index, **options)]
    for mnt in mounts:
        ckptfs_cli.wait_for_greetings(mnt.mountpoint)

    readers = Readers(source, mounts, seed)
    mappers = _mmap_readers(source, mounts[1], CHAOS_SECONDS, seed, 1)
    chaos = Chaos(cluster, seed)
    try:
        readers.start(["sequential", "sequential", "random", "random", "random", "listing"])
        chaos.run(CHAOS_SECONDS)
    finally:
        chaos.restore()
        stuck = readers.join(timeout=60)
        outputs = []
        for proc in mappers:
            try:
                outputs.append((proc.wait(timeout=60), proc.stdout.read()))
            except subprocess.TimeoutExpired:
                proc.kill()
                outputs.append(("hung", proc.stdout.read()))
    stats = [ckptfs_cli.mount_stats(mnt.mountpoint) for mnt in mounts]
    print(f"chaos {dict(chaos.done)}; reads {dict(readers.ops)}, slowest {readers.slowest:.2f} s;"
          f" mmap {outputs}")
    for mnt, values in zip(mounts, stats):
        print(mnt.mountpoint, {k: v for k, v in values.items()
                               if k.startswith(("fs.eio", "fetch.", "cache.evictions"))})

    assert not stuck, f"readers still in a read a minute after the chaos ended: {stuck}"
    assert not readers.errors, "\n".join(readers.errors[:20])
    assert all(code == 0 for code, _ in outputs), f"mmap readers: {outputs}"
    assert all(chaos.done[kind] >= 1 for kind in Chaos.KINDS), chaos.done
    assert min(readers.ops.values()) >= 3, f"some readers hardly read: {readers.ops}"
    failed = sum(values["fetch.failed_attempts"] for values in stats)
    assert failed > 0, f"no fetch ever met an impaired node, so this proved nothing: {stats}"
    for values in stats:
        eio = {k: v for k, v in values.items() if k.startswith("fs.eio") and v}
        assert not eio, f"reads failed although every chunk had a good replica: {eio}"

    # Two nodes down: a fresh mount fails exactly the chunks held by them alone.
    down, up = cluster[:2], cluster[2]
    for node in down:
        node.stop()
    fresh = mount(index, cache_dir=os.path.join(test_dir, "fresh-cache"), timeout=3)
    with IndexDb(index) as db:
        probes = [(rel, e.offset + e.size // 2, up.name in e.nodes)
                  for rel in sorted(FILES) for e in db.extents(rel)]
    results = {}

    def probe(item):
        rel, offset, readable = item
        start = time.monotonic()
        try:
            got = ckptfs_cli.pread_file(fresh.path(rel), offset, 4096)
            outcome = "right" if got == readers._expected(rel, offset, 4096) else "wrong"
        except OSError as e:
            outcome = errno.errorcode.get(e.errno, str(e.errno))
        results[item] = (outcome, time.monotonic() - start)

    threads = [threading.Thread(target=probe, args=(item,), daemon=True) for item in probes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert len(results) == len(probes), "probes still waiting after 90 s"
    unexpected = {item: result for item, result in results.items()
                  if result[0] != ("right" if item[2] else "EIO")}
    assert not unexpected, f"with {[n.name for n in down]} down: {unexpected}"
    lost = sum(not readable for _, _, readable in probes)
    assert 0 < lost < len(probes), f"{lost} of {len(probes)} chunks lost: nothing was proved"
    slowest = max(elapsed for _, elapsed in results.values())
    print(f"{lost} of {len(probes)} chunks lost: EIO for each, slowest probe {slowest:.2f} s")
    assert slowest < 30, f"a probe took {slowest:.1f} s with timeout=3"

    for node in down:
        node.start()
    for mnt in mounts + [fresh]:
        _read_everything_once_the_nodes_are_back(mnt, source)
