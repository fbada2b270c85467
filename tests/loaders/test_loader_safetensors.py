"""safetensors reading from a ckptfs mount: safe_open (one tensor, lazily) and load_file."""

import pytest
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import safe_open

from artifacts import describe_difference, raw_equal

ONE_TENSOR = "head.weight"  # float16, in the middle of the file.


def _as_numpy(value):
    # A "pt" tensor may be a view of safetensors' mmap of the file: copy it out of the mount.
    return value.numpy().copy() if isinstance(value, torch.Tensor) else value


@pytest.mark.parametrize("framework", ["np", "pt"])
def test_safe_open_reads_one_tensor(small_published, mount, framework):
    st = small_published.tree.safetensors
    mnt = mount(small_published)
    with safe_open(mnt.path(st.path), framework=framework) as f:
        assert set(f.keys()) == set(st.tensors), f"keys {sorted(f.keys())}"
        assert f.metadata() == {"format": "np"}
        got = _as_numpy(f.get_tensor(ONE_TENSOR))
    want = st.tensors[ONE_TENSOR]
    assert raw_equal(want, got), describe_difference(ONE_TENSOR, want, got)


@pytest.mark.parametrize("framework", ["np", "pt"])
def test_load_file_reads_every_tensor(small_published, mount, framework):
    st = small_published.tree.safetensors
    mnt = mount(small_published)
    load = safetensors.numpy.load_file if framework == "np" else safetensors.torch.load_file
    loaded = load(mnt.path(st.path))
    assert set(loaded) == set(st.tensors), f"keys {sorted(loaded)}"
    problems = [describe_difference(name, want, got)
                for name, want in sorted(st.tensors.items())
                if not raw_equal(want, got := _as_numpy(loaded[name]))]
    assert not problems, "\n".join(problems)
