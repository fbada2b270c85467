#!/usr/bin/env python3
"""One slow node: how much a node that still answers, only slowly, costs a cold read.

    sudo .venv-bench/bin/python bench/slow_node.py                      1 GiB, 3 runs per rate
    sudo .venv-bench/bin/python bench/slow_node.py --compare OLD_BIN    side by side with OLD_BIN

Three nginx nodes on 127.0.0.1 hold one file of random bytes (published with --store, R=2, so
two thirds of the chunks have a replica on the slow node). For each rate in --rates, node n0
sends each connection at most that much per second (nginx limit_rate; "0": no cap), as a node
with a failing disk or a congested link would, and each binary in turn reads the file cold: a
fresh mount and cache directory, the page cache dropped, 1 MiB reads. Prints MiB/s (median, then
each run) per rate and binary. nginx sends a limited connection its bytes in bursts a second
apart, so the mounts get stall_timeout=2, which keeps those gaps from being taken for a stall.
"""

import os
import shutil
import subprocess
import sys
import time

from common import (MiB, Cleanup, install_signal_handlers, log, median, run, side_by_side_args,
                    sync_and_drop_caches)
from common import binaries as bench_binaries
from servers import publish_argv, scratch_with_nodes


def cold_read(binary, index, workdir, size):
    """MiB/s of one cold read of big.bin through a fresh mount of `index`."""
    mnt = os.path.join(workdir, "mnt")
    cache = os.path.join(workdir, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    os.makedirs(mnt, exist_ok=True)
    os.makedirs(cache, mode=0o700)
    run([binary, "mount", index, mnt, "-o", f"cache_dir={cache},stall_timeout=2"], timeout=60)
    try:
        sync_and_drop_caches()
        buf = bytearray(MiB)
        got = 0
        t0 = time.monotonic()
        with open(os.path.join(mnt, "big.bin"), "rb", buffering=0) as f:
            while n := f.readinto(buf):
                got += n
        seconds = time.monotonic() - t0
    finally:
        subprocess.run(["fusermount3", "-u", mnt], check=False)
    if got != size:
        raise RuntimeError(f"read {got} bytes of {size}")
    return size / MiB / seconds


def main():
    p = side_by_side_args(__doc__, 1024, "/var/tmp/ckptfs-slow-node-bench")
    p.add_argument("--rates", default="0,1m,4m,10m", help="n0's cap per connection; 0: none")
    cfg = p.parse_args()
    install_signal_handlers()
    binaries = bench_binaries(cfg)
    cleanup = Cleanup()
    try:
        src, nodes = scratch_with_nodes(cfg.workdir, cleanup, cfg.size_mib)
        index = os.path.join(cfg.workdir, "big.ckptfs")
        run(publish_argv(binaries[0], src, index, nodes, "4M"), timeout=600)
        speeds = {}
        for rate in cfg.rates.split(","):
            nodes[0].set_limit_rate(None if rate == "0" else rate)
            for r in range(cfg.runs):
                for b in binaries:
                    mib_s = cold_read(b, index, cfg.workdir, cfg.size_mib * MiB)
                    speeds.setdefault((rate, b), []).append(mib_s)
                    log(f"n0 at {rate}, run {r + 1}: {b}: {mib_s:.0f} MiB/s")
        print(f"cold read of {cfg.size_mib} MiB from 3 nginx nodes on 127.0.0.1, R=2, n0 capped "
              "per connection")
        print("| n0 cap | binary | MiB/s (median) | runs |")
        print("| --- | --- | --- | --- |")
        for (rate, b), vals in speeds.items():
            runs = ", ".join(f"{v:.0f}" for v in vals)
            print(f"| {rate} | {b} | {median(vals):.0f} | {runs} |")
    finally:
        cleanup.run_all()


if __name__ == "__main__":
    sys.exit(main())
