"""The TensorFlow / safetensors stage: real loaders reading a >= 1 GiB checkpoint from a cold
ckptfs mount, against downloading everything with parallel curl and loading from local disk.

It needs the loader venv (<repo>/.venv-loaders, made by scripts/install-loader-deps.sh) with
tensorflow-cpu and safetensors; without it the stage is reported as "not run: <reason>".
"""

import json
import os

import netlimit
from ckindex import ChunkMap
from common import MeasureFailed, MiB, log, run, run_bounded
from mounts import CkptfsMount, fresh_dir
from servers import publish_argv

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "tf_worker.py")
TF_FILES = ["tf/model.ckpt.index", "tf/model.ckpt.data-00000-of-00001"]
ST_FILE = "st/model.safetensors"
# (metric prefix, worker kind, file the loader opens, files downloaded by the baseline)
ITEMS = [
    ("tf.restore", "tf_restore", "tf/model.ckpt", TF_FILES),
    ("tf.first", "tf_first", "tf/model.ckpt", TF_FILES),
    ("st.load", "st_load", ST_FILE, [ST_FILE]),
    ("st.first", "st_first", ST_FILE, [ST_FILE]),
]


def loader_python(cfg):
    """The loader venv's python, or raises MeasureFailed with the reason it cannot be used."""
    py = os.path.join(cfg.loaders_venv, "bin", "python")
    if not os.path.exists(py):
        raise MeasureFailed(f"loader venv {cfg.loaders_venv} not found "
                            "(scripts/install-loader-deps.sh creates it)")
    cp = run([py, "-c", "import tensorflow, safetensors, numpy; print(tensorflow.__version__, "
              "safetensors.__version__, numpy.__version__)"], timeout=300, check=False,
             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if cp.returncode != 0:
        raise MeasureFailed(f"loader venv cannot import tensorflow/safetensors: "
                            f"{cp.stderr.strip().splitlines()[-1:]}")
    return py, cp.stdout.split()


class TfStage:
    def __init__(self, cfg, res, cleanup, nodes):
        self.cfg = cfg
        self.res = res
        self.cleanup = cleanup
        self.nodes = nodes
        self.work = cfg.workdir
        self.src = os.path.join(self.work, "tfsrc")
        self.index = os.path.join(self.work, "tf.ckptfs")
        self.python = None
        self.meta = None
        self.chunk_map = None

    def prepare(self):
        """Checks the venv, writes the checkpoint and safetensors file, publishes them."""
        self.python, versions = loader_python(self.cfg)
        self.res.meta["loader_versions"] = dict(zip(("tensorflow", "safetensors", "numpy"),
                                                    versions))
        meta_path = os.path.join(self.work, "tf.json")
        spec = {"bytes": self.cfg.tf_bytes, "seed": self.cfg.seed}
        if self.cfg.reuse and os.path.exists(meta_path) and os.path.exists(self.index):
            with open(meta_path) as f:
                saved = json.load(f)
            if saved.get("spec") == spec:
                self.meta = saved
        if self.meta is None:
            log(f"tf: writing a {self.cfg.tf_bytes / MiB:.0f} MiB TensorFlow checkpoint and "
                "safetensors file")
            cp = run([self.python, WORKER, "make", self.src, str(self.cfg.tf_bytes),
                      str(self.cfg.seed)], timeout=900)
            self.meta = dict(json.loads(cp.stdout.strip().splitlines()[-1]), spec=spec)
            self.publish()
            with open(meta_path, "w") as f:
                json.dump(self.meta, f)
        self.chunk_map = ChunkMap(self.index)
        self.chunk_map.node_urls = {n.name: n.url for n in self.nodes}
        sizes = {rel: os.path.getsize(os.path.join(self.src, rel)) for rel in TF_FILES + [ST_FILE]}
        self.res.meta["tf_files"] = sizes
        log("tf: " + ", ".join(f"{rel} {n / MiB:.0f} MiB" for rel, n in sizes.items()))

    def publish(self):
        run(publish_argv(self.cfg.binary, self.src, self.index, self.nodes, self.cfg.chunk_size),
            timeout=1800)

    def run_once(self, run_no):
        mounts = {}
        try:
            for prefix, *_ in ITEMS:
                name = "tf-" + prefix.replace(".", "-")
                m = CkptfsMount(self.cfg.binary, self.index,
                                os.path.join(self.work, "mnt", name),
                                fresh_dir(os.path.join(self.work, "cache", name)),
                                [f"node.{n.name}={n.url}" for n in self.nodes])
                self.cleanup.push(f"unmount {m.mnt}", m.stop)
                mounts[prefix] = m
                m.start()
            out = self._run_worker(run_no, mounts)
            for prefix, m in mounts.items():
                hwm = m.vm_hwm()
                if hwm is not None:
                    self.res.put(f"rss.{prefix.replace('.', '_')}", run_no, hwm / MiB)
        finally:
            for m in mounts.values():
                self.cleanup.discard(m.stop)
                m.stop()
        for key, value in out.items():
            if key != "wrong":
                self.res.put(key, run_no, value)
        for item, tensors in out["wrong"].items():
            self.res.problem(f"{item}: tensors with wrong contents {tensors} (run {run_no + 1})")
        log("  tf: " + ", ".join(f"{k} {v:.2f} s" for k, v in out.items() if k != "wrong"))

    def _run_worker(self, run_no, mounts):
        items = []
        dl_dir = os.path.join(self.work, "download")
        for prefix, kind, path, files in ITEMS:
            items.append({"id": f"{prefix}.ckptfs", "kind": kind,
                          "path": os.path.join(mounts[prefix].mnt, path), "download": None})
            gets = netlimit.gets_for_files(self.chunk_map, files, dest_dir=dl_dir)
            items.append({"id": f"{prefix}.download", "kind": kind,
                          "path": os.path.join(dl_dir, path), "download_dir": dl_dir,
                          "download": [[g.url, g.size, g.dest, g.offset] for g in gets]})
        job = {"shape": self.meta["shape"], "sha256": self.meta["sha256"],
               "streams": self.cfg.streams, "items": items}
        job_path = os.path.join(self.work, "jobs", f"tf-{run_no}.json")
        os.makedirs(os.path.dirname(job_path), exist_ok=True)
        with open(job_path, "w") as f:
            json.dump(job, f)
        os.sync()

        def abort_all():
            for m in mounts.values():
                m.abort()

        out, err = run_bounded([self.python, WORKER, "measure", job_path], self.cfg.tf_timeout,
                               abort_all, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError) as e:
            raise MeasureFailed(f"tf worker printed no result: {err.strip()[-300:]}") from e
