"""Any array library in and out of the kernel families' entry points (flowfast._interop): numpy and
JAX (CPU) against the torch path on the same data, zero-copy, strides, errors, streams (cupy, on a
GPU only)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import flowfast
from flowfast import _arrays, categorical, discrete, paths
from flowfast._interop import ArrayResult

LIBRARIES = ["numpy", "jax"]


def _jnp():
    return pytest.importorskip("jax.numpy")


def to_library(library: str, array: np.ndarray):
    if library == "numpy":
        return array
    return _jnp().asarray(array)


def is_library_array(library: str, value) -> bool:
    if library == "numpy":
        return isinstance(value, np.ndarray)
    import jax
    return isinstance(value, jax.Array)


def host(value) -> np.ndarray:
    return np.asarray(value)


def pointer(value) -> int:
    if isinstance(value, np.ndarray):
        return value.ctypes.data
    return value.unsafe_buffer_pointer()


@pytest.fixture
def kernel_pointers(monkeypatch):
    """The data pointers of every tensor handed to a kernel (flowfast._arrays.describe)."""
    seen: list[int] = []
    original = _arrays.describe

    def recording(t):
        seen.append(t.data_ptr())
        return original(t)

    monkeypatch.setattr(_arrays, "describe", recording)
    return seen


def rng():
    return np.random.default_rng(1234)


def expected_dtype(library: str, dtype) -> np.dtype:
    """JAX without x64 gets int64 / float64 results as int32 / float32 (JAX's own rule)."""
    dtype = np.dtype(dtype)
    if library == "jax":
        import jax
        if not jax.config.jax_enable_x64:
            return {np.dtype(np.int64): np.dtype(np.int32), np.dtype(np.float64): np.dtype(np.float32)}.get(dtype, dtype)
    return dtype


def assert_same(library: str, got, want: torch.Tensor, exact: bool = True):
    assert is_library_array(library, got), type(got)
    want = want.detach().cpu().numpy()
    assert host(got).dtype == expected_dtype(library, want.dtype)
    if exact:
        np.testing.assert_array_equal(host(got), want.astype(host(got).dtype))
    else:
        np.testing.assert_allclose(host(got), want.astype(host(got).dtype), rtol=1e-6, atol=1e-6)


# --- every entry point: the caller's arrays in, the same answer out, in the caller's library -------
@pytest.mark.parametrize("library", LIBRARIES)
def test_linear_assignment_and_scipy_drop_in(library):
    cost = rng().random((6, 20, 24)).astype(np.float32)
    given_cost = to_library(library, cost)
    assert_same(library, flowfast.linear_assignment(given_cost), flowfast.linear_assignment(torch.from_numpy(cost)))
    assert_same(library, flowfast.linear_assignment(given_cost[0], maximize=True),
                flowfast.linear_assignment(torch.from_numpy(cost[0]), maximize=True))
    rows, cols = flowfast.linear_sum_assignment(given_cost[1].T)  # n > m
    want_rows, want_cols = flowfast.linear_sum_assignment(torch.from_numpy(cost[1].T.copy()))
    assert_same(library, rows, want_rows)
    assert_same(library, cols, want_cols)


@pytest.mark.parametrize("library", LIBRARIES)
def test_ot_pairing_and_pair(library):
    x0, x1 = rng().standard_normal((2, 64, 3)).astype(np.float32)
    p0, p1 = flowfast.ot_pairing(to_library(library, x0), to_library(library, x1))
    w0, w1 = flowfast.ot_pairing(torch.from_numpy(x0), torch.from_numpy(x1))
    assert_same(library, p0, w0)
    assert_same(library, p1, w1)
    got = flowfast.couplings.pair(to_library(library, x0), to_library(library, x1), method="sinkhorn", reg=0.1,
                                  generator=torch.Generator().manual_seed(3))
    want = flowfast.couplings.pair(torch.from_numpy(x0), torch.from_numpy(x1), method="sinkhorn", reg=0.1,
                                   generator=torch.Generator().manual_seed(3))
    assert_same(library, got[0], want[0])
    assert_same(library, got[2][1], want[2][1])


@pytest.mark.parametrize("library", LIBRARIES)
def test_sinkhorn_dense_and_clouds(library):
    r = rng()
    cost = r.random((3, 30, 40)).astype(np.float32)
    a = r.random(30).astype(np.float32) + 0.1
    b = r.random(40).astype(np.float32) + 0.1
    b *= a.sum() / b.sum()
    got = flowfast.sinkhorn(to_library(library, cost), a=to_library(library, a), b=to_library(library, b), eps=0.05,
                            tol=1e-4)  # float32 sums of a and b differ by ~1e-6: a floor below the default tol
    want = flowfast.sinkhorn(torch.from_numpy(cost), a=torch.from_numpy(a), b=torch.from_numpy(b), eps=0.05, tol=1e-4)
    assert isinstance(got, ArrayResult) and isinstance(got.torch, flowfast.SinkhornResult)
    for field in ("f", "g", "n_iter", "marginal_error", "cost", "value"):
        assert_same(library, getattr(got, field), getattr(want, field))
    assert got.eps == want.eps
    assert_same(library, got.plan(), want.plan())
    for got_mass, want_mass in zip(got.marginals(), want.marginals()):
        assert_same(library, got_mass, want_mass)
    rows = np.array([0, 5, 5, 29])
    assert_same(library, got.sample(torch.Generator().manual_seed(7), rows=to_library(library, rows).astype("int64")
                                    if library == "numpy" else torch.from_numpy(rows)),
                want.sample(torch.Generator().manual_seed(7), rows=torch.from_numpy(rows)))
    warm = flowfast.sinkhorn(to_library(library, cost), a=to_library(library, a), b=to_library(library, b), eps=0.05,
                             tol=1e-4, init=(got.f, got.g), eps_scaling=False)
    assert host(warm.n_iter).max() <= 10  # started at the answer

    x, y = r.standard_normal((2, 50, 4)).astype(np.float32)
    got = flowfast.sinkhorn(x=to_library(library, x), y=to_library(library, y), eps=0.5)
    want = flowfast.sinkhorn(x=torch.from_numpy(x), y=torch.from_numpy(y), eps=0.5)
    assert_same(library, got.f, want.f)
    assert_same(library, got.value, want.value)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("path", [paths.IndependentCFM(0.1), paths.SchrodingerBridgeCFM(0.5),
                                  paths.TargetCFM(0.01), paths.VariancePreservingCFM(0.0)],
                         ids=lambda p: type(p).__name__)
def test_interpolant_sample_and_prediction_loss(library, path):
    r = rng()
    x0, x1 = r.standard_normal((2, 128, 5)).astype(np.float32)
    t = r.random(128).astype(np.float32)
    got = path.sample_paired(to_library(library, x0), to_library(library, x1), to_library(library, t),
                             return_noise=True, generator=torch.Generator().manual_seed(5))
    want = path.sample_paired(torch.from_numpy(x0), torch.from_numpy(x1), torch.from_numpy(t), return_noise=True,
                              generator=torch.Generator().manual_seed(5))
    for g, w in zip(got, want):
        assert_same(library, g, w)
    v = r.standard_normal((128, 5)).astype(np.float32)
    loss = path.prediction_loss(to_library(library, v), to_library(library, x0), to_library(library, x1), got[0],
                                got[3])
    want_loss = path.prediction_loss(torch.from_numpy(v), torch.from_numpy(x0), torch.from_numpy(x1), want[0], want[3])
    assert_same(library, loss, want_loss)
    # the kernel's loss is the eager formula on the drawn x_t's target velocity
    eager = ((torch.from_numpy(v) - want[2]) ** 2).mean()
    np.testing.assert_allclose(float(host(loss)), float(eager), rtol=1e-5)


@pytest.mark.parametrize("library", LIBRARIES)
def test_simplex_step_and_pairflow(library):
    r = rng()
    logits = (3 * r.standard_normal((4, 6, 9))).astype(np.float32)
    x = np.full((4, 6, 9), 1 / 9, np.float32)
    got = categorical.flow_map_step(to_library(library, logits), to_library(library, x), 0.25, return_argmax=True)
    want = categorical.flow_map_step(torch.from_numpy(logits), torch.from_numpy(x), 0.25, return_argmax=True)
    assert_same(library, got.x, want.x)
    assert_same(library, got.argmax, want.argmax)
    assert got.log_probs is None

    data = r.integers(0, 5, (40, 12)).astype(np.int32)
    got = discrete.pairflow_pairs(to_library(library, data), 5, steps=4, generator=torch.Generator().manual_seed(2))
    want = discrete.pairflow_pairs(torch.from_numpy(data), 5, steps=4, generator=torch.Generator().manual_seed(2))
    assert_same(library, got, want)


def test_torch_in_torch_out_untouched():
    cost = torch.rand(2, 8, 8)
    assert isinstance(flowfast.linear_assignment(cost), torch.Tensor)
    assert type(flowfast.sinkhorn(cost, eps=0.1)) is flowfast.SinkhornResult
    assert isinstance(flowfast.linear_sum_assignment([[1.0, 2.0], [2.0, 1.0]])[0], np.ndarray)  # scipy: lists -> numpy


def test_float64_numpy_and_x64_less_jax():
    cost = rng().random((5, 5))
    cols = flowfast.linear_assignment(cost)
    assert cols.dtype == np.int64
    res = flowfast.sinkhorn(cost, eps=0.1)
    assert res.f.dtype == np.float64
    jnp = _jnp()
    import jax
    if not jax.config.jax_enable_x64:
        assert flowfast.linear_assignment(jnp.asarray(cost, dtype=jnp.float32)).dtype == jnp.int32


# --- zero-copy: the kernels read the caller's buffer, results view the kernels' output ---------------
@pytest.mark.parametrize("library", LIBRARIES)
def test_zero_copy_in_and_out(library, kernel_pointers):
    r = rng()
    cost = to_library(library, r.random((4, 32, 32)).astype(np.float32))
    cols = flowfast.linear_assignment(cost)
    assert pointer(cost) in kernel_pointers, "the assignment kernel did not read the caller's buffer"
    if host(cols).dtype == np.int64:  # (JAX without x64 converts int64 results to int32: a copy)
        assert pointer(cols) in kernel_pointers, "the assignment result is not a view of the kernel's output"

    kernel_pointers.clear()
    x, y = (to_library(library, r.standard_normal((40, 3)).astype(np.float32)) for _ in range(2))
    res = flowfast.sinkhorn(x=x, y=y, eps=1.0)
    assert pointer(x) in kernel_pointers and pointer(y) in kernel_pointers
    assert pointer(res.f) in kernel_pointers

    kernel_pointers.clear()
    logits = to_library(library, r.standard_normal((8, 7)).astype(np.float32))
    state = to_library(library, np.full((8, 7), 1 / 7, np.float32))
    step = categorical.flow_map_step(logits, state, 0.5)
    assert pointer(logits) in kernel_pointers and pointer(state) in kernel_pointers
    assert pointer(step.x) in kernel_pointers

    kernel_pointers.clear()
    tokens = to_library(library, r.integers(0, 4, (16, 8)).astype(np.int32))
    discrete.pairflow_pairs(tokens, 4, steps=2)
    assert pointer(tokens) in kernel_pointers

    kernel_pointers.clear()
    x0, x1, v = (to_library(library, r.standard_normal((32, 4)).astype(np.float32)) for _ in range(3))
    paths.IndependentCFM().prediction_loss(v, x0, x1, to_library(library, np.full(32, 0.5, np.float32)))
    assert {pointer(v), pointer(x0), pointer(x1)} <= set(kernel_pointers)


def test_numpy_outputs_share_memory_with_inputs_where_torch_does():
    x0, x1 = rng().standard_normal((2, 16, 2)).astype(np.float32)
    p0, _ = flowfast.ot_pairing(x0, x1)
    assert np.shares_memory(p0, x0)  # x0 comes back as it went in: a view, never a copy


# --- layouts torch cannot view, read-only memory, and producers that only speak DLPack ------------------
@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["reversed_rows", "reversed_cols", "transposed", "every_other", "fortran", "swapped_bytes",
                        "reversed_size_one_axis"]),
       st.integers(3, 12), st.integers(0, 10_000))
def test_numpy_strided_layouts_match_a_contiguous_copy(layout, n, seed):
    base = np.random.default_rng(seed).random((2 * n, 2 * n))
    view = {"reversed_rows": base[::-1, :n], "reversed_cols": base[:n, ::-1], "transposed": base[:n, :n].T,
            "every_other": base[::2, ::2], "fortran": np.asfortranarray(base[:n, :n]),
            "swapped_bytes": base[:n, :n].astype(base.dtype.newbyteorder()),
            # numpy flags this C-contiguous (a size-1 axis's stride is ignored), torch refuses the stride
            "reversed_size_one_axis": base[::-1][:1, :n]}[layout]
    want = flowfast.linear_assignment(torch.from_numpy(np.array(view, dtype=np.float64, order="C")))
    np.testing.assert_array_equal(flowfast.linear_assignment(view), want.numpy())
    got = flowfast.sinkhorn(view, eps=0.1).f
    np.testing.assert_allclose(got, flowfast.sinkhorn(torch.from_numpy(np.array(view, dtype=np.float64, order="C")),
                                                      eps=0.1).f.numpy(), rtol=1e-12, atol=1e-12)


def test_read_only_numpy_is_read_without_a_warning(kernel_pointers):
    cost = rng().random((10, 10)).astype(np.float32)
    cost.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cols = flowfast.linear_assignment(cost)
    assert pointer(cost) in kernel_pointers
    np.testing.assert_array_equal(cols, flowfast.linear_assignment(torch.from_numpy(cost.copy())).numpy())


def test_read_only_numpy_without_read_only_dlpack_falls_back_quietly(monkeypatch):
    """numpy / torch builds whose DLPack refuses read-only arrays: torch.from_numpy instead, its
    non-writable warning kept out of the caller's sight."""
    cost = rng().random((8, 8))
    cost.flags.writeable = False

    def refuse(value):
        raise BufferError("Cannot export readonly array since signalling readonly is unsupported by DLPack.")

    monkeypatch.setattr(torch, "from_dlpack", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cols = flowfast.linear_assignment(cost)
    np.testing.assert_array_equal(cols, flowfast.linear_assignment(torch.from_numpy(cost.copy())).numpy())


@pytest.mark.parametrize("library", LIBRARIES)
def test_array_results_copy_pickle_and_take_int32_rows(library):
    import copy
    import pickle

    cost = rng().random((12, 12)).astype(np.float32)
    res = flowfast.sinkhorn(to_library(library, cost), eps=0.1)
    for clone in (copy.copy(res), copy.deepcopy(res)):
        assert isinstance(clone, ArrayResult)
        np.testing.assert_array_equal(host(clone.f), host(res.f))
    if library == "numpy":
        back = pickle.loads(pickle.dumps(res))
        assert isinstance(back.f, np.ndarray)
        np.testing.assert_array_equal(back.f, res.f)
    else:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(res)
    rows = to_library(library, np.array([0, 3, 3, 11], dtype=np.int32))
    got = res.sample(torch.Generator().manual_seed(2), rows=rows)
    want = res.torch.sample(torch.Generator().manual_seed(2), rows=torch.tensor([0, 3, 3, 11]))
    np.testing.assert_array_equal(host(got), want.numpy().astype(host(got).dtype))
    with pytest.raises(AttributeError):
        res.no_such_attribute


def test_cuda_array_interface_without_cuda_names_the_argument():
    """A CUDA-array-interface producer that torch cannot read here (no CUDA): a TypeError naming
    the argument, never a crash."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")

    class Namespace:
        from_dlpack = staticmethod(np.from_dlpack)

    class DeviceArray:
        __cuda_array_interface__ = {"shape": (4, 4), "typestr": "<f4", "data": (4096, False), "version": 2,
                                    "strides": None}

        def __array_namespace__(self, api_version=None):
            return Namespace

    with pytest.raises(TypeError, match="cost: this .*DeviceArray array cannot be read through __cuda_array_interface__"):
        flowfast.linear_assignment(DeviceArray())


PRODUCER = textwrap.dedent('''
    import numpy as np, torch, flowfast

    class Producer:
        """An array that only speaks DLPack and the array API (a library flowfast does not know)."""
        def __init__(self, array):
            self.array = array
        def __dlpack__(self, stream=None, **kwargs):
            return self.array.__dlpack__()
        def __dlpack_device__(self):
            return self.array.__dlpack_device__()
        def __array_namespace__(self, api_version=None):
            return Namespace

    class Namespace:
        """The producer's array-API namespace: its own copies, and numpy arrays from DLPack."""
        @staticmethod
        def asarray(x, copy=None):
            return Producer(np.array(x.array, copy=True))
        from_dlpack = staticmethod(np.from_dlpack)

    class Mute(Producer):
        __array_namespace__ = None

    base = np.random.default_rng(0).random((9, 9))
    want = flowfast.linear_assignment(torch.from_numpy(base[::-1].copy())).numpy()
    got = flowfast.linear_assignment(Producer(base[::-1]))   # negative strides: torch would abort
    assert isinstance(got, np.ndarray) and (got == want).all(), (got, want)
    got = flowfast.linear_assignment(Producer(base))
    assert (got == flowfast.linear_assignment(torch.from_numpy(base)).numpy()).all()
    try:
        flowfast.linear_assignment(Mute(base))
    except TypeError as error:
        assert "cannot hand results back" in str(error), error
    else:
        raise AssertionError("a producer with no way back was accepted")
    print("ok")
''')


def test_unknown_dlpack_producer_with_negative_strides_does_not_abort():
    # in a child process: a regression here would abort the interpreter (torch's from_dlpack)
    done = subprocess.run([sys.executable, "-c", PRODUCER], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_importing_flowfast_imports_no_other_array_library():
    code = "import sys, flowfast; print(sorted(m for m in ('jax', 'cupy', 'numba') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- the torch path's errors, naming the argument ------------------------------------------------------
def test_bad_inputs_raise_the_torch_paths_errors():
    cost = rng().random((6, 6)).astype(np.float32)
    cost[2, 3] = np.nan
    with pytest.raises(ValueError, match="cost"):
        flowfast.linear_assignment(cost)
    with pytest.raises(TypeError, match="float32 or float64"):
        flowfast.linear_assignment(np.ones((4, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="numeric array"):
        flowfast.linear_assignment(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match=r"\(n, m\) or \(B, n, m\)"):
        flowfast.linear_assignment(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="empty"):
        flowfast.linear_assignment(np.ones((0, 3), np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray, cupy.ndarray, jax.Array"):
        flowfast.linear_assignment({1, 2})
    with pytest.raises(ValueError, match="x0 and x1"):
        flowfast.ot_pairing(np.ones((4, 2), np.float32), np.ones((5, 2), np.float32))
    x = np.ones((4, 2), np.float32)
    x[0, 0] = np.inf
    with pytest.raises(ValueError, match="x0"):
        paths.IndependentCFM().sample_paired(x, np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="noise"):
        paths.SchrodingerBridgeCFM(0.5).prediction_loss(np.ones((4, 2), np.float32), np.ones((4, 2), np.float32),
                                                        np.ones((4, 2), np.float32), np.full(4, 0.5, np.float32))
    with pytest.raises(ValueError, match="v must be shaped like x0"):
        paths.IndependentCFM().prediction_loss(np.ones((4, 3), np.float32), np.ones((4, 2), np.float32),
                                               np.ones((4, 2), np.float32), 0.5)


def test_arrays_of_two_libraries_in_one_call_are_refused():
    x = np.ones((4, 2), np.float32)
    with pytest.raises(TypeError, match=r"one library and device: x is numpy on cpu, y is torch on cpu"):
        flowfast.sinkhorn(x=x, y=torch.ones(4, 2), eps=1.0)
    jnp = _jnp()
    with pytest.raises(TypeError, match="x0 is numpy on cpu, x1 is jax"):
        flowfast.ot_pairing(x, jnp.ones((4, 2), jnp.float32))


# --- JAX: values inside jit through jax.pure_callback (the README's example) --------------------------
def _readme_block(heading: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_readme_array_library_snippet_runs():
    pytest.importorskip("jax")
    namespace: dict = {}
    exec(compile(_readme_block("### From numpy, JAX or cupy"), "README.md", "exec"), namespace)
    assert "x1p" in namespace and "ut" in namespace


# --- cupy on a GPU: its current stream, zero-copy -------------------------------------------------------
@pytest.mark.cuda
def test_cupy_runs_on_the_current_stream_without_a_sync(monkeypatch):
    cupy = pytest.importorskip("cupy")
    if not flowfast.cuda_available():
        pytest.skip("needs the CUDA kernels")
    handles: list[int] = []
    original = _arrays.stream_handle
    monkeypatch.setattr(_arrays, "stream_handle", lambda device: handles.append(original(device)) or handles[-1])
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        cost = cupy.random.random((16, 64, 64), dtype=cupy.float32)  # queued on `stream`, not yet run
        cols = flowfast.linear_assignment(cost)  # no synchronization in between
        total = cupy.take_along_axis(cost, cols[:, :, None], 2).sum()
    stream.synchronize()
    assert handles and set(handles) == {stream.ptr}, (handles, stream.ptr)
    assert isinstance(cols, cupy.ndarray) and cols.data.ptr != 0
    want = flowfast.linear_assignment(torch.from_dlpack(cost))
    assert (cupy.asnumpy(cols) == want.cpu().numpy()).all()
    assert abs(float(total) - float(torch.from_dlpack(cost).gather(2, want[..., None]).sum())) < 1e-3
    res = flowfast.sinkhorn(cost, eps=0.05)
    assert isinstance(res.f, cupy.ndarray)
