"""Deterministic checkpoints for the loader tests, written by the ML libraries themselves.

Each make_* function writes one artifact under a directory with a fixed seed and returns what a
correct load must give back: the original tensors as numpy arrays (compared bit for bit) and a
model's output on a fixed input. Only the values are deterministic; file metadata such as
timestamps inside a .keras zip may differ between runs, and no test compares files with files.

Importing this module imports TensorFlow, Keras, PyTorch and safetensors: the conftest sets their
environment (log level, threads) before that happens.
"""

import dataclasses
import json
import os
import struct

import keras
import numpy as np
import safetensors.numpy
import tensorflow as tf
import torch

MiB = 1 << 20
GiB = 1 << 30

# Relative paths of the small artifacts inside the published tree.
TF_CKPT_DIR = "tf_checkpoint"
SAVED_MODEL_DIR = "saved_model"
KERAS_NATIVE = "keras/model.keras"
KERAS_H5 = "keras/model.h5"
SAFETENSORS_FILE = "safetensors/model.safetensors"
TORCH_FILE = "torch/state_dict.pt"
NPY_FILE = "numpy/array.npy"

# Relative paths of the big artifacts (each at least 1 GiB) inside the big tree.
BIG_TF_PREFIX = "tf/model"
BIG_SAFETENSORS = "model.safetensors"


def raw_equal(a, b):
    """True when two arrays have the same dtype, shape and bytes (bit-identical, NaNs included)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    raw_a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    raw_b = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    return np.array_equal(raw_a, raw_b)


def describe_difference(name, want, got):
    """A one-line explanation of why raw_equal(want, got) is false."""
    want, got = np.asarray(want), np.asarray(got)
    if want.dtype != got.dtype or want.shape != got.shape:
        return f"{name}: want {want.dtype}{list(want.shape)}, got {got.dtype}{list(got.shape)}"
    diff = np.flatnonzero(np.ascontiguousarray(want).reshape(-1).view(np.uint8) !=
                          np.ascontiguousarray(got).reshape(-1).view(np.uint8))
    return f"{name}: {diff.size} differing bytes, first at byte {diff[0]}"


# --- TensorFlow ---------------------------------------------------------------------------------


class DenseStack(tf.Module):
    """A small ReLU MLP with variables w0, b0, w1, b1, ... and an int64 `step`.

    With a seed the weights are random (normal, scaled by 1/sqrt(fan_in)); without one every
    variable starts at zero, which is how a test builds the "fresh model" to restore into.
    """

    def __init__(self, sizes, seed=None):
        super().__init__(name="dense_stack")
        self.depth = len(sizes) - 1
        rng = np.random.default_rng(seed) if seed is not None else None
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            if rng is None:
                w = np.zeros((n_in, n_out), np.float32)
                b = np.zeros((n_out,), np.float32)
            else:
                w = rng.standard_normal((n_in, n_out), dtype=np.float32) / np.float32(
                    np.sqrt(n_in))
                b = rng.standard_normal((n_out,), dtype=np.float32)
            setattr(self, f"w{i}", tf.Variable(w, name=f"w{i}"))
            setattr(self, f"b{i}", tf.Variable(b, name=f"b{i}"))
        self.step = tf.Variable(np.int64(0 if rng is None else 123456789), name="step")

    def variable_attrs(self):
        return [f"{kind}{i}" for i in range(self.depth) for kind in ("w", "b")] + ["step"]

    def values(self):
        """{attribute name: numpy value} of every variable."""
        return {attr: getattr(self, attr).numpy() for attr in self.variable_attrs()}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def __call__(self, x):
        h = x
        for i in range(self.depth):
            h = tf.matmul(h, getattr(self, f"w{i}")) + getattr(self, f"b{i}")
            if i + 1 < self.depth:
                h = tf.nn.relu(h)
        return h


def checkpoint_key(path):
    """The key tf.train.Checkpoint gives the variable at object path `path` ("model/w0")."""
    return f"{path}/.ATTRIBUTES/VARIABLE_VALUE"


@dataclasses.dataclass
class TfCheckpoint:
    prefix: str  # Relative to the tree root.
    sizes: list
    tensors: dict  # {checkpoint key: numpy value}
    values: dict  # {DenseStack attribute: numpy value}
    x: np.ndarray
    y: np.ndarray


TF_SIZES = [512, 1024, 1024, 10]  # w1 is 4 MiB: the shard holding it spans two chunks.
TF_MAX_SHARD_BYTES = 5 * MiB  # More than any one tensor (no slicing), less than all of them.


def make_tf_checkpoint(root, seed=11):
    """tf.train.Checkpoint(model=DenseStack).save() with at least two data shards.

    save() rather than write(): it also stores save_counter and the `checkpoint` state file, so
    the test can find the prefix with tf.train.latest_checkpoint as a training job would.
    """
    model = DenseStack(TF_SIZES, seed=seed)
    x = np.random.default_rng(seed + 1).standard_normal((8, TF_SIZES[0]), dtype=np.float32)
    y = model(tf.constant(x)).numpy()
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=TF_MAX_SHARD_BYTES)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    checkpoint = tf.train.Checkpoint(model=model)
    prefix = checkpoint.save(os.path.join(root, TF_CKPT_DIR, "model"), options=options)
    values = model.values()
    tensors = {checkpoint_key("model/" + attr): v for attr, v in values.items()}
    tensors[checkpoint_key("save_counter")] = checkpoint.save_counter.numpy()
    return TfCheckpoint(os.path.relpath(prefix, root), TF_SIZES, tensors, values, x, y)


@dataclasses.dataclass
class SavedModel:
    path: str
    values: dict
    x: np.ndarray
    y: np.ndarray


def make_saved_model(root, seed=12):
    """tf.saved_model.save of a DenseStack whose variables file spans two chunks."""
    model = DenseStack([256, 1536, 1024, 16], seed=seed)
    x = np.random.default_rng(seed + 1).standard_normal((8, 256), dtype=np.float32)
    y = model(tf.constant(x)).numpy()
    tf.saved_model.save(model, os.path.join(root, SAVED_MODEL_DIR))
    return SavedModel(SAVED_MODEL_DIR, model.values(), x, y)


# --- Keras --------------------------------------------------------------------------------------


@dataclasses.dataclass
class KerasModels:
    native: str
    h5: str
    weights: list
    x: np.ndarray
    y: np.ndarray


def make_keras_models(root, seed=13):
    """One Keras model (about 4.3 MiB of weights) saved as .keras and as legacy .h5."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(1024, activation="relu", name="hidden_1"),
        keras.layers.Dense(1024, activation="relu", name="hidden_2"),
        keras.layers.Dense(10, name="logits"),
    ])
    x = np.random.default_rng(seed).standard_normal((16, 64), dtype=np.float32)
    y = model.predict(x, verbose=0)
    os.makedirs(os.path.join(root, os.path.dirname(KERAS_NATIVE)), exist_ok=True)
    model.save(os.path.join(root, KERAS_NATIVE))
    model.save(os.path.join(root, KERAS_H5))
    return KerasModels(KERAS_NATIVE, KERAS_H5, [w.copy() for w in model.get_weights()], x, y)


# --- safetensors --------------------------------------------------------------------------------


@dataclasses.dataclass
class SafetensorsFile:
    path: str
    tensors: dict


def make_safetensors(root, seed=14):
    """A safetensors file of about 8 MiB with float32, float16, int64 and uint8 tensors."""
    rng = np.random.default_rng(seed)
    tensors = {
        "embed.weight": rng.standard_normal((2048, 768), dtype=np.float32),
        "layer.0.bias": rng.standard_normal((768,), dtype=np.float32),
        "head.weight": rng.standard_normal((768, 1000), dtype=np.float32).astype(np.float16),
        "position_ids": np.arange(512, dtype=np.int64).reshape(1, 512),
        "attention_mask": rng.integers(0, 2, (64, 64), dtype=np.uint8),
    }
    path = os.path.join(root, SAFETENSORS_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    safetensors.numpy.save_file(tensors, path, metadata={"format": "np"})
    return SafetensorsFile(SAFETENSORS_FILE, tensors)


def safetensors_header_bytes(path):
    """Bytes before the first tensor: the 8-byte length plus the JSON header."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
    return 8 + length


def safetensors_offsets(path):
    """{tensor name: (begin, end)} as absolute file offsets, from the file's own header."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    base = 8 + length
    return {
        name: (base + info["data_offsets"][0], base + info["data_offsets"][1])
        for name, info in header.items() if name != "__metadata__"
    }


# --- PyTorch ------------------------------------------------------------------------------------


def make_torch_module(seed):
    """An MLP with a BatchNorm (so the state_dict also holds buffers, one of them int64)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(128, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.BatchNorm1d(1024),
        torch.nn.Linear(1024, 10),
    )


@dataclasses.dataclass
class TorchStateDict:
    path: str
    state: dict  # {name: torch tensor}
    x: torch.Tensor
    y: torch.Tensor


def make_torch_state_dict(root, seed=15):
    """torch.save of a trained-looking state_dict (BatchNorm statistics updated), ~4.6 MiB."""
    model = make_torch_module(seed)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # Moves running_mean/var and num_batches_tracked off their defaults.
            model(torch.randn(32, 128, generator=gen))
    model.eval()
    x = torch.randn(8, 128, generator=gen)
    with torch.no_grad():
        y = model(x)
    path = os.path.join(root, TORCH_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(model.state_dict(), path)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return TorchStateDict(TORCH_FILE, state, x, y)


# --- numpy --------------------------------------------------------------------------------------


@dataclasses.dataclass
class NpyFile:
    path: str
    array: np.ndarray


def make_npy(root, seed=16):
    """np.save of a 3000x1000 float32 array (about 11.4 MiB, three chunks)."""
    array = np.random.default_rng(seed).standard_normal((3000, 1000), dtype=np.float32)
    path = os.path.join(root, NPY_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, array)
    return NpyFile(NPY_FILE, array)


# --- The trees ----------------------------------------------------------------------------------


@dataclasses.dataclass
class SmallTree:
    root: str
    tf_checkpoint: TfCheckpoint
    saved_model: SavedModel
    keras: KerasModels
    safetensors: SafetensorsFile
    torch: TorchStateDict
    npy: NpyFile


def make_small_tree(root):
    """Every small artifact under one directory, ready to publish."""
    os.makedirs(root, exist_ok=True)
    return SmallTree(root, make_tf_checkpoint(root), make_saved_model(root),
                     make_keras_models(root), make_safetensors(root),
                     make_torch_state_dict(root), make_npy(root))


@dataclasses.dataclass
class BigTree:
    root: str
    tf_prefix: str
    safetensors: str
    probe_name: str  # The ~1 MiB tensor the laziness tests read.
    probe: np.ndarray
    block_names: list
    total_tensor_bytes: int


BIG_BLOCKS = 16
BIG_BLOCK_SHAPE = (16384, 1024)  # float32: 64 MiB a block, 16 blocks = 1 GiB.
BIG_PROBE_SHAPE = (512, 512)  # float32: 1 MiB.


def big_tensors(seed):
    """The big checkpoint's tensors, in name order with the probe sorted into the middle."""
    rng = np.random.default_rng(seed)
    names = [f"block_{i:02d}_kernel" for i in range(BIG_BLOCKS)]
    tensors = {name: rng.random(BIG_BLOCK_SHAPE, dtype=np.float32) for name in names}
    probe_name = f"block_{BIG_BLOCKS // 2 - 1:02d}_probe"  # Between blocks 07 and 08.
    tensors[probe_name] = rng.random(BIG_PROBE_SHAPE, dtype=np.float32)
    return names, probe_name, tensors


def make_big_tree(root, seed=21):
    """A >1 GiB TF checkpoint and a >1 GiB safetensors file holding the same tensors.

    np.random.default_rng(seed).random(dtype=float32) makes 1 GiB in about a second; the
    tensors are written by tf.train.Checkpoint.write and safetensors.numpy.save_file.
    """
    names, probe_name, tensors = big_tensors(seed)
    os.makedirs(os.path.join(root, os.path.dirname(BIG_TF_PREFIX)), exist_ok=True)
    variables = {name: tf.Variable(value, name=name) for name, value in tensors.items()}
    tf.train.Checkpoint(**variables).write(os.path.join(root, BIG_TF_PREFIX))
    del variables
    safetensors.numpy.save_file(tensors, os.path.join(root, BIG_SAFETENSORS),
                                metadata={"format": "np"})
    total = sum(t.nbytes for t in tensors.values())
    return BigTree(root, BIG_TF_PREFIX, BIG_SAFETENSORS, probe_name, tensors[probe_name].copy(),
                   names, total)
