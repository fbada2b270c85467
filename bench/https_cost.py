"""Cold reads over https against http, from the same nodes: what TLS costs a read.

    sudo python3 bench/https_cost.py [--bin build/cli/ckptfs] [--size-mib 1024] [--runs 3]
                                     [--json FILE]

Makes a certificate authority and a certificate for 127.0.0.1 with openssl, starts three nginx
nodes that serve the same files over http and https (a port each), publishes one random file
(R=2), and alternates in each run: 8-stream parallel curl of the file's chunk objects over http,
the same over https (curl --cacert), a cold ckptfs read of the file over http, and one over https
(node.NAME= each node's https URL, ca_file=); fresh cache, page cache dropped, 1 MiB reads. It
prints MiB/s (median of the runs, then each run) and, for ckptfs, the daemon's CPU seconds per
GiB, then the https/http ratios. The nodes, the mount and the files go away at the end, also on
failure.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ckindex  # noqa: E402
import netlimit  # noqa: E402
import servers  # noqa: E402
from common import GiB, MiB, install_signal_handlers, sync_and_drop_caches  # noqa: E402
from mounts import cold_ckptfs_read  # noqa: E402

FILE = "model.bin"
SEED = 2
SIDES = ("curl.http", "curl.https", "ckptfs.http", "ckptfs.https")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default=os.path.join(HERE, "..", "build", "cli", "ckptfs"))
    p.add_argument("--size-mib", type=int, default=1024, help="size of the file read")
    p.add_argument("--runs", type=int, default=3, help="runs of each side (median shown)")
    p.add_argument("--json", help="also write {side: [MiB/s...], ...cpu: [s/GiB...]} here")
    return p.parse_args(argv)


def make_certificates(directory):
    """A CA and a certificate for IP 127.0.0.1 that it signs, EC P-256; returns (CA file,
    (certificate, key))."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    with open(os.path.join(directory, "node.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    for argv in (["req", "-x509", *ec, "-days", "2", "-subj", "/CN=ckptfs bench CA",
                  "-keyout", "ca.key", "-out", "ca.pem"],
                 ["req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "node.key", "-out",
                  "node.csr"],
                 ["x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                  "-CAcreateserial", "-days", "2", "-extfile", "node.ext", "-out", "node.pem"]):
        subprocess.run(["openssl", *argv], cwd=directory, check=True, capture_output=True)
    return (os.path.join(directory, "ca.pem"),
            (os.path.join(directory, "node.pem"), os.path.join(directory, "node.key")))


def curl_mibps(gets, size, curl_options=()):
    sync_and_drop_caches()
    return size / netlimit.fetch(gets, streams=8, curl_options=curl_options) / MiB


def ckptfs_read(binary, index, work, size, options=()):
    """A cold read of FILE through a fresh mount: (MiB/s, daemon CPU seconds per GiB)."""
    read, seconds, cpu = cold_ckptfs_read(binary, index, work, FILE, options)
    if read != size:
        raise RuntimeError(f"read {read} bytes of {size} through the mount")
    return size / seconds / MiB, cpu / (size / GiB)


def measure(args):
    binary = os.path.abspath(args.bin)
    size = args.size_mib * MiB
    work = servers.scratch_dir("ckptfs-https-")
    nodes = []
    try:
        ca, certificate = make_certificates(work)
        index = servers.publish_one_file(work, binary, FILE, size, SEED, nodes, tls=certificate)
        chunk_map = ckindex.ChunkMap(index)
        http_gets = netlimit.gets_for_files(chunk_map, [FILE])
        https_gets = netlimit.gets_for_files(chunk_map, [FILE],
                                             node_urls={n.name: n.https_url for n in nodes})
        https_options = [f"node.{n.name}={n.https_url}" for n in nodes] + [f"ca_file={ca}"]
        results = {side: [] for side in SIDES}
        results.update({"ckptfs.http.cpu": [], "ckptfs.https.cpu": []})
        for _ in range(args.runs):
            results["curl.http"].append(curl_mibps(http_gets, size))
            results["curl.https"].append(curl_mibps(https_gets, size, ("--cacert", ca)))
            for side, options in (("ckptfs.http", ()), ("ckptfs.https", https_options)):
                mibps, cpu = ckptfs_read(binary, index, work, size, options)
                results[side].append(mibps)
                results[side + ".cpu"].append(cpu)
        print_table(results)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f)
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(results):
    def row(values, unit=",.0f"):
        return (f"{statistics.median(values):{unit}} "
                f"({', '.join(f'{v:{unit}}' for v in values)})")

    for side in SIDES:
        line = f"{side:>13}: {row(results[side])} MiB/s"
        if side.startswith("ckptfs"):
            line += f", daemon {row(results[side + '.cpu'], '.2f')} CPU-s/GiB"
        print(line, flush=True)
    for who in ("curl", "ckptfs"):
        ratios = [s / p for s, p in zip(results[f"{who}.https"], results[f"{who}.http"])]
        print(f"{who:>13}: https / http {statistics.median(ratios):.2f}", flush=True)


def main(argv):
    args = parse_args(argv)
    install_signal_handlers()  # SIGINT, SIGTERM, SIGHUP unwind through the finally blocks.
    if os.geteuid() != 0:
        sys.exit("https_cost.py: needs root (page-cache drops, FUSE)")
    return measure(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
