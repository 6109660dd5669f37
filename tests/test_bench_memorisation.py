"""bench/memorisation.py: nearest-training-image distances against torch.cdist, and copies detected as copies."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors


@pytest.fixture
def mem(bench_script):
    return bench_script("memorisation")


def test_nearest_distances_equal_a_brute_force_cdist(mem):
    g = torch.Generator().manual_seed(0)
    train, x = torch.rand(300, 1, 4, 4, generator=g), torch.rand(50, 1, 4, 4, generator=g)
    index = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(mem._flat(train))
    got = mem.nearest_train_distance(index, x, chunk=7)  # chunks that do not divide n
    want = torch.cdist(x.reshape(50, -1).double(), train.reshape(300, -1).double()).min(dim=1).values
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)


def test_copies_of_training_images_sit_below_every_unseen_image(mem):
    g = torch.Generator().manual_seed(1)
    train, unseen = torch.rand(200, 1, 4, 4, generator=g), torch.rand(100, 1, 4, 4, generator=g)
    index = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(mem._flat(train))
    d_test = mem.nearest_train_distance(index, unseen)
    d_copies = mem.nearest_train_distance(index, train[:100] + 1e-4)
    test_p1 = float(np.percentile(d_test, 1))
    assert mem.summary(d_copies, test_p1)["share_below_test_p1"] == 1.0
    s = mem.summary(d_test, test_p1)
    assert s["share_below_test_p1"] == pytest.approx(0.01) and s["p1"] == pytest.approx(test_p1)
    assert s["p1"] <= s["p5"] <= s["median"]
