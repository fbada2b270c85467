"""numpy reading from a ckptfs mount: np.load(mmap_mode='r') of a .npy spanning three chunks."""

import numpy as np

from artifacts import describe_difference, raw_equal


def test_npy_memory_mapped_from_mount(small_published, mount):
    npy = small_published.tree.npy
    mnt = mount(small_published)

    array = np.load(mnt.path(npy.path), mmap_mode="r")

    assert isinstance(array, np.memmap), type(array)
    assert array.filename == mnt.path(npy.path), array.filename
    # A slice in the middle first (a page fault far from the start), then everything.
    middle = slice(1500, 1510)
    assert raw_equal(npy.array[middle], array[middle]), "rows 1500..1509 differ"
    assert raw_equal(npy.array, np.asarray(array)), describe_difference(
        "array", npy.array, np.asarray(array))
