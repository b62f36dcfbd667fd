"""Regression tests of issue 24's "clear errors" findings: each names what the caller passed."""

from __future__ import annotations

import pytest
import torch

import flowfast
from flowfast.couplings import pair


def test_size_one_feature_dim_with_odd_strides_is_accepted():
    x = torch.rand(1, 5, generator=torch.Generator().manual_seed(0)).T  # (5, 1), strides (1, 5)
    y = torch.rand(4, 1, generator=torch.Generator().manual_seed(1))
    res = flowfast.sinkhorn(x=x, y=y, eps=0.1)
    ref = flowfast.sinkhorn(x=x.contiguous(), y=y, eps=0.1)
    torch.testing.assert_close(res.f, ref.f, rtol=0, atol=0)
    torch.testing.assert_close(res.cost, ref.cost, rtol=0, atol=0)


@pytest.mark.parametrize("fn", ["ot_pairing", "pair"])
def test_overflowing_distances_of_finite_inputs_say_so(fn):
    x0, x1 = torch.full((4, 2), 1e20), torch.zeros(4, 2)
    call = flowfast.ot_pairing if fn == "ot_pairing" else pair
    with pytest.raises(ValueError, match="squared distances between x0 and x1 overflow float32") as info:
        call(x0, x1)
    assert "NaN" not in str(info.value)


def test_nan_inputs_still_name_the_batch():
    x0, x1 = torch.zeros(4, 2), torch.zeros(4, 2)
    x1[2, 1] = float("nan")
    with pytest.raises(ValueError, match="x1 contains 1 NaN/Inf"):
        flowfast.ot_pairing(x0, x1)


def test_exact_pairing_of_unequal_sizes_says_why():
    with pytest.raises(ValueError, match="method='exact' pairs batches of equal size.*len\\(x0\\)=3, len\\(x1\\)=2"):
        pair(torch.randn(3, 2), torch.randn(2, 2), replace=True)
    _, _, (i, j) = pair(torch.randn(3, 2), torch.randn(2, 2), method="sinkhorn", replace=True,
                        generator=torch.Generator().manual_seed(0))
    assert i.shape == (3,) and bool((j < 2).all())


def test_unbalanced_plan_without_mass_says_why():
    g = torch.Generator().manual_seed(0)
    x0, x1 = 1e6 * torch.rand(5, 2, generator=g), 1e6 * torch.rand(10, 2, generator=g)
    with pytest.raises(ValueError, match="no mass to sample pairs from.*raise reg_m"):
        pair(x0, x1, method="unbalanced", reg=1e-6, replace=True)


def test_sb_cfm_small_sigma_is_told_in_sigma():
    from flowfast import paths

    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    with pytest.raises(ValueError, match=r"SB-CFM couples with eps = 2 sigma\^2 = 2e-06 \(sigma=0.001\).*sigma >= ") as info:
        paths.SchrodingerBridgeCFM(sigma=1e-3).loss(lambda x, t: x, x0, x1)
    least = float(str(info.value).split("sigma >= ")[1].split(",")[0])
    paths.SchrodingerBridgeCFM(sigma=1.01 * least).loss(lambda x, t: x, x0, x1)  # the advice works


def test_expanded_inputs_are_validated_without_materializing():
    from flowfast._validate import check_finite, check_magnitude, distinct_view

    row = torch.rand(1, 500, generator=torch.Generator().manual_seed(2))
    t = row.expand(400, 500)
    view, repeats = distinct_view(t)
    assert view.numel() == 500 and repeats == 400 and view.data_ptr() == row.data_ptr()
    check_magnitude("cost", t, 1e250)
    bad = row.clone()
    bad[0, 7] = float("inf")
    with pytest.raises(ValueError, match="cost contains 400 NaN/Inf"):
        check_magnitude("cost", bad.expand(400, 500), 1e250)
    with pytest.raises(ValueError, match="x contains 400 NaN/Inf"):
        check_finite("x", bad.expand(400, 500))
    cols = flowfast.linear_assignment(t[:64, :64])  # solved on the strided (stride-0) view
    assert sorted(cols.tolist()) == list(range(64))


def test_workspace_allocation_failure_states_the_size():
    from flowfast import _arrays

    with pytest.raises(MemoryError, match="MiB of kernel workspace"):
        _arrays.workspace(2**62, torch.device("cpu"))
