"""Cold reads over a shaped link: where the network, not the client's CPU, is the limit.

    sudo python3 bench/shaped_link.py [--bin build/cli/ckptfs] [--rates 4gbit,8gbit,12gbit]
                                      [--size-mib 1024] [--runs 3]

The main benchmark runs nodes and client on one loopback, where nothing limits the network and a
2-core client is bound by its CPU (SHA-256 of every byte, the copies). This one re-runs itself
in a private network namespace whose loopback is shaped with `tc tbf` to each rate in turn,
starts three nginx nodes there, publishes one random file (R=2), and for each rate alternates an
8-stream parallel curl of the file's chunk objects with a cold ckptfs read of the file (fresh
cache, page cache dropped, 1 MiB reads), from the same nodes. It prints one line per rate: both
in MiB/s (median of the runs, then each run) and their ratio. Nothing leaves the namespace, and
the namespace, the mount and the nodes go away at the end, also on failure.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ckindex  # noqa: E402
import netlimit  # noqa: E402
import servers  # noqa: E402
from common import MiB, install_signal_handlers, sync_and_drop_caches  # noqa: E402
from mounts import cold_ckptfs_read  # noqa: E402

FILE = "model.bin"
SEED = 1


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default=os.path.join(HERE, "..", "build", "cli", "ckptfs"))
    p.add_argument("--rates", default="4gbit,8gbit,12gbit",
                   help="comma-separated tc rates for the namespace's loopback")
    p.add_argument("--size-mib", type=int, default=1024, help="size of the file read")
    p.add_argument("--runs", type=int, default=3, help="runs per rate (median shown)")
    p.add_argument("--json", help="also write {rate: {curl: [MiB/s...], ckptfs: [...]}} here")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    install_signal_handlers()  # SIGINT, SIGTERM, SIGHUP unwind through the finally blocks.
    if args.inside:
        return measure(args)
    if os.geteuid() != 0:
        sys.exit("shaped_link.py: needs root (network namespace, tc, page-cache drops, FUSE)")
    ns = f"ckptfs-shaped-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        inner = [sys.executable, os.path.abspath(__file__), "--inside", *argv]
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *inner])
        try:
            return proc.wait()
        except BaseException:
            stop_inner(proc)
            raise
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def stop_inner(proc):
    """Lets the run inside the namespace clean up (a Ctrl-C reached it too), asking it to when it
    did not, and kills it only when it does not finish."""
    ignore_signals()
    for ask, grace in ((None, 5), (proc.terminate, 60), (proc.kill, None)):
        if ask is not None:
            ask()
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def ignore_signals():
    """Cleanup is not interrupted by a second signal."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def shape(rate):
    subprocess.run(["tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", rate,
                    "burst", "4mb", "latency", "100ms"], check=True)


def curl_mibps(gets, size):
    sync_and_drop_caches()
    return size / netlimit.fetch(gets, streams=8) / MiB


def ckptfs_mibps(binary, index, work, size):
    read, seconds, _ = cold_ckptfs_read(binary, index, work, FILE)
    if read != size:
        raise RuntimeError(f"read {read} bytes of {size} through the mount")
    return size / seconds / MiB


def measure(args):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    binary = os.path.abspath(args.bin)
    size = args.size_mib * MiB
    work = servers.scratch_dir("ckptfs-shaped-")
    nodes = []
    try:
        index = servers.publish_one_file(work, binary, FILE, size, SEED, nodes)
        gets = netlimit.gets_for_files(ckindex.ChunkMap(index), [FILE])
        print(f"{'rate':>8} {'curl MiB/s':>26} {'ckptfs MiB/s':>26} {'ratio':>6}", flush=True)
        results = {}
        for rate in args.rates.split(","):
            shape(rate)
            curl, ckptfs = [], []
            for _ in range(args.runs):
                curl.append(curl_mibps(gets, size))
                ckptfs.append(ckptfs_mibps(binary, index, work, size))
            results[rate] = {"curl": curl, "ckptfs": ckptfs}
            print(f"{rate:>8} {row(curl):>26} {row(ckptfs):>26} "
                  f"{statistics.median(k / c for k, c in zip(ckptfs, curl)):6.2f}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f)
    finally:
        ignore_signals()
        for node in nodes:
            node.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def row(values):
    return f"{statistics.median(values):,.0f} ({', '.join(f'{v:,.0f}' for v in values)})"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
