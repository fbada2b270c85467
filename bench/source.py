"""The raw workloads' source tree: one big file and many 4 MiB files of seeded random bytes.

Random bytes so that no chunk dedups and no layer can compress. The tree and its SHA-256 manifest
are kept next to each other (`src/` and `src.json`); a later `--reuse` run with the same spec
takes them as they are.
"""

import hashlib
import json
import os
import random
import shutil

from common import MiB, log

BIG = "big/model.bin"


def small_name(i):
    return f"small/shard-{i:03d}.bin"


def spec_of(cfg):
    return {"big_bytes": cfg.big_bytes, "small_count": cfg.small_count,
            "small_bytes": cfg.small_bytes, "seed": cfg.seed}


def write_random(path, size, rng):
    """Writes `size` bytes from `rng` (a random.Random) to `path`; returns their SHA-256."""
    h = hashlib.sha256()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(left, 4 * MiB))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def make_source(src_dir, manifest_path, cfg, reuse):
    """Creates (or, with reuse and an identical spec, keeps) the tree.

    Returns ({rel: sha256}, reused).
    """
    spec = spec_of(cfg)
    if reuse and os.path.exists(manifest_path):
        with open(manifest_path) as f:
            saved = json.load(f)
        if saved.get("spec") == spec and all(
                os.path.exists(os.path.join(src_dir, rel)) for rel in saved["files"]):
            log("source: reusing the existing tree")
            return saved["files"], True
    shutil.rmtree(src_dir, ignore_errors=True)
    rng = random.Random(cfg.seed)
    files = {}
    log(f"source: writing {cfg.big_bytes / MiB:.0f} MiB + {cfg.small_count} x "
        f"{cfg.small_bytes / MiB:.0f} MiB of random bytes")
    files[BIG] = write_random(os.path.join(src_dir, BIG), cfg.big_bytes, rng)
    for i in range(cfg.small_count):
        files[small_name(i)] = write_random(os.path.join(src_dir, small_name(i)),
                                             cfg.small_bytes, rng)
    with open(manifest_path, "w") as f:
        json.dump({"spec": spec, "files": files}, f)
    return files, False
