"""PyTorch reading from a ckptfs mount: torch.load of a state_dict, then a forward pass."""

import inspect

import pytest
import torch

from artifacts import make_torch_module


def _load_variants():
    """Plain torch.load always; with mmap=True too where this torch has it (2.1+, not 1.13)."""
    variants = [("plain", {})]
    if "mmap" in inspect.signature(torch.load).parameters:
        variants.append(("mmap", {"mmap": True}))
    return variants


@pytest.fixture(scope="module", autouse=True)
def _record_mmap_support(note):
    names = [name for name, _ in _load_variants()]
    if "mmap" not in names:
        note(f"torch {torch.__version__}: torch.load has no mmap= parameter; "
             "the state_dict test ran the plain torch.load only")


def _assert_same_state(want, got):
    assert list(got) == list(want), f"keys {list(got)}"
    problems = []
    for name, tensor in want.items():
        if got[name].dtype != tensor.dtype or not torch.equal(got[name], tensor):
            problems.append(f"{name}: {got[name].dtype}{list(got[name].shape)} differs")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kwargs", [pytest.param(kw, id=name) for name, kw in _load_variants()])
def test_torch_load_state_dict_and_forward(small_published, mount, kwargs):
    saved = small_published.tree.torch
    mnt = mount(small_published)

    state = torch.load(mnt.path(saved.path), map_location="cpu", weights_only=True, **kwargs)

    _assert_same_state(saved.state, state)
    fresh = make_torch_module(seed=999)
    fresh.eval()
    with torch.no_grad():
        assert not torch.equal(fresh(saved.x), saved.y), "an untrained model gives the output"
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        y = fresh(saved.x)
    assert torch.equal(y, saved.y), f"forward pass differs by up to {(y - saved.y).abs().max()}"
