#!/usr/bin/env python3
"""Publish by HTTP PUT: how long `ckptfs publish` takes to send a file to three nginx nodes.

    sudo .venv-bench/bin/python bench/publish_put.py                       2 GiB, 3 runs, ~2 min
    sudo .venv-bench/bin/python bench/publish_put.py --compare OLD_BIN     side by side with OLD_BIN
    sudo .venv-bench/bin/python bench/publish_put.py --store               into the nodes' roots

One file of random bytes is published without --store (every object goes by PUT, R=2) to three
nginx nodes on 127.0.0.1 that accept WebDAV PUT; with --store, into the directories they serve.
Each run, for each binary in turn: the nodes are emptied and the page cache dropped, then a
fresh publish is timed; then the same publish again onto nodes that hold every object (page cache
dropped again), which is what re-running a failed publish or publishing a checkpoint that shares
its chunks costs. Prints seconds (median, then
each run) and MiB/s of the source. Scratch space in --workdir (the file plus 2 copies of it on
the nodes) is removed at the end.
"""

import os
import shutil
import sys
import time

from common import Cleanup, install_signal_handlers, log, median, run, side_by_side_args
from common import binaries as bench_binaries
from common import sync_and_drop_caches
from servers import scratch_with_nodes


def publish_once(binary, src, index, nodes, extra, store):
    argv = [binary, "publish", src, "-o", index, "--replicas", "2"] + extra
    for n in nodes:
        argv += ["--node", f"{n.name}={n.url}"]
        if store:
            argv += ["--store", f"{n.name}={n.root}"]
    sync_and_drop_caches()
    t0 = time.monotonic()
    run(argv, timeout=1800)
    return time.monotonic() - t0


def main():
    p = side_by_side_args(__doc__, 2048, "/var/tmp/ckptfs-publish-bench")
    p.add_argument("--store", action="store_true", help="write into the nodes' roots, no PUT")
    p.add_argument("--args", default="", help="extra publish arguments, e.g. '--uploads 1'")
    cfg = p.parse_args()
    install_signal_handlers()
    binaries = bench_binaries(cfg)
    cleanup = Cleanup()
    try:
        src, nodes = scratch_with_nodes(cfg.workdir, cleanup, cfg.size_mib, accept_put=True)
        index = os.path.join(cfg.workdir, "big.ckptfs")
        times = {(b, kind): [] for b in binaries for kind in ("fresh", "again")}
        for r in range(cfg.runs):
            for b in binaries:
                for n in nodes:
                    shutil.rmtree(n.root, ignore_errors=True)
                    os.makedirs(n.root)
                fresh = publish_once(b, src, index, nodes, cfg.args.split(), cfg.store)
                again = publish_once(b, src, index, nodes, cfg.args.split(), cfg.store)
                times[(b, "fresh")].append(fresh)
                times[(b, "again")].append(again)
                log(f"run {r + 1}: {b}: fresh {fresh:.2f} s, again {again:.2f} s")
        how = "into the --store directories of" if cfg.store else "by PUT to"
        print(f"publish {how} 3 nginx nodes on 127.0.0.1 of {cfg.size_mib} MiB, R=2 "
              f"{cfg.args}".rstrip())
        print("| binary | publish | seconds (median) | MiB/s | runs |")
        print("| --- | --- | --- | --- | --- |")
        for (b, kind), vals in times.items():
            m = median(vals)
            runs = ", ".join(f"{v:.2f}" for v in vals)
            print(f"| {b} | {kind} | {m:.2f} | {cfg.size_mib / m:.0f} | {runs} |")
    finally:
        cleanup.run_all()


if __name__ == "__main__":
    sys.exit(main())
