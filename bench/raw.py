"""The raw-file stage: sequential, random, concurrent and first-byte reads of the source tree
through local disk, parallel curl, ckptfs, httpdirfs and rclone, side by side in every run.

Metric ids are "<workload>.<system>.<what>"; report.py names and formats them.
"""

import hashlib
import os
import random

import netlimit
from common import (GiB, MeasureFailed, MiB, ReaderJobs, log, median, percentile,
                    sync_and_drop_caches)
from mounts import CkptfsMount, HttpdirfsMount, RcloneMount, fresh_dir
from servers import clear_logs, settle_logs, traffic
from source import BIG, small_name

PEERS = ("httpdirfs", "rclone")


class RawBench:
    """Runs the raw stage. Not thread safe; one instance per bench invocation."""

    def __init__(self, cfg, res, cleanup, nodes, plain, chunk_map, manifest):
        self.cfg = cfg
        self.res = res
        self.cleanup = cleanup
        self.nodes = nodes
        self.plain = plain
        self.chunk_map = chunk_map
        self.manifest = manifest
        self.work = cfg.workdir
        self.workloads = {
            "big": [BIG],
            "small": [small_name(i) for i in range(cfg.small_count)],
        }
        rng = random.Random(cfg.seed)
        pages = cfg.big_bytes // 4096
        self.offsets = [rng.randrange(pages) * 4096 for _ in range(cfg.random_reads)]
        self.distinct_chunks = len({o // chunk_map.chunk_size for o in self.offsets})
        self.random_sha = self._expected_random_sha()
        n = cfg.small_count
        self.ttfb_cold = [small_name((i * n // cfg.ttfb_files + 3) % n)
                          for i in range(cfg.ttfb_files)]
        self.ttfb_warm = [small_name((i * n // cfg.ttfb_files + 7) % n)
                          for i in range(cfg.ttfb_files)]
        self.skip = {}  # peer -> reason, once a peer failed (it is not retried in later runs)
        self._jobs = ReaderJobs(os.path.join(self.work, "jobs"))

    # ---- plumbing -------------------------------------------------------------------------

    def _expected_random_sha(self):
        h = hashlib.sha256()
        with open(os.path.join(self.work, "src", BIG), "rb") as f:
            for off in self.offsets:
                f.seek(off)
                h.update(f.read(4096))
        return h.hexdigest()

    def worker(self, job, timeout, mount=None):
        """Runs reader.py on a job; a timeout aborts `mount`'s FUSE connection."""
        return self._jobs.run(job, timeout, mount)

    def read_timeout(self, nbytes):
        """Generous bound for reading nbytes: a reader under 16 MiB/s is recorded as hung."""
        return 60 + nbytes / (16 * MiB)

    def paths(self, root, rels):
        return [os.path.join(root, rel) for rel in rels]

    def wl_bytes(self, wl):
        return sum(os.path.getsize(os.path.join(self.work, "src", r)) for r in self.workloads[wl])

    def attempt(self, run, mids, fn, peer=None):
        """Runs fn(); a MeasureFailed becomes a note on every metric in mids (peer: not retried)."""
        if peer is not None and peer in self.skip:
            for mid in mids:
                self.res.fail(mid, run, self.skip[peer])
            return
        try:
            fn()
        except (MeasureFailed, OSError, RuntimeError) as e:
            # OSError/RuntimeError too: one broken measurement must not cost the whole run.
            reason = str(e) if isinstance(e, MeasureFailed) else f"{type(e).__name__}: {e}"
            log(f"  FAILED {', '.join(mids)}: {reason}")
            for mid in mids:
                self.res.fail(mid, run, reason)
            if peer is not None:
                self.skip[peer] = f"not retried after failing in run {run + 1}: {reason}"
            elif any(".ckptfs" in mid or mid.startswith("rss.") for mid in mids):
                self.res.problem(f"ckptfs: {mids[0]} failed in run {run + 1}: {reason}")

    def ckptfs_mount(self, name, cache):
        overrides = [f"node.{n.name}={n.url}" for n in self.nodes]
        m = CkptfsMount(self.cfg.binary, self.cfg.index, os.path.join(self.work, "mnt", name),
                        cache, overrides)
        self.cleanup.push(f"unmount {m.mnt}", m.stop)
        m.start()
        return m

    def stop(self, m):
        self.cleanup.discard(m.stop)
        m.stop()

    def rss(self, run, stage, m):
        hwm = m.vm_hwm()
        if hwm is not None:
            self.res.put(f"rss.{stage}", run, hwm / MiB)

    def peer_mount(self, peer, cache):
        mnt = os.path.join(self.work, "mnt", peer)
        logp = os.path.join(self.work, "logs", f"{peer}.log")
        if peer == "httpdirfs":
            m = HttpdirfsMount(self.plain.url, mnt, cache, logp)
        else:
            m = RcloneMount(self.plain.url, mnt, cache, logp,
                            os.path.join(self.work, "rclone.conf"))
        self.cleanup.push(f"unmount {mnt}", m.stop)
        try:
            m.start()
        except MeasureFailed:
            self.stop(m)
            raise
        return m

    def peer_read(self, m, job, timeout):
        try:
            return self.worker(job, timeout, m)
        except MeasureFailed as e:
            if m.crashed():
                raise MeasureFailed(f"{m.kind} crashed (exit {m.proc.returncode}); "
                                    f"{m._log_tail()}") from e
            raise MeasureFailed(f"{m.kind} read failed or hung: {e}") from e

    # ---- one run ------------------------------------------------------------------------------

    def run_once(self, run):
        self.seq_limits(run)
        self.seq_ckptfs(run)
        self.seq_nodes_warm(run)
        for peer in self.cfg.peers:
            self.seq_peer(run, peer)
        self.random_all(run)
        self.concurrent_ckptfs(run)
        self.ttfb_all(run)

    # ---- sequential -----------------------------------------------------------------------------

    def seq_limits(self, run):
        src = os.path.join(self.work, "src")
        for wl, rels in self.workloads.items():
            nbytes = self.wl_bytes(wl)

            def local():
                cold = self.worker({"mode": "seq", "files": self.paths(src, rels), "drop": True},
                                   self.read_timeout(nbytes))
                warm = self.worker({"mode": "seq", "files": self.paths(src, rels)},
                                   self.read_timeout(nbytes))
                self.res.put(f"{wl}.local.cold", run, mibps(cold))
                self.res.put(f"{wl}.local.warm", run, mibps(warm))

            def curl(mid, verify):
                gets = netlimit.gets_for_files(self.chunk_map, rels)
                sync_and_drop_caches()
                try:
                    secs = netlimit.fetch(gets, self.cfg.streams, self.read_timeout(nbytes),
                                          verify=verify)
                except RuntimeError as e:
                    raise MeasureFailed(str(e)) from e
                self.res.put(mid, run, nbytes / MiB / secs)

            self.attempt(run, [f"{wl}.local.cold", f"{wl}.local.warm"], local)
            self.attempt(run, [f"{wl}.curl"], lambda: curl(f"{wl}.curl", False))
            self.attempt(run, [f"{wl}.curl_sha"], lambda: curl(f"{wl}.curl_sha", True))
            log(f"  {wl}: local cold {self._fmt(f'{wl}.local.cold', run)}, page cache "
                f"{self._fmt(f'{wl}.local.warm', run)}, parallel curl {self._fmt(f'{wl}.curl', run)}"
                f", verified {self._fmt(f'{wl}.curl_sha', run)} MiB/s")

    def seq_ckptfs(self, run):
        cache = fresh_dir(os.path.join(self.work, "cache", "ckptfs"))
        cold_ids = [f"{wl}.ckptfs.cold{k}" for wl in self.workloads for k in ("", "_amp", "_cpu")]
        warm_ids = [f"{wl}.ckptfs.{k}{x}" for wl in self.workloads for k in ("disk", "page")
                    for x in ("", "_amp", "_cpu")]

        def cold():
            m = self.ckptfs_mount("ckptfs", cache)
            try:
                for wl, rels in self.workloads.items():
                    self._timed_seq(run, m, wl, rels, f"{wl}.ckptfs.cold", self.nodes)
                self.rss(run, "seq_cold", m)
            finally:
                self.stop(m)

        def warm():
            m = self.ckptfs_mount("ckptfs", cache)
            try:
                # Each disk-cache read drops the page cache, so a workload's page-cache read
                # must follow its own disk-cache read directly.
                for wl, rels in self.workloads.items():
                    for kind, drop in (("disk", True), ("page", False)):
                        self._timed_seq(run, m, wl, rels, f"{wl}.ckptfs.{kind}", self.nodes,
                                        drop=drop)
                self.rss(run, "seq_warm", m)
            finally:
                self.stop(m)

        self.attempt(run, cold_ids, cold)
        self.attempt(run, warm_ids, warm)
        for wl in self.workloads:
            log(f"  {wl}: ckptfs cold {self._fmt(f'{wl}.ckptfs.cold', run)}, disk cache "
                f"{self._fmt(f'{wl}.ckptfs.disk', run)}, page cache "
                f"{self._fmt(f'{wl}.ckptfs.page', run)} MiB/s")

    def seq_nodes_warm(self, run):
        """Curl and ckptfs cold again with the nodes' files in page cache: the client is cold,
        the servers are not, so the shared local disk is out of the comparison."""
        ids = [f"{wl}.{k}" for wl in self.workloads
               for k in ("curl_nw", "ckptfs.cold_nw", "ckptfs.cold_nw_amp", "ckptfs.cold_nw_cpu")]

        def measure():
            self._warm_node_objects([r for rels in self.workloads.values() for r in rels])
            for wl, rels in self.workloads.items():
                nbytes = self.wl_bytes(wl)
                gets = netlimit.gets_for_files(self.chunk_map, rels)
                try:
                    secs = netlimit.fetch(gets, self.cfg.streams, self.read_timeout(nbytes))
                except RuntimeError as e:
                    raise MeasureFailed(str(e)) from e
                self.res.put(f"{wl}.curl_nw", run, nbytes / MiB / secs)
            m = self.ckptfs_mount("ckptfs", fresh_dir(os.path.join(self.work, "cache", "ckptfs")))
            try:
                for wl, rels in self.workloads.items():
                    self._timed_seq(run, m, wl, rels, f"{wl}.ckptfs.cold_nw", self.nodes,
                                    drop=False)
                self.rss(run, "seq_cold_nw", m)
            finally:
                self.stop(m)

        self.attempt(run, ids, measure)
        for wl in self.workloads:
            log(f"  {wl}, nodes warm: parallel curl {self._fmt(f'{wl}.curl_nw', run)}, ckptfs "
                f"cold {self._fmt(f'{wl}.ckptfs.cold_nw', run)} MiB/s")

    def _timed_seq(self, run, m, wl, rels, mid, nodes, peer=False, drop=True):
        """Reads the workload through mount m; records MiB/s as mid, the daemon's CPU seconds per
        GiB read as mid + "_cpu" and the bytes the nodes sent per byte read as mid + "_amp"."""
        clear_logs(nodes)
        job = {"mode": "seq", "files": self.paths(m.mnt, rels), "drop": drop}
        timeout = self.read_timeout(self.wl_bytes(wl))
        cpu0 = m.cpu()
        r = self.peer_read(m, job, timeout) if peer else self.worker(job, timeout, m)
        cpu1 = m.cpu()
        self.res.put(mid, run, mibps(r))
        if cpu0 is not None and cpu1 is not None:
            self.res.put(mid + "_cpu", run, (cpu1 - cpu0) / (r["bytes"] / GiB))
        settle_logs(nodes)
        _gets, sent = traffic(nodes)
        self.res.put(mid + "_amp", run, sent / r["bytes"])

    def seq_peer(self, run, peer):
        cache = fresh_dir(os.path.join(self.work, "cache", peer))
        ids = [f"{wl}.{peer}.{k}{x}" for wl in self.workloads for k in ("cold", "warm")
               for x in ("", "_amp", "_cpu")]

        def measure():
            for state in ("cold", "warm"):  # warm: remount on the same cache directory
                m = self.peer_mount(peer, cache)
                try:
                    for wl, rels in self.workloads.items():
                        self._timed_seq(run, m, wl, rels, f"{wl}.{peer}.{state}", [self.plain],
                                        peer=True)
                finally:
                    self.stop(m)

        self.attempt(run, ids, measure, peer=peer)
        for wl in self.workloads:
            log(f"  {wl}: {peer} cold {self._fmt(f'{wl}.{peer}.cold', run)}, warm "
                f"{self._fmt(f'{wl}.{peer}.warm', run)} MiB/s")

    # ---- random 4 KiB -----------------------------------------------------------------------------

    def _random_job(self, root, drop):
        return {"mode": "random", "file": os.path.join(root, BIG), "offsets": self.offsets,
                "size": 4096, "drop": drop}

    def _put_random(self, run, prefix, r, system):
        lat = sorted(r["lat"])
        self.res.put(f"{prefix}.ops", run, len(lat) / r["seconds"])
        self.res.put(f"{prefix}.p50", run, percentile(lat, 50) * 1000)
        self.res.put(f"{prefix}.p99", run, percentile(lat, 99) * 1000)
        if r["sha256"] != self.random_sha:
            self.res.problem(f"{system}: random 4 KiB reads returned wrong bytes (run {run + 1})")
            raise MeasureFailed("random reads returned wrong bytes")

    def _put_random_traffic(self, run, prefix, nodes):
        settle_logs(nodes, quiet=1.0)
        gets, sent = traffic(nodes)
        read = len(self.offsets) * 4096
        self.res.put(f"{prefix}.bpb", run, sent / read)
        self.res.put(f"{prefix}.gets_per_chunk", run, gets / self.distinct_chunks)
        self.res.put(f"{prefix}.bytes_per_chunk", run,
                     sent / (self.distinct_chunks * self.chunk_map.chunk_size))

    def random_all(self, run):
        self.res.put("rand.distinct_chunks", run, self.distinct_chunks)
        timeout = 60 + len(self.offsets) * 0.05  # Under 20 reads/s counts as hung.

        def local():
            r = self.worker(self._random_job(os.path.join(self.work, "src"), True), timeout)
            self._put_random(run, "rand.local", r, "local")

        def ckptfs_cold():
            m = self.ckptfs_mount("ckptfs", fresh_dir(os.path.join(self.work, "cache", "ckptfs")))
            try:
                clear_logs(self.nodes)
                r = self.worker(self._random_job(m.mnt, True), timeout, m)
                self._put_random(run, "rand.ckptfs", r, "ckptfs")
                self._put_random_traffic(run, "rand.ckptfs", self.nodes)
                self.rss(run, "random", m)
            finally:
                self.stop(m)

        def ckptfs_nodes_warm():
            self._warm_node_objects([BIG])
            m = self.ckptfs_mount("ckptfs", fresh_dir(os.path.join(self.work, "cache", "ckptfs")))
            try:
                r = self.worker(self._random_job(m.mnt, False), timeout, m)
                self._put_random(run, "rand.ckptfs_nw", r, "ckptfs")
            finally:
                self.stop(m)

        self.attempt(run, ["rand.local.ops", "rand.local.p50", "rand.local.p99"], local)
        rand_ids = ["rand.ckptfs." + k for k in ("ops", "p50", "p99", "bpb", "gets_per_chunk",
                                                 "bytes_per_chunk")]
        self.attempt(run, rand_ids, ckptfs_cold)
        self.attempt(run, ["rand.ckptfs_nw." + k for k in ("ops", "p50", "p99")],
                     ckptfs_nodes_warm)
        for peer in self.cfg.peers:
            self.attempt(run, [f"rand.{peer}.{k}" for k in ("ops", "p50", "p99", "bpb")],
                         lambda p=peer: self._random_peer(run, p, timeout), peer=peer)
        log(f"  random 4 KiB: local {self._fmt('rand.local.ops', run)}, ckptfs "
            f"{self._fmt('rand.ckptfs.ops', run)} (nodes warm {self._fmt('rand.ckptfs_nw.ops', run)})"
            f", " + ", ".join(f"{p} {self._fmt(f'rand.{p}.ops', run)}" for p in self.cfg.peers)
            + f" reads/s; ckptfs sent {self._fmt('rand.ckptfs.bpb', run)} B per B read")

    def _random_peer(self, run, peer, timeout):
        m = self.peer_mount(peer, fresh_dir(os.path.join(self.work, "cache", peer)))
        try:
            clear_logs([self.plain])
            r = self.peer_read(m, self._random_job(m.mnt, True), timeout)
            self._put_random(run, f"rand.{peer}", r, peer)
            self._put_random_traffic(run, f"rand.{peer}", [self.plain])
        finally:
            self.stop(m)

    def _warm_node_objects(self, rels):
        """Reads every replica of the files' chunk objects on the nodes' disks into page cache."""
        by_name = {n.name: n for n in self.nodes}
        buf = bytearray(4 * MiB)
        for rel in rels:
            for ext in self.chunk_map.extents(rel):
                for node in ext.nodes:
                    path = by_name[node].root + ext.path_on_node()
                    with open(path, "rb", buffering=0) as f:
                        while f.readinto(buf):
                            pass

    # ---- concurrent readers -------------------------------------------------------------------------

    def concurrent_ckptfs(self, run):
        rels = self.workloads["small"]
        groups = [self.paths(os.path.join(self.work, "mnt", "ckptfs"), rels[k::4])
                  for k in range(4)]

        def measure():
            m = self.ckptfs_mount("ckptfs", fresh_dir(os.path.join(self.work, "cache", "ckptfs")))
            try:
                r = self.worker({"mode": "concurrent", "groups": groups, "drop": True},
                                self.read_timeout(self.wl_bytes("small")), m)
                self.res.put("conc.ckptfs", run, mibps(r))
                self.rss(run, "concurrent", m)
            finally:
                self.stop(m)

        self.attempt(run, ["conc.ckptfs"], measure)
        log(f"  4 readers: ckptfs {self._fmt('conc.ckptfs', run)} MiB/s")

    # ---- time to first byte ---------------------------------------------------------------------------

    def ttfb_all(self, run):
        def curl():
            vals = []
            for rel in self.ttfb_cold:
                ext = self.chunk_map.extents(rel)[0]
                url = self.chunk_map_url(ext)
                sync_and_drop_caches()
                try:
                    vals.append(netlimit.first_byte_seconds(url))
                except RuntimeError as e:
                    raise MeasureFailed(str(e)) from e
            self.res.put("ttfb.curl", run, median(vals) * 1000)

        def ckptfs(nodes_warm):
            files = self.ttfb_warm if nodes_warm else self.ttfb_cold
            if nodes_warm:
                self._warm_node_objects(files)
            m = self.ckptfs_mount("ckptfs", fresh_dir(os.path.join(self.work, "cache", "ckptfs")))
            try:
                r = self.worker({"mode": "ttfb", "root": m.mnt, "files": self.paths(m.mnt, files),
                                 "drop": not nodes_warm}, 120, m)
                self.res.put("ttfb.ckptfs_nw" if nodes_warm else "ttfb.ckptfs", run,
                             median(r["ttfb"]) * 1000)
                self.rss(run, "ttfb", m)
            finally:
                self.stop(m)

        def peer(p):
            m = self.peer_mount(p, fresh_dir(os.path.join(self.work, "cache", p)))
            try:
                r = self.peer_read(m, {"mode": "ttfb", "root": m.mnt,
                                       "files": self.paths(m.mnt, self.ttfb_cold),
                                       "drop": True}, 120)
                self.res.put(f"ttfb.{p}", run, median(r["ttfb"]) * 1000)
            finally:
                self.stop(m)

        self.attempt(run, ["ttfb.curl"], curl)
        self.attempt(run, ["ttfb.ckptfs"], lambda: ckptfs(False))
        self.attempt(run, ["ttfb.ckptfs_nw"], lambda: ckptfs(True))
        for p in self.cfg.peers:
            self.attempt(run, [f"ttfb.{p}"], lambda p=p: peer(p), peer=p)
        log(f"  first byte: curl {self._fmt('ttfb.curl', run)}, ckptfs "
            f"{self._fmt('ttfb.ckptfs', run)} (nodes warm {self._fmt('ttfb.ckptfs_nw', run)}), "
            + ", ".join(f"{p} {self._fmt(f'ttfb.{p}', run)}" for p in self.cfg.peers) + " ms")

    def chunk_map_url(self, ext):
        return self.chunk_map.node_urls[ext.nodes[0]] + ext.path_on_node()

    # ---- correctness ----------------------------------------------------------------------------------

    def verify_pass(self):
        """Once: every file read cold through a fresh mount and compared with its SHA-256."""
        m = self.ckptfs_mount("ckptfs", fresh_dir(os.path.join(self.work, "cache", "ckptfs")))
        try:
            files = {os.path.join(m.mnt, rel): sha for rel, sha in self.manifest.items()}
            total = sum(os.path.getsize(os.path.join(self.work, "src", r)) for r in self.manifest)
            r = self.worker({"mode": "seq_verify", "files": files, "drop": True},
                            self.read_timeout(total), m)
        finally:
            self.stop(m)
        if r["bad"]:
            self.res.problem(f"ckptfs: {len(r['bad'])} file(s) read back with a wrong SHA-256: "
                             + ", ".join(os.path.relpath(p, m.mnt) for p in r["bad"][:5]))
        return len(files), r["bad"]

    def _fmt(self, mid, run):
        v = self.res.get(mid, run)
        return "FAILED" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.3g}")


def mibps(r):
    return r["bytes"] / MiB / r["seconds"]
