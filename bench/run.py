#!/usr/bin/env python3
"""ckptfs bench: ckptfs against the network limit, local disk, httpdirfs and rclone, one run.

    sudo .venv-bench/bin/python bench/run.py            full sizes, 3 runs (scripts/bench.sh)
    sudo .venv-bench/bin/python bench/run.py --quick    small sizes, 1 run, for trying the harness

Starts 3 nginx chunk nodes and 1 plain-tree node on 127.0.0.1, publishes the workloads with R=2,
measures every system on the same bytes, then writes docs/BENCHMARKS.md and docs/bench.png and
prints the table. Needs root (drop_caches, FUSE). See bench/README.md.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

from ckindex import ChunkMap
from common import (GiB, MeasureFailed, MiB, Cleanup, Interrupted, elapsed_seconds,
                    install_signal_handlers, log, run, run_bounded, terminate_pid)
from mounts import abort_fuse, mount_info
from raw import RawBench
from report import SHAPED_RATES, chart, console_table, markdown
from results import Results
from servers import NginxNode, publish_argv
from source import make_source
from tfstage import TfStage

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


class Config:
    def __init__(self, args):
        self.quick = args.quick
        self.runs = args.runs or (1 if args.quick else 3)
        self.workdir = os.path.abspath(args.workdir)
        self.binary = os.path.abspath(
            os.environ.get("CKPTFS_BIN", os.path.join(REPO, "build", "cli", "ckptfs")))
        self.index = os.path.join(self.workdir, "raw.ckptfs")
        self.big_bytes = (256 * MiB) if args.quick else 2 * GiB
        self.small_count = 32 if args.quick else 200
        self.small_bytes = 4 * MiB
        self.random_reads = args.random_reads or (500 if args.quick else 2000)
        self.ttfb_files = 5
        self.seed = args.seed
        self.streams = 8
        self.chunk_size = "4M"
        self.tf_bytes = (128 * MiB) if args.quick else 1 * GiB
        self.tf_timeout = 900 if args.quick else 1500
        self.shaped_bytes = (256 * MiB) if args.quick else 1 * GiB
        self.https_bytes = (256 * MiB) if args.quick else 1 * GiB
        self.loaders_venv = os.path.abspath(args.loaders_venv)
        self.peers = [p for p in ("httpdirfs", "rclone") if p not in args.skip]
        self.skip = set(args.skip)
        self.keep = args.keep or args.reuse
        self.reuse = args.reuse


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes (256 MiB, 32 x 4 MiB, 500 random reads, 128 MiB TF), 1 run")
    p.add_argument("--runs", type=int, help="runs per measurement (default 3; 1 with --quick)")
    p.add_argument("--workdir", default="/var/tmp/ckptfs-bench",
                   help="scratch space for data, nodes, caches and mounts (about 25 GiB)")
    p.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    p.add_argument("--reuse", action="store_true",
                   help="reuse data and published chunks kept by an earlier --keep run")
    p.add_argument("--skip", action="append", default=[],
                   choices=["httpdirfs", "rclone", "tf", "shaped", "https"],
                   help="leave a system or stage out")
    p.add_argument("--random-reads", type=int, help="number of random 4 KiB reads")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loaders-venv", default=os.path.join(REPO, ".venv-loaders"))
    p.add_argument("--out-md", default=os.path.join(REPO, "docs", "BENCHMARKS.md"))
    p.add_argument("--out-png", default=os.path.join(REPO, "docs", "bench.png"))
    p.add_argument("--report-only", metavar="RESULTS_JSON",
                   help="only render the report from a saved results.json")
    return p.parse_args(argv)


# ---- machine and versions ----------------------------------------------------------------------


def _first_line(cmd):
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (cp.stdout.strip() or cp.stderr.strip()).splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "not available"


def machine_info():
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    short = f"{os.cpu_count()} CPUs, {mem_kib / 1024 / 1024:.1f} GiB, Linux {platform.release()}"
    return f"nproc {os.cpu_count()}, {mem_kib / 1024 / 1024:.1f} GiB memory, kernel " \
           f"{platform.release()}, CPU {cpu}", short


def _httpdirfs_version():
    try:
        cp = subprocess.run(["httpdirfs", "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "httpdirfs not available"
    for line in (cp.stdout + cp.stderr).splitlines():
        if line.startswith("HTTPDirFS version"):
            return "httpdirfs " + line.split()[-1]
    return "httpdirfs ?"


def _source_revision():
    """HEAD's short hash, with "-dirty" when a tracked file changed; a note instead where there
    is no git or no checkout (the source from a tarball), which must not stop the run."""
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "(git not available)"
    if rev.returncode != 0:
        return "(not a git checkout)"
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions(cfg):
    parts = [f"ckptfs {_source_revision()} ({_first_line([cfg.binary, '--version'])})",
             _first_line(["nginx", "-v"]).replace("nginx version: ", ""),
             _httpdirfs_version(),
             _first_line(["rclone", "version"]),
             " ".join(_first_line(["curl", "--version"]).split()[:2])]
    return ", ".join(parts)


def check_tools(cfg, res):
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it drops the page cache and mounts FUSE)")
    if not os.access(cfg.binary, os.X_OK):
        raise SystemExit(f"bench: ckptfs binary {cfg.binary} not found; build it or set "
                         "CKPTFS_BIN")
    for tool in ("nginx", "curl", "fusermount3"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"bench: {tool} not found (scripts/bench.sh installs it)")
    for peer in list(cfg.peers):
        if shutil.which(peer) is None:
            res.stage_notes[peer] = f"not run: {peer} is not installed"
            cfg.peers.remove(peer)
    for peer in ("httpdirfs", "rclone"):
        if peer in cfg.skip:
            res.stage_notes[peer] = "not run: --skip " + peer


# ---- set-up and tear-down ------------------------------------------------------------------------


def clear_leftovers(workdir):
    """Unmounts FUSE mounts and stops nginx masters that a killed earlier bench left in workdir."""
    mnt_root = os.path.join(workdir, "mnt")
    if os.path.isdir(mnt_root):
        for name in os.listdir(mnt_root):
            path = os.path.join(mnt_root, name)
            if mount_info(path) is not None:
                log(f"unmounting leftover {path}")
                if subprocess.run(["fusermount3", "-u", path], capture_output=True,
                                  timeout=20).returncode != 0:
                    abort_fuse(path)
    nodes_root = os.path.join(workdir, "nodes")
    if os.path.isdir(nodes_root):
        for name in os.listdir(nodes_root):
            pid_file = os.path.join(nodes_root, name, "nginx.pid")
            try:
                pid = int(open(pid_file).read().strip())
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except (OSError, ValueError):
                continue
            if os.path.join(nodes_root, name) in cmdline:
                log(f"stopping leftover nginx {pid}")
                terminate_pid(pid)


def start_nodes(cfg, cleanup):
    nodes = []
    for i in (1, 2, 3):
        d = os.path.join(cfg.workdir, "nodes", f"n{i}")
        nodes.append(NginxNode(f"n{i}", d, os.path.join(d, "www")))
    plain = NginxNode("plain", os.path.join(cfg.workdir, "nodes", "plain"),
                      os.path.join(cfg.workdir, "src"))
    for node in nodes + [plain]:
        cleanup.push(f"stop nginx {node.name}", node.stop)
        node.start()
    log("nodes: " + ", ".join(f"{n.name} {n.url}" for n in nodes + [plain]))
    return nodes, plain


def publish(cfg, nodes, res, fresh_source):
    if cfg.reuse and not fresh_source and os.path.exists(cfg.index):
        log("publish: reusing the existing index and chunk objects")
        return
    for n in nodes:
        shutil.rmtree(n.root, ignore_errors=True)
        os.makedirs(n.root)
    argv = publish_argv(cfg.binary, os.path.join(cfg.workdir, "src"), cfg.index, nodes,
                        cfg.chunk_size)
    t0 = time.monotonic()
    cp = run(argv, timeout=1800)
    res.meta["publish_seconds"] = time.monotonic() - t0
    res.meta["publish_output"] = cp.stdout.strip()
    log(f"publish: {res.meta['publish_seconds']:.1f} s: {' | '.join(cp.stdout.split(chr(10))[:3])}")


def remove_workdir(workdir):
    with open("/proc/self/mountinfo") as f:
        busy = [line.split()[4] for line in f if line.split()[4].startswith(workdir + "/")]
    if busy:
        log(f"not removing {workdir}: still mounted: {busy}")
        return
    shutil.rmtree(workdir, ignore_errors=True)


# ---- the bench ----------------------------------------------------------------------------------


def describe(cfg, res):
    res.meta["date"] = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    res.meta["machine"], res.meta["machine_short"] = machine_info()
    res.meta["versions"] = versions(cfg)
    res.meta["big_label"] = f"one {_size(cfg.big_bytes)} file"
    res.meta["small_label"] = f"{cfg.small_count} files of {_size(cfg.small_bytes)}"
    res.meta["data"] = (f"{res.meta['big_label']}; {res.meta['small_label']}; random bytes; "
                        f"chunk size {cfg.chunk_size}; random reads: {cfg.random_reads} x 4 KiB, "
                        f"seed {cfg.seed}; TF/safetensors: {_size(cfg.tf_bytes)} of float32 each")
    res.meta["nodes"] = ("3 nginx chunk nodes on 127.0.0.1, R=2 (publish --store); 1 more nginx "
                         "serving the source tree to httpdirfs and rclone; worker_processes "
                         "auto, sendfile on, keep-alive")


def _size(n):
    return f"{n / GiB:g} GiB" if n >= GiB else f"{n / MiB:g} MiB"


def bench(cfg, res, cleanup):
    check_tools(cfg, res)
    describe(cfg, res)
    log(f"bench: {res.meta['machine']}")
    log(f"bench: {res.meta['versions']}")
    clear_leftovers(cfg.workdir)
    for sub in ("mnt", "cache", "logs", "jobs"):
        os.makedirs(os.path.join(cfg.workdir, sub), exist_ok=True)
    manifest, reused = make_source(os.path.join(cfg.workdir, "src"),
                                   os.path.join(cfg.workdir, "src.json"), cfg, cfg.reuse)
    nodes, plain = start_nodes(cfg, cleanup)
    publish(cfg, nodes, res, fresh_source=not reused)
    chunk_map = ChunkMap(cfg.index)
    chunk_map.node_urls = {n.name: n.url for n in nodes}  # Ports are new in every bench run.
    raw = RawBench(cfg, res, cleanup, nodes, plain, chunk_map, manifest)
    for r in range(cfg.runs):
        log(f"raw stage: run {r + 1} of {cfg.runs}")
        raw.run_once(r)
    log("raw stage: checking every byte through a fresh cold mount")
    try:
        n, bad = raw.verify_pass()
        log(f"  {n} files read back, {len(bad)} wrong")
    except MeasureFailed as e:
        res.problem(f"ckptfs: verification read failed: {e}")
    tf_stage(cfg, res, cleanup, nodes)
    shaped_stage(cfg, res)
    https_stage(cfg, res)


def run_json_stage(cfg, res, name, skip, script, args, what):
    """Runs bench/`script` with --bin, --json and `args` (logging `what` it does), which writes
    its figures as JSON, and
    returns them; None, with stage `name` noted as not run, when it is skipped (--skip `skip`) or
    fails. SIGTERM first on a timeout: the scripts then remove what they made (nodes, mounts, a
    network namespace)."""
    if skip in cfg.skip:
        res.stage_notes[name] = f"not run: --skip {skip}"
        return None
    log(f"{name} stage: {what}")
    out = os.path.join(cfg.workdir, f"{skip}.json")
    argv = [sys.executable, os.path.join(HERE, script), "--bin", cfg.binary, "--json", out, *args]
    try:
        run_bounded(argv, timeout=1800, stop_grace=120)
        with open(out) as f:
            return json.load(f)
    except (MeasureFailed, OSError, ValueError) as e:
        res.stage_notes[name] = f"not run: {e}"
        log(f"{name} stage failed: {e}")
        return None


def https_stage(cfg, res):
    """bench/https_cost.py, which cleans up its own nodes, certificates, mount and file."""
    measured = run_json_stage(cfg, res, "https", "https", "https_cost.py",
                              ["--runs", str(cfg.runs), "--size-mib", str(cfg.https_bytes // MiB)],
                              f"{cfg.runs} run(s) of each side")
    if measured is None:
        return
    for side, values in measured.items():
        for r, v in enumerate(values):
            res.put(f"https.{side}", r, v)
    log(f"  curl {res.med('https.curl.http'):,.0f} / {res.med('https.curl.https'):,.0f}, "
        f"ckptfs {res.med('https.ckptfs.http'):,.0f} / {res.med('https.ckptfs.https'):,.0f} "
        "MiB/s (http / https)")


def shaped_stage(cfg, res):
    """bench/shaped_link.py at SHAPED_RATES, which cleans up its own namespace, nodes and file."""
    measured = run_json_stage(cfg, res, "shaped link", "shaped", "shaped_link.py",
                              ["--rates", ",".join(SHAPED_RATES), "--runs", str(cfg.runs),
                               "--size-mib", str(cfg.shaped_bytes // MiB)],
                              f"{', '.join(SHAPED_RATES)}, {cfg.runs} run(s) each")
    if measured is None:
        return
    for rate, sides in measured.items():
        for side, values in sides.items():
            for r, v in enumerate(values):
                res.put(f"shaped.{rate}.{side}", r, v)
        log(f"  {rate}: curl {res.med(f'shaped.{rate}.curl'):,.0f}, "
            f"ckptfs {res.med(f'shaped.{rate}.ckptfs'):,.0f} MiB/s")


def tf_stage(cfg, res, cleanup, nodes):
    if "tf" in cfg.skip:
        res.stage_notes["TensorFlow/safetensors"] = "not run: --skip tf"
        return
    stage = TfStage(cfg, res, cleanup, nodes)
    try:
        stage.prepare()
    except (MeasureFailed, OSError) as e:
        res.stage_notes["TensorFlow/safetensors"] = f"not run: {e}"
        log(f"tf stage not run: {e}")
        return
    for r in range(cfg.runs):
        log(f"tf stage: run {r + 1} of {cfg.runs}")
        try:
            stage.run_once(r)
        except (MeasureFailed, OSError, RuntimeError) as e:
            log(f"  FAILED: {e}")
            res.problem(f"TF stage run {r + 1} failed: {e}")
            for key in ("tf.restore.ckptfs", "tf.restore.download", "st.load.ckptfs",
                        "st.load.download"):
                res.fail(key, r, str(e))


def write_report(res, args):
    md = markdown(res, os.path.basename(args.out_png))
    os.makedirs(os.path.dirname(args.out_md), exist_ok=True)
    with open(args.out_md, "w") as f:
        f.write(md)
    try:
        chart(res, args.out_png)
    except ImportError as e:
        log(f"no chart: {e} (install bench/requirements.txt)")
    print(console_table(res))
    log(f"wrote {args.out_md} and {args.out_png}")


def main(argv):
    args = parse_args(argv)
    if args.report_only:
        with open(args.report_only) as f:
            write_report(Results.from_json(json.load(f)), args)
        return 0
    cfg = Config(args)
    res = Results(cfg.runs)
    res.meta["command"] = " ".join(["bench/run.py"] + [shlex.quote(a) for a in argv])
    install_signal_handlers()
    cleanup = Cleanup()
    os.makedirs(cfg.workdir, exist_ok=True)
    results_path = os.path.join(cfg.workdir, "results.json")
    status = 0
    try:
        bench(cfg, res, cleanup)
    except Interrupted as e:
        log(f"bench: interrupted by {e}; cleaning up, no report written")
        status = 130
    except MeasureFailed as e:
        log(f"bench: set-up failed: {e}")
        status = 1
    finally:
        log("bench: unmounting and stopping nodes")
        cleanup.run_all()
    res.meta["duration_min"] = elapsed_seconds() / 60
    if status == 0:
        res.save(results_path)
        kept = os.path.join(REPO, "bench", "last-results.json")
        res.save(kept)
        write_report(res, args)
    if not cfg.keep:
        remove_workdir(cfg.workdir)
    log(f"bench: done in {elapsed_seconds() / 60:.1f} min")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
