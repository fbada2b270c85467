"""A generated checkpoint-like source tree with deterministic pseudo-random content.

The tree covers what publish and mount must carry over: nested directories, an empty file, an
empty directory, relative symlinks, a 300 MiB file, a file whose size is not a multiple of the
chunk size, two identical files (dedup), modes 0600/0750/0755 and mtimes with nanoseconds.
"""

import hashlib
import os
import random

MiB = 1 << 20
BIG = "big.bin"
BIG_SIZE = 300 * MiB
ODD = "odd.bin"
ODD_SIZE = 5 * MiB + 123
DUP_A = "dup_a.bin"
DUP_B = "nested/dup_b.bin"
DUP_SIZE = 6 * MiB + 77

# relpath → (size, mode, seed). Files with the same seed and size have the same bytes.
FILES = {
    "model.ckpt.index": (1234, 0o644, 1),
    BIG: (BIG_SIZE, 0o644, 2),
    ODD: (ODD_SIZE, 0o644, 3),
    DUP_A: (DUP_SIZE, 0o644, 4),
    DUP_B: (DUP_SIZE, 0o644, 4),
    "empty.txt": (0, 0o644, 5),
    "private.key": (512, 0o600, 6),
    "run.sh": (300, 0o755, 7),
    "nested/a/notes.txt": (4096 + 1, 0o644, 8),
    "nested/a/b/deep.txt": (10000, 0o644, 9),
}
DIRS = {  # relpath → mode; "" is the root.
    "": 0o755,
    "empty_dir": 0o755,
    "nested": 0o755,
    "nested/a": 0o750,
    "nested/a/b": 0o755,
}
SYMLINKS = {  # relpath → relative target
    "latest": "nested/a/b/deep.txt",
    "nested/to_odd": "../odd.bin",
}
MTIME_BASE_NS = 1_700_000_000_123_456_789


def _random_blocks(seed, size, block=4 * MiB):
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(block, left)
        yield rng.randbytes(n)
        left -= n


class SourceTree:
    """The generated tree and the sha256 of each regular file."""

    def __init__(self, root):
        self.root = root
        self.sha256 = {}

    def path(self, relpath):
        return os.path.join(self.root, relpath)

    def read(self, relpath, offset, length):
        with open(self.path(relpath), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def files(self):
        return sorted(FILES)

    def single_chunk_files(self, chunk_size):
        return sorted(p for p, (size, _, _) in FILES.items() if 0 < size <= chunk_size)


def build(root):
    """Writes the tree under `root` (which must not exist) and returns a SourceTree."""
    tree = SourceTree(root)
    for rel in sorted(DIRS):
        os.makedirs(tree.path(rel), exist_ok=True)
    for rel, (size, mode, seed) in sorted(FILES.items()):
        digest = hashlib.sha256()
        with open(tree.path(rel), "wb") as f:
            for block in _random_blocks(seed, size):
                f.write(block)
                digest.update(block)
        os.chmod(tree.path(rel), mode)
        tree.sha256[rel] = digest.hexdigest()
    for rel, target in sorted(SYMLINKS.items()):
        os.symlink(target, tree.path(rel))
    _set_times(tree)
    for rel, mode in DIRS.items():
        os.chmod(tree.path(rel), mode)
    return tree


def _set_times(tree):
    # Leaves first, then directories deepest first, so no later step touches an mtime again.
    entries = sorted(FILES) + sorted(SYMLINKS)
    dirs = sorted(DIRS, key=lambda d: -d.count("/") - (1 if d else 0))
    for i, rel in enumerate(entries + dirs):
        ns = MTIME_BASE_NS + i * 1_000_003_007
        os.utime(tree.path(rel), ns=(ns, ns), follow_symlinks=False)


def sha256_file(path, block=4 * MiB):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            if not data:
                return digest.hexdigest()
            digest.update(data)


def write_file(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def random_bytes(seed, size):
    return b"".join(_random_blocks(seed, size))


def write_two_files(root, seed):
    """root/model.bin (5 MiB) and root/sub/opt.bin (3 MiB + 7) of random_bytes(seed, ...) and
    random_bytes(seed + 1, ...): 9 chunks of 1 MiB. Returns root."""
    write_file(os.path.join(root, "model.bin"), random_bytes(seed, 5 * MiB))
    write_file(os.path.join(root, "sub", "opt.bin"), random_bytes(seed + 1, 3 * MiB + 7))
    return root
