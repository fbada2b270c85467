"""Laziness, measured on the nodes: reading one ~1 MiB tensor of a >1 GiB checkpoint through the
mount transfers about that tensor, not the checkpoint.

The bytes are what nginx logged: GET requests for /chunks/... with status 200 (whole chunks) or
206 (Range GETs of blocks), summed over
$body_bytes_sent on all three nodes, from a fresh mount with a fresh cache_dir until the logs are
quiet (background readahead included). Bounds, with C the index's chunk size (4 MiB):
  tf.train.load_checkpoint(prefix).get_tensor(name)  <= tensor + the .index file + 2 C
  safe_open(path, fw).get_tensor(name)               <= tensor + the header + 2 C
"""

import os

import pytest
import tensorflow as tf
from safetensors import safe_open

from artifacts import MiB, checkpoint_key, describe_difference, raw_equal


def _chunk_owners(published, relpaths):
    """{digest: "relpath@offset"} for the chunks of the given files."""
    owners = {}
    for relpath in relpaths:
        for extent in published.extents(relpath):
            owners.setdefault(extent.digest, f"{relpath}@{extent.offset // MiB}MiB")
    return owners


def _report(what, measured, allowed, parts, gets, owners, extra=""):
    lines = [f"{what}: {measured:,} bytes in {len(gets)} chunk GETs; bound {allowed:,} = "
             + " + ".join(f"{name} {value:,}" for name, value in parts)]
    if extra:
        lines.append(extra)
    for node, digest, sent in gets:
        lines.append(f"  {node} {digest[:12]} {sent:,} bytes  {owners.get(digest, '?')}")
    return "\n".join(lines)


def _kernel_readahead_kb(mnt):
    """read_ahead_kb of the mount's backing device, as the kernel used it for this read."""
    dev = os.stat(mnt.mountpoint).st_dev
    with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
        return int(f.read())


def _measure(published, read, relpaths):
    """Runs read() on a cleared log; returns (its value, [(node, digest, bytes)], total, owners)."""
    published.clear_logs()
    value = read()
    gets = published.settled_chunk_gets()
    return value, gets, sum(sent for _, _, sent in gets), _chunk_owners(published, relpaths)


def test_tf_get_tensor_of_1gib_checkpoint_fetches_only_that_tensor(big_published, mount, note):
    tree = big_published.tree
    mnt = mount(big_published)
    prefix_rel = tree.tf_prefix
    ckpt_dir = os.path.dirname(prefix_rel)
    relpaths = [os.path.join(ckpt_dir, f) for f in sorted(os.listdir(mnt.path(ckpt_dir)))]
    key = checkpoint_key(tree.probe_name)

    def read():
        reader = tf.train.load_checkpoint(mnt.path(prefix_rel))
        try:
            return reader.get_tensor(key)
        finally:
            del reader

    readahead_kb = _kernel_readahead_kb(mnt)
    value, gets, measured, owners = _measure(big_published, read, relpaths)
    readahead_kb = f"{readahead_kb} before the read, {_kernel_readahead_kb(mnt)} after"

    assert raw_equal(tree.probe, value), describe_difference(key, tree.probe, value)
    chunk = big_published.chunk_size
    parts = [("tensor", tree.probe.nbytes), (".index", big_published.tf_index_bytes),
             ("2 chunks", 2 * chunk)]
    allowed = sum(v for _, v in parts)
    message = _report(f"TF get_tensor({key}) of a {big_published.tf_data_bytes:,}-byte checkpoint",
                      measured, allowed, parts, gets, owners,
                      f"  kernel read_ahead_kb of the mount: {readahead_kb}")
    note(f"{message.splitlines()[0]} (read_ahead_kb {readahead_kb})")
    assert big_published.tf_data_bytes >= 1 << 30, message
    assert measured <= allowed, message


# An mmap page fault makes the kernel read around the faulting page; those reads are isolated, so
# the mount fetches only the blocks they touch (per-block digests), not the whole neighbouring
# chunks.
@pytest.mark.parametrize("framework", ["np", "pt"])
def test_safe_open_get_tensor_of_1gib_file_fetches_only_that_tensor(big_published, mount, note,
                                                                     framework):
    tree = big_published.tree
    mnt = mount(big_published)
    name = tree.probe_name

    def read():
        with safe_open(mnt.path(tree.safetensors), framework=framework) as f:
            value = f.get_tensor(name)
        # A "pt" tensor is a view of safetensors' mmap of the file: copy it here, so its pages are
        # read inside the measurement, and drop the view, so the file is no longer mapped.
        return value.numpy().copy() if framework == "pt" else value

    readahead_kb = _kernel_readahead_kb(mnt)
    value, gets, measured, owners = _measure(big_published, read, [tree.safetensors])
    readahead_kb = f"{readahead_kb} before the read, {_kernel_readahead_kb(mnt)} after"

    assert raw_equal(tree.probe, value), describe_difference(name, tree.probe, value)
    chunk = big_published.chunk_size
    parts = [("tensor", tree.probe.nbytes), ("header", big_published.st_header_bytes),
             ("2 chunks", 2 * chunk)]
    allowed = sum(v for _, v in parts)
    begin, end = big_published.st_offsets[name]
    where = (f"  tensor at bytes {begin:,}..{end:,} (chunks {begin // chunk}..{(end - 1) // chunk})"
             f" of {big_published.st_bytes:,}; kernel read_ahead_kb of the mount: {readahead_kb}")
    message = _report(f"safe_open({framework}).get_tensor({name}) of a "
                      f"{big_published.st_bytes:,}-byte file", measured, allowed, parts, gets,
                      owners, where)
    note(f"{message.splitlines()[0]} (read_ahead_kb {readahead_kb})")
    assert big_published.st_bytes >= 1 << 30, message
    assert measured <= allowed, message
