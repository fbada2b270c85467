"""Loader worker for the TensorFlow / safetensors stage; runs under the loader venv's python.

    python tf_worker.py make OUT_DIR TOTAL_BYTES SEED   writes OUT_DIR/tf/model.ckpt.{index,data-*}
                                                        (tf.train.Checkpoint) and
                                                        OUT_DIR/st/model.safetensors, each holding
                                                        TOTAL_BYTES of float32 tensors, and prints
                                                        their names, shapes and SHA-256s as JSON
    python tf_worker.py measure JOB.json                runs the job's items, prints JSON timings

Each measure item is timed after TensorFlow is imported and its variables exist, right after a
sync and a page-cache drop: {"id", "kind", "path", "download": [[url, size, dest, offset], ...]
or null}. With a download the clock covers the parallel-curl download of every file and then the
load from the local copy; "<id>_fetch" is the download part alone.
"""

import hashlib
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

TENSORS = 16
COLS = 4096


def names():
    return [f"layer_{i:02d}" for i in range(TENSORS)]


def make(out_dir, total_bytes, seed):
    import tensorflow as tf
    from safetensors.numpy import save_file

    rows = max(1, total_bytes // TENSORS // 4 // COLS)
    rng = np.random.default_rng(seed)
    arrays = {n: rng.standard_normal((rows, COLS), dtype=np.float32) for n in names()}
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(os.path.join(out_dir, "tf"))
    os.makedirs(os.path.join(out_dir, "st"))
    ckpt = tf.train.Checkpoint(**{n: tf.Variable(a) for n, a in arrays.items()})
    ckpt.write(os.path.join(out_dir, "tf", "model.ckpt"))
    save_file(arrays, os.path.join(out_dir, "st", "model.safetensors"))
    print(json.dumps({"shape": [rows, COLS], "names": names(),
                      "sha256": {n: hashlib.sha256(a.tobytes()).hexdigest()
                                 for n, a in arrays.items()}}))


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Loaders:
    """The four timed loads. `expect` holds the SHA-256 of every tensor, for checking results."""

    def __init__(self, shape, expect):
        import tensorflow as tf
        import safetensors.numpy
        from safetensors import safe_open
        self.tf = tf
        self.st_load = safetensors.numpy.load_file
        self.safe_open = safe_open
        self.expect = expect
        self.vars = {n: tf.Variable(tf.zeros(shape, tf.float32)) for n in names()}

    def tf_restore(self, prefix):
        self.tf.train.Checkpoint(**self.vars).read(prefix).assert_consumed()
        return lambda: {n: v.numpy() for n, v in self.vars.items()}  # Copied after the clock.

    def tf_first(self, prefix):
        reader = self.tf.train.load_checkpoint(prefix)
        return {names()[0]: reader.get_tensor(f"{names()[0]}/.ATTRIBUTES/VARIABLE_VALUE")}

    def st_load_file(self, path):
        return self.st_load(path)

    def st_first(self, path):
        with self.safe_open(path, framework="np") as f:
            return {names()[0]: f.get_tensor(names()[0])}

    def wrong_tensors(self, tensors):
        return [n for n, a in tensors.items()
                if hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() != self.expect[n]]


def measure(job_path):
    with open(job_path) as f:
        job = json.load(f)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import netlimit

    loaders = Loaders(job["shape"], job["sha256"])
    kinds = {"tf_restore": loaders.tf_restore, "tf_first": loaders.tf_first,
             "st_load": loaders.st_load_file, "st_first": loaders.st_first}
    out = {"wrong": {}}
    for item in job["items"]:
        gets = [netlimit.Get(*g) for g in item["download"] or []]
        if gets:
            shutil.rmtree(item["download_dir"], ignore_errors=True)
        drop_caches()
        t0 = time.perf_counter()
        if gets:
            netlimit.fetch(gets, job["streams"], timeout=600)
            out[item["id"] + "_fetch"] = time.perf_counter() - t0
        tensors = kinds[item["kind"]](item["path"])
        out[item["id"]] = time.perf_counter() - t0
        if callable(tensors):
            tensors = tensors()
        bad = loaders.wrong_tensors(tensors)
        if bad:
            out["wrong"][item["id"]] = bad
        del tensors
        if gets:
            shutil.rmtree(item["download_dir"], ignore_errors=True)
        print(f"{item['id']}: {out[item['id']]:.2f} s", file=sys.stderr, flush=True)
    print(json.dumps(out))


def main():
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "measure":
        measure(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]}")


if __name__ == "__main__":
    main()
