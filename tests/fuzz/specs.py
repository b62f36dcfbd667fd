"""Hypothesis strategies of fuzz specs (tests/fuzz/cases.py): dtypes including float16/bfloat16,
NaN/+-Inf planted, empty and size-1 dims, strided layouts, offsets and scales 1e-30..1e30, ties."""

from __future__ import annotations

from hypothesis import strategies as st

SPECIALS = st.sampled_from([None, None, None, "nan", "inf", "-inf"])
SCALES = st.sampled_from([1e-30, 1e-8, 1e-3, 1.0, 1.0, 1.0, 1e3, 1e8, 1e30])
OFFSETS = st.sampled_from([0.0, 0.0, -0.5, 1.0, 1e3, 1e6])
LAYOUTS = st.sampled_from(["contiguous", "contiguous", "transposed", "sliced"])


def _common(dtypes):
    return dict(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from(dtypes), scale=SCALES, offset=OFFSETS,
                ties=st.booleans(), special=SPECIALS, special_at=st.integers(0, 10**6), layout=LAYOUTS)


ALL_FLOATS = ["float32", "float64", "float32", "float64", "float16", "bfloat16"]  # 16-bit: refused or upcast

assignment = st.fixed_dictionaries({"op": st.sampled_from(["linear_sum_assignment", "linear_assignment"]),
                                    "n": st.integers(0, 12), "m": st.integers(0, 12), "numpy": st.booleans(),
                                    **_common(ALL_FLOATS)})
sinkhorn = st.fixed_dictionaries({"op": st.just("sinkhorn"), "n": st.integers(1, 24), "m": st.integers(1, 24),
                                  "eps_rel": st.sampled_from([1e-5, 1e-3, 0.05, 1.0]),
                                  "max_iter": st.sampled_from([1, 3, 50, 1000]),
                                  "reg_m": st.sampled_from([None, None, 0.1, 10.0]),
                                  **_common(["float32", "float64"])})
pairing = st.fixed_dictionaries({"op": st.sampled_from(["ot_pairing", "pair_sinkhorn"]), "n": st.integers(1, 24),
                                 "d": st.integers(1, 5), **_common(ALL_FLOATS)})
odeint = st.fixed_dictionaries({"op": st.just("odeint"), "n": st.integers(1, 6), "d": st.integers(1, 3),
                                "method": st.sampled_from(["euler", "midpoint", "rk4", "dopri5"]),
                                "steps": st.sampled_from([1, 10, 100]), "rate": st.sampled_from([0.1, 1.0, 5.0]),
                                **_common(ALL_FLOATS)})

ANY = st.one_of(assignment, sinkhorn, pairing, odeint)
