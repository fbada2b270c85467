"""TensorFlow reading from a ckptfs mount: a sharded tf.train.Checkpoint and a SavedModel."""

import os
import re

import numpy as np
import tensorflow as tf

from artifacts import DenseStack, describe_difference, raw_equal

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _data_shards(prefix):
    base = os.path.basename(prefix)
    names = sorted(os.listdir(os.path.dirname(prefix)))
    return names, [n for n in names if re.fullmatch(re.escape(base) + r"\.data-\d{5}-of-\d{5}", n)]


def test_tf_checkpoint_on_mount_has_several_data_shards(small_published, mount):
    ckpt = small_published.tree.tf_checkpoint
    mnt = mount(small_published)
    names, shards = _data_shards(mnt.path(ckpt.prefix))
    assert len(shards) >= 2, f"want at least 2 data shards, the mount lists {names}"
    total = int(shards[0].rsplit("-of-", 1)[1])
    assert len(shards) == total, f"{names}: shard files do not match their -of-{total:05d}"
    sizes = [os.path.getsize(os.path.join(os.path.dirname(mnt.path(ckpt.prefix)), s))
             for s in shards]
    assert max(sizes) > small_published.chunk_size, (
        f"no shard spans two chunks ({sizes}); the test would not cross a chunk boundary")


def test_tf_load_checkpoint_get_tensor_is_bit_identical(small_published, mount):
    ckpt = small_published.tree.tf_checkpoint
    mnt = mount(small_published)
    reader = tf.train.load_checkpoint(mnt.path(ckpt.prefix))
    keys = set(reader.get_variable_to_shape_map()) - {OBJECT_GRAPH_KEY}
    assert keys == set(ckpt.tensors), f"checkpoint keys {sorted(keys)}"
    problems = []
    for key, want in sorted(ckpt.tensors.items()):
        got = reader.get_tensor(key)
        if not raw_equal(want, got):
            problems.append(describe_difference(key, want, got))
    assert not problems, "\n".join(problems)


def test_tf_checkpoint_restore_into_fresh_model(small_published, mount):
    ckpt = small_published.tree.tf_checkpoint
    mnt = mount(small_published)
    fresh = DenseStack(ckpt.sizes)  # All zeros.
    x = tf.constant(ckpt.x)
    assert not raw_equal(fresh(x).numpy(), ckpt.y), "a zero model already gives the output"

    prefix = tf.train.latest_checkpoint(os.path.dirname(mnt.path(ckpt.prefix)))
    assert prefix == mnt.path(ckpt.prefix), f"latest_checkpoint gives {prefix}"
    status = tf.train.Checkpoint(model=fresh).restore(prefix)
    status.assert_consumed()

    problems = [describe_difference(attr, want, got)
                for attr, want in ckpt.values.items()
                if not raw_equal(want, got := getattr(fresh, attr).numpy())]
    assert not problems, "\n".join(problems)
    y = fresh(x).numpy()
    assert raw_equal(y, ckpt.y), describe_difference("forward pass", ckpt.y, y)


def test_saved_model_load_and_call(small_published, mount):
    sm = small_published.tree.saved_model
    mnt = mount(small_published)
    path = mnt.path(sm.path)
    assert os.path.isfile(os.path.join(path, "saved_model.pb")), os.listdir(path)

    loaded = tf.saved_model.load(path)

    problems = [describe_difference(attr, want, got)
                for attr, want in sm.values.items()
                if not raw_equal(want, got := getattr(loaded, attr).numpy())]
    assert not problems, "\n".join(problems)
    y = loaded(tf.constant(sm.x)).numpy()
    assert raw_equal(y, sm.y), describe_difference("SavedModel call", sm.y, y)
    assert np.isfinite(y).all() and np.abs(y).max() > 0, "degenerate reference output"
