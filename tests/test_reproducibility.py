import random

import numpy as np
import pytest
import torch

from llmcourse.reproducibility import numpy_rng, set_seed, torch_generator


def test_set_seed_repeats_python_numpy_and_torch_draws():
    draws = []
    for _ in range(2):
        set_seed(123)
        draws.append((random.random(), np.random.rand(), torch.rand(3).tolist()))
    assert draws[0] == draws[1]


def test_generators_are_independent_of_global_state():
    a = torch.rand(4, generator=torch_generator(7))
    torch.manual_seed(999)
    torch.rand(10)
    b = torch.rand(4, generator=torch_generator(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert numpy_rng(5).integers(0, 1000, 5).tolist() == numpy_rng(5).integers(0, 1000, 5).tolist()


def test_different_seeds_give_different_numbers():
    assert not torch.equal(torch.rand(4, generator=torch_generator(1)), torch.rand(4, generator=torch_generator(2)))


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "1", True])
def test_seed_must_be_a_small_non_negative_int(bad):
    with pytest.raises((TypeError, ValueError)):
        set_seed(bad)
