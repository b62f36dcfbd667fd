"""flowfast.data.digits and flowfast.digit_quality.DigitScorer: the data's shape and scale, and
that the score separates real digits, noise, blends, mode collapse and memorised copies."""

from __future__ import annotations

import math
import sys

import pytest
import torch

pytest.importorskip("sklearn")

from flowfast import data  # noqa: E402
from flowfast.digit_quality import DigitScorer  # noqa: E402


@pytest.fixture(scope="session")
def scorer_and_rng_kept():
    """One trained classifier for the session (a few seconds); also whether training left the
    global RNG alone."""
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    scorer = DigitScorer()
    return scorer, torch.equal(before, torch.random.get_rng_state())


@pytest.fixture
def scorer(scorer_and_rng_kept):
    return scorer_and_rng_kept[0]


def test_digits_shape_scale_and_labels():
    x, y = data.digits(), data.digits_labels()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert torch.equal(y.bincount(), torch.bincount(y, minlength=10)) and y.bincount().min() > 170
    assert data.digits(dtype=torch.float64).dtype == torch.float64
    torch.testing.assert_close(data.digits(dtype=torch.float64).float(), x)
    x[0] = 5.0
    y[0] = 9
    assert float(data.digits().max()) == 1.0 and int(data.digits_labels()[0]) == 0  # callers get copies
    with pytest.raises(TypeError, match="floating"):
        data.digits(dtype=torch.int64)


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    data._load_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    try:
        with pytest.raises(ImportError, match="pip install scikit-learn"):
            data.digits()
    finally:
        data._load_digits.cache_clear()


def test_classifier_is_accurate_and_leaves_rng_alone(scorer_and_rng_kept):
    scorer, rng_kept = scorer_and_rng_kept
    assert scorer.heldout_accuracy > 0.95
    assert rng_kept
    assert len(scorer.heldout_index) == 360


def test_real_heldout_digits_score_high(scorer):
    real = data.digits()[scorer.heldout_index]
    r = scorer.score(real)
    assert r["confidence"] > 0.9 and r["confident_fraction"] > 0.8
    assert r["confidence"] == pytest.approx(scorer.real_confidence)
    assert r["class_entropy"] == pytest.approx(math.log(10), abs=0.05)
    assert sum(r["class_histogram"]) == pytest.approx(1.0) and len(r["class_histogram"]) == 10
    assert r["clamped_fraction"] == 0.0


def test_uniform_noise_scores_low(scorer):
    noise = torch.rand(500, 1, 8, 8) * 2 - 1
    r = scorer.score(noise)
    assert r["confidence"] < 0.3 and r["confident_fraction"] < 0.02
    assert r["nn_ratio"] > 2 and r["far_fraction"] > 0.95 and r["close_fraction"] == 0.0


def test_blends_and_the_mean_image_score_low(scorer):
    x = data.digits()
    g = torch.Generator().manual_seed(0)
    a, b = x[torch.randperm(1797, generator=g)[:400]], x[torch.randperm(1797, generator=g)[:400]]
    assert scorer.score(0.5 * a + 0.5 * b)["confidence"] < 0.75
    collapsed = scorer.score(x.mean(0, keepdim=True).expand(200, 1, 8, 8))
    assert collapsed["confidence"] < 0.5 and collapsed["class_entropy"] == pytest.approx(0.0, abs=1e-12)


def test_mode_collapse_shows_in_class_entropy(scorer):
    x, y = data.digits(), data.digits_labels()
    r = scorer.score(x[y == 3])
    assert r["confidence"] > 0.9 and r["class_entropy"] < 0.2
    five = scorer.score(x[y < 5])
    assert five["class_entropy"] == pytest.approx(math.log(5), abs=0.1)


def test_memorised_copy_has_zero_nn_distance(scorer):
    copy = scorer.score(data.digits()[:500])
    assert copy["nn_distance"] < 1e-6 and copy["nn_ratio"] < 1e-6 and copy["close_fraction"] == 1.0
    assert 1.5 < scorer.real_nn_distance < 2.5  # the leave-one-out baseline: ~2.05 in pixel units
    jittered = scorer.score(data.digits()[:500] + 0.01 * torch.randn(500, 1, 8, 8))
    assert jittered["nn_ratio"] < 0.1  # near-copies too


def test_custom_training_set_baseline(scorer):
    """With a generator trained on the classifier's 80% split, held-out real digits score like
    fresh data: NN ratio about 1, close and far fractions about 5%."""
    x = data.digits()
    mask = torch.ones(1797, dtype=torch.bool)
    mask[scorer.heldout_index] = False
    split = DigitScorer(train=x[mask])
    r = split.score(x[scorer.heldout_index])
    assert 0.85 < r["nn_ratio"] < 1.15
    assert r["close_fraction"] < 0.15 and r["far_fraction"] < 0.15
    assert split.heldout_accuracy == scorer.heldout_accuracy  # the cached classifier


def test_inputs_clamped_or_rejected(scorer):
    x = data.digits()[:50]
    r = scorer.score(x * 1.5)
    assert 0 < r["clamped_fraction"] < 1
    assert scorer.score(x.reshape(50, 64))["confidence"] == pytest.approx(scorer.score(x)["confidence"])
    assert scorer.score(x.double())["n"] == 50
    assert scorer.classify(x).shape == (50, 10)
    with pytest.raises(ValueError, match=r"\(n, 1, 8, 8\)"):
        scorer.score(torch.rand(5, 1, 28, 28))
    with pytest.raises(ValueError, match=r"\(n, 1, 8, 8\)"):
        scorer.score(torch.rand(0, 1, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        scorer.score(torch.full((2, 1, 8, 8), float("nan")))
    with pytest.raises(TypeError, match="floating"):
        scorer.score(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
    assert scorer.score(x.numpy())["confidence"] == pytest.approx(scorer.score(x)["confidence"])
    with pytest.raises(TypeError, match="torch.Tensor, numpy.ndarray, cupy.ndarray, jax.Array"):
        scorer.score(x.tolist())
    with pytest.raises(ValueError, match="at least 2"):
        DigitScorer(train=x[:1])
