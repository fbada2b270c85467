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

import argparse
import os
import shutil
import subprocess
import sys
import time

from common import MiB, Cleanup, install_signal_handlers, log, median, run, sync_and_drop_caches
from servers import NginxNode, publish_argv


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default=os.environ.get("CKPTFS_BIN", "build/cli/ckptfs"))
    p.add_argument("--compare", help="another ckptfs binary, measured alternately with --bin")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rates", default="0,1m,4m,10m", help="n0's cap per connection; 0: none")
    p.add_argument("--workdir", default="/var/tmp/ckptfs-slow-node-bench")
    cfg = p.parse_args()
    install_signal_handlers()
    binaries = [os.path.abspath(cfg.bin)] + ([os.path.abspath(cfg.compare)] if cfg.compare else [])
    cleanup = Cleanup()
    try:
        shutil.rmtree(cfg.workdir, ignore_errors=True)
        cleanup.push("scratch", lambda: shutil.rmtree(cfg.workdir, ignore_errors=True))
        src = os.path.join(cfg.workdir, "src")
        os.makedirs(src)
        with open(os.path.join(src, "big.bin"), "wb") as f:
            for _ in range(cfg.size_mib):
                f.write(os.urandom(MiB))
        nodes = []
        for i in range(3):
            node = NginxNode(f"n{i}", os.path.join(cfg.workdir, f"n{i}"),
                             os.path.join(cfg.workdir, f"n{i}", "www"))
            node.start()
            cleanup.push(f"nginx {node.name}", node.stop)
            nodes.append(node)
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
