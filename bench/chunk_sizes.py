#!/usr/bin/env python3
"""Chunk-size sweep: the same bytes published at several chunk sizes, read through ckptfs.

    sudo .venv-bench/bin/python bench/chunk_sizes.py                  1M,2M,4M,8M,16M, 3 runs
    sudo .venv-bench/bin/python bench/chunk_sizes.py --sizes 4M,16M --runs 5

The publish default (`--chunk-size`) is chosen with this. One file of 1 GiB and 64 files of
4 MiB (seeded random bytes) are published once per chunk size to the same three nginx nodes on
127.0.0.1 (R=2, objects of all sizes side by side), then every run measures each size in turn,
the order rotating from run to run so that no size always goes first on a drifting machine:

- cold sequential read of the big file (fresh cache, page cache dropped): MiB/s, daemon CPU per
  GiB, bytes the nodes sent per byte read; and 8-stream parallel curl of the same objects, the
  network limit for objects of that size;
- cold sequential read of the 64 small files in name order;
- random 4 KiB reads of the big file (seeded offsets): reads/s, p50 and p99 latency, bytes sent
  per byte read;
- open + first byte of a cold file (median of 5 small files);
- the daemon's peak RSS (VmHWM), the largest over the size's mounts in a run.

Prints a markdown table of the medians (each run's values after them) and writes the raw values
as JSON (--out-json). Default mount options throughout (memory_cache=64M, readahead=64M) unless
--options says otherwise.
"""

import argparse
import json
import os
import random
import shutil
import sys
import time

import netlimit
from ckindex import ChunkMap
from common import (MiB, GiB, Cleanup, Interrupted, MeasureFailed, ReaderJobs,
                    install_signal_handlers, log, median, percentile, run, sync_and_drop_caches)
from mounts import CkptfsMount, fresh_dir
from servers import NginxNode, clear_logs, publish_argv, settle_logs, traffic
from source import BIG, make_source, small_name

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


class Sweep:
    def __init__(self, args, cleanup):
        self.args = args
        self.cleanup = cleanup
        self.work = os.path.abspath(args.workdir)
        self.binary = os.path.abspath(
            os.environ.get("CKPTFS_BIN", os.path.join(REPO, "build", "cli", "ckptfs")))
        self.sizes = args.sizes.split(",")
        self.values = {s: {} for s in self.sizes}
        self.nodes = []
        self.maps = {}
        self._jobs = ReaderJobs(os.path.join(self.work, "jobs"))
        self._peak = 0.0
        self.big_bytes = args.big_mib * MiB
        self.small_files = [small_name(i) for i in range(args.small_count)]
        rng = random.Random(args.seed)
        self.offsets = [rng.randrange(self.big_bytes // 4096) * 4096
                        for _ in range(args.random_reads)]

    # --- set-up ---------------------------------------------------------------------------------

    def prepare(self):
        for sub in ("mnt", "cache", "jobs"):
            os.makedirs(os.path.join(self.work, sub), exist_ok=True)
        spec = argparse.Namespace(big_bytes=self.big_bytes, small_count=self.args.small_count,
                                  small_bytes=4 * MiB, seed=self.args.seed)
        make_source(os.path.join(self.work, "src"), os.path.join(self.work, "src.json"), spec,
                    reuse=False)
        for i in (1, 2, 3):
            d = os.path.join(self.work, "nodes", f"n{i}")
            shutil.rmtree(os.path.join(d, "www"), ignore_errors=True)
            os.makedirs(os.path.join(d, "www"))
            node = NginxNode(f"n{i}", d, os.path.join(d, "www"))
            self.cleanup.push(f"stop nginx {node.name}", node.stop)
            node.start()
            self.nodes.append(node)
        for size in self.sizes:
            index = self.index(size)
            t0 = time.monotonic()
            run(publish_argv(self.binary, os.path.join(self.work, "src"), index, self.nodes, size),
                timeout=1800)
            self.maps[size] = ChunkMap(index)
            chunks = sum(len(e) for e in self.maps[size].files.values())
            self.put(size, "publish_s", time.monotonic() - t0)
            self.put(size, "chunks", chunks)
            self.put(size, "index_kib", os.path.getsize(index) / 1024)
            log(f"publish {size}: {chunks} chunks, index {os.path.getsize(index) / 1024:.0f} KiB")

    def index(self, size):
        return os.path.join(self.work, f"index-{size}.ckptfs")

    def put(self, size, metric, value):
        self.values[size].setdefault(metric, []).append(value)

    # --- measurements ---------------------------------------------------------------------------

    def mount(self, size):
        cache = os.path.join(self.work, "cache", size)
        fresh_dir(cache)
        options = self.args.options.split(",") if self.args.options else []
        m = CkptfsMount(self.binary, self.index(size), os.path.join(self.work, "mnt", size),
                        cache, options)
        self.cleanup.push(f"unmount {m.mnt}", m.stop)
        m.start()
        return m

    def unmount(self, size, m):
        hwm = m.vm_hwm()
        self.cleanup.discard(m.stop)
        m.stop()
        if hwm is not None:
            self._peak = max(self._peak, hwm / MiB)

    def timed_read(self, size, metric, files):
        """A cold sequential read of `files` on a fresh mount; MiB/s, CPU and bytes sent."""
        m = self.mount(size)
        try:
            paths = [os.path.join(m.mnt, f) for f in files]
            clear_logs(self.nodes)
            cpu0 = m.cpu()
            r = self._jobs.run({"mode": "seq", "files": paths, "drop": True}, 600, m)
            cpu = m.cpu() - cpu0
            settle_logs(self.nodes)
            _gets, sent = traffic(self.nodes)
        finally:
            self.unmount(size, m)
        self.put(size, metric, r["bytes"] / MiB / r["seconds"])
        self.put(size, metric + "_cpu_s_per_gib", cpu / (r["bytes"] / GiB))
        self.put(size, metric + "_sent_per_byte", sent / r["bytes"])

    def curl(self, size):
        gets = netlimit.gets_for_files(self.maps[size], [BIG],
                                       {n.name: n.url for n in self.nodes})
        sync_and_drop_caches()
        seconds = netlimit.fetch(gets, streams=8)
        self.put(size, "curl_big", self.big_bytes / MiB / seconds)

    def random_reads(self, size):
        m = self.mount(size)
        try:
            clear_logs(self.nodes)
            r = self._jobs.run({"mode": "random", "file": os.path.join(m.mnt, BIG),
                             "offsets": self.offsets, "size": 4096, "drop": True}, 600, m)
            settle_logs(self.nodes)
            _gets, sent = traffic(self.nodes)
        finally:
            self.unmount(size, m)
        lat = sorted(r["lat"])
        self.put(size, "random_reads_per_s", len(self.offsets) / r["seconds"])
        self.put(size, "random_p50_ms", percentile(lat, 50) * 1000)
        self.put(size, "random_p99_ms", percentile(lat, 99) * 1000)
        self.put(size, "random_sent_per_byte", sent / (4096 * len(self.offsets)))

    def first_byte(self, size):
        m = self.mount(size)
        try:
            files = [os.path.join(m.mnt, f) for f in self.small_files[-5:]]
            r = self._jobs.run({"mode": "ttfb", "root": m.mnt, "files": files, "drop": True},
                               120, m)
        finally:
            self.unmount(size, m)
        self.put(size, "first_byte_ms", median(r["ttfb"]) * 1000)

    def run_once(self, r):
        k = r % len(self.sizes)
        for size in self.sizes[k:] + self.sizes[:k]:
            log(f"run {r + 1}: chunk size {size}")
            self._peak = 0.0
            self.timed_read(size, "cold_big", [BIG])
            self.curl(size)
            self.timed_read(size, "cold_small", self.small_files)
            self.random_reads(size)
            self.first_byte(size)
            self.put(size, "rss_mib", self._peak)

    # --- report ---------------------------------------------------------------------------------

    ROWS = [
        ("chunks", "chunks", "{:.0f}"),
        ("index_kib", "index size, KiB", "{:.0f}"),
        ("cold_big", "cold sequential, 1 file, MiB/s", "{:.0f}"),
        ("curl_big", "8-stream curl of the same objects, MiB/s", "{:.0f}"),
        ("ratio", "cold sequential / curl", "{:.3f}"),
        ("cold_big_cpu_s_per_gib", "daemon CPU, s per GiB read", "{:.2f}"),
        ("cold_big_sent_per_byte", "bytes sent per byte read", "{:.3f}"),
        ("cold_small", "cold sequential, small files, MiB/s", "{:.0f}"),
        ("cold_small_cpu_s_per_gib", "small files: daemon CPU, s per GiB", "{:.2f}"),
        ("random_reads_per_s", "random 4 KiB reads/s", "{:.0f}"),
        ("random_p50_ms", "random p50, ms", "{:.3f}"),
        ("random_p99_ms", "random p99, ms", "{:.3f}"),
        ("random_sent_per_byte", "random: bytes sent per byte read", "{:.1f}"),
        ("first_byte_ms", "open + first byte, ms", "{:.2f}"),
        ("rss_mib", "daemon peak RSS, MiB", "{:.1f}"),
    ]

    def table(self):
        for v in self.values.values():
            if v.get("cold_big") and v.get("curl_big"):
                v["ratio"] = [a / b for a, b in zip(v["cold_big"], v["curl_big"])]
        lines = ["| measurement | " + " | ".join(self.sizes) + " |",
                 "| --- |" + " ---: |" * len(self.sizes)]
        for key, label, fmt in self.ROWS:
            cells = []
            for size in self.sizes:
                vals = self.values[size].get(key, [])
                if not vals:
                    cells.append("—")
                    continue
                cell = fmt.format(median(vals))
                if len(vals) > 1:
                    cell += " (" + ", ".join(fmt.format(x) for x in vals) + ")"
                cells.append(cell)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1M,2M,4M,8M,16M", help="chunk sizes, as publish takes them")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--big-mib", type=int, default=1024, help="size of the big file in MiB")
    p.add_argument("--small-count", type=int, default=64, help="number of 4 MiB files")
    p.add_argument("--random-reads", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default="/var/tmp/ckptfs-chunk-sizes")
    p.add_argument("--options", default="",
                   help="mount options for every mount, e.g. memory_cache=256M (default: none)")
    p.add_argument("--out-json", help="also write the raw values here")
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("chunk_sizes.py: run as root (drop_caches, FUSE)", file=sys.stderr)
        return 1
    install_signal_handlers()
    cleanup = Cleanup()
    sweep = Sweep(args, cleanup)
    t0 = time.monotonic()
    try:
        sweep.prepare()
        for r in range(args.runs):
            sweep.run_once(r)
    except (MeasureFailed, Interrupted, RuntimeError, OSError) as e:
        log(f"chunk_sizes.py: {e}")
        return 1
    finally:
        cleanup.run_all()
        shutil.rmtree(sweep.work, ignore_errors=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\nChunk-size sweep, {args.runs} run(s), {when}, "
          f"{(time.monotonic() - t0) / 60:.1f} min; median (each run)\n")
    print(sweep.table())
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(sweep.values, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
