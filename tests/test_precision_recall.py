"""Improved precision and recall (Kynkaanniemi et al. 2019) on small synthetic feature matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from balanced_vae.precision_recall import improved_precision_recall, knn_radii, manifold_coverage


def _points(n=200, f=8, seed=0, shift=0.0):
    return np.random.default_rng(seed).normal(size=(n, f)) + shift


def test_identical_sets_have_precision_and_recall_one():
    x = _points()
    out = improved_precision_recall(x, x.copy(), k=3)
    assert out == {"precision": 1.0, "recall": 1.0, "k": 3, "n_real": 200, "n_generated": 200}


def test_disjoint_far_apart_sets_have_precision_and_recall_zero():
    out = improved_precision_recall(_points(), _points(seed=1, shift=100.0), k=3)
    assert out["precision"] == 0.0 and out["recall"] == 0.0


def test_hand_checked_one_dimensional_case():
    # real: 0, 1, 2, 3 -> k=1 radii 1, 1, 1, 1: the real manifold is [-1, 4]
    # generated: 0.5, 3.5, 10 -> radii 3, 3, 6.5: the generated manifold is [-2.5, 16.5]
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    gen = np.array([[0.5], [3.5], [10.0]])
    np.testing.assert_allclose(knn_radii(real, k=1), [1, 1, 1, 1])
    np.testing.assert_allclose(knn_radii(gen, k=1), [3, 3, 6.5])
    out = improved_precision_recall(real, gen, k=1)
    assert out["precision"] == pytest.approx(2 / 3)  # 10 lies outside every real ball
    assert out["recall"] == 1.0  # every real point lies in a generated ball


def test_mode_collapse_keeps_precision_and_loses_recall():
    real = _points(n=400, f=4, seed=0)
    collapsed = real[real[:, 0] > 1.0] + 0.01 * _points(n=int((real[:, 0] > 1.0).sum()), f=4, seed=3)
    out = improved_precision_recall(real, collapsed, k=3)
    assert out["precision"] > 0.9
    assert out["recall"] < 0.4


def test_coverage_by_chunk_matches_unchunked_and_torch_inputs_work():
    real, gen = _points(seed=0), _points(seed=1, shift=0.5)
    radii = knn_radii(real, 3)
    np.testing.assert_array_equal(
        manifold_coverage(real, radii, gen, chunk=7), manifold_coverage(real, radii, gen, chunk=10_000)
    )
    a = improved_precision_recall(torch.as_tensor(real, dtype=torch.float32), torch.as_tensor(gen), k=3)
    b = improved_precision_recall(real.astype(np.float32), gen, k=3)
    assert a == b


def test_errors_name_the_shapes_and_the_fix():
    with pytest.raises(ValueError, match=r"same feature extractor"):
        improved_precision_recall(_points(f=4), _points(f=5))
    with pytest.raises(ValueError, match=r"k \+ 1"):
        improved_precision_recall(_points(n=3), _points(n=3), k=3)
    with pytest.raises(ValueError, match=r"NaN"):
        improved_precision_recall(np.full((4, 2), np.nan), _points(n=4, f=2))


def test_evaluate_pr_compares_prior_and_gmm_on_shared_real_features(stand_in_inception, tmp_path):
    """``evaluate --metrics pr`` plumbing with a cheap stand-in for Inception (no network in tests)."""
    from balanced_vae.config import TrainConfig
    from balanced_vae.data import load_dataset
    from balanced_vae.evaluate import evaluate_run
    from balanced_vae.train import train

    calls = stand_in_inception(pool=2, path=tmp_path)  # (N, 16) for 8x8
    data = load_dataset("digits")
    run = train(
        TrainConfig(dataset="digits", stages=1, epochs=1, min_epochs=1, n_train=300, seed=0),
        tmp_path / "run",
        data=data,
        progress=False,
    )
    doc = evaluate_run(run, metrics="pr", sampler="gmm", components=3, n_pr=60, data=data, progress=False)
    entry = doc["metrics"]["pr"]
    assert calls == [60, 60, 60]  # real once, then prior and GMM
    assert set(entry["values"]) == {"prior", "gmm_K3"}
    for v in entry["values"].values():
        assert 0.0 <= v["precision"] <= 1.0 and 0.0 <= v["recall"] <= 1.0
        assert v["k"] == 3 and v["n_real"] == 60 and v["n_generated"] == 60
    p = entry["protocol"]
    assert p["k"] == 3 and p["real"]["n"] == 60 and p["gmm"]["K"] == 3 and p["gmm"]["fit_on"] == "mean"
