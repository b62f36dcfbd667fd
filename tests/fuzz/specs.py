"""Hypothesis strategies of fuzz specs (tests/fuzz/cases.py): dtypes including float16/bfloat16,
NaN/+-Inf planted, empty and size-1 dims, strided layouts, offsets and scales 1e-30..1e30, ties."""

from __future__ import annotations

from hypothesis import strategies as st

SPECIALS = st.sampled_from([None, None, None, "nan", "inf", "-inf"])
SCALES = st.sampled_from([1e-30, 1e-8, 1e-3, 1.0, 1.0, 1.0, 1e3, 1e8, 1e30])
OFFSETS = st.sampled_from([0.0, 0.0, -0.5, 1.0, 1e3, 1e6])
LAYOUTS = st.sampled_from(["contiguous", "contiguous", "transposed", "sliced"])
# the caller's array library (flowfast._interop): torch, numpy, numpy with negative strides, JAX
LIBRARIES = st.sampled_from(["torch", "torch", "numpy", "numpy_reversed", "jax"])


def _common(dtypes, specials=SPECIALS):
    return dict(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from(dtypes), scale=SCALES, offset=OFFSETS,
                ties=st.booleans(), special=specials, special_at=st.integers(0, 10**6), layout=LAYOUTS)


ALL_FLOATS = ["float32", "float64", "float32", "float64", "float16", "bfloat16"]  # 16-bit: refused or upcast

assignment = st.fixed_dictionaries({"op": st.sampled_from(["linear_sum_assignment", "linear_assignment"]),
                                    "n": st.integers(0, 12), "m": st.integers(0, 12), "numpy": st.booleans(),
                                    "library": LIBRARIES,
                                    **_common(ALL_FLOATS)})
sinkhorn = st.fixed_dictionaries({"op": st.just("sinkhorn"), "n": st.integers(1, 24), "m": st.integers(1, 24),
                                  "eps_rel": st.sampled_from([1e-5, 1e-3, 0.05, 1.0]),
                                  "max_iter": st.sampled_from([1, 3, 50, 1000]),
                                  "reg_m": st.sampled_from([None, None, 0.1, 10.0]), "library": LIBRARIES,
                                  **_common(["float32", "float64"])})
pairing = st.fixed_dictionaries({"op": st.sampled_from(["ot_pairing", "pair_sinkhorn"]), "n": st.integers(1, 24),
                                 "d": st.integers(1, 5), "library": LIBRARIES, **_common(ALL_FLOATS)})
odeint = st.fixed_dictionaries({"op": st.just("odeint"), "n": st.integers(1, 6), "d": st.integers(1, 3),
                                "method": st.sampled_from(["euler", "midpoint", "rk4", "dopri5"]),
                                "steps": st.sampled_from([1, 10, 100]), "rate": st.sampled_from([0.1, 1.0, 5.0]),
                                "field": st.sampled_from(["decay", "decay", "growth", "nan"]),
                                "check_finite": st.sampled_from([None, True, False]),
                                **_common(ALL_FLOATS)})

# The CFM paths (tests/fuzz/path_cases.py): per path the sigmas it takes (SB-CFM needs sigma > 0).
PATH_SIGMAS = {"icfm": [0.0, 0.0, 0.1, 1.0], "otcfm": [0.0, 0.0, 0.1, 1.0], "vp": [0.0, 0.0, 0.1, 1.0],
               "target": [0.0, 1e-4, 0.1], "sbcfm": [0.1, 0.5, 1.0]}
_SHAPES = st.one_of(st.tuples(st.integers(1, 8), st.integers(1, 5)).map(list),
                    st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)).map(list))


@st.composite
def _path_case(draw):
    name = draw(st.sampled_from(sorted(PATH_SIGMAS)))
    return {"path": name, "sigma": draw(st.sampled_from(PATH_SIGMAS[name])),
            "ot_method": draw(st.sampled_from(["sinkhorn", "sinkhorn", "exact"]))}


paths = st.builds(lambda base, extra: {**base, **extra}, _path_case(), st.fixed_dictionaries({
    "op": st.sampled_from(["cfm_loss", "cfm_loss", "cfm_sample"]), "shape": _SHAPES,
    "model": st.sampled_from(["half", "half", "affine", "zero"]), "fused": st.booleans(),
    "t_mode": st.sampled_from(["none", "rand", "rand", "zero", "one", "ends", "edge", "scalar0", "scalar1",
                               "scalarh", "out"]),
    "t_dtype": st.sampled_from(["same", "same", "float32", "float64"]),
    "weight_mode": st.sampled_from(["none", "none", "rand", "ones", "zeros", "big"]),
    "special_in": st.sampled_from(["x0", "x1", "t", "weight"]),
    "check_finite": st.sampled_from([None, None, True, False]),
    "offset1": OFFSETS,
    **_common(ALL_FLOATS, specials=st.sampled_from([None] * 6 + ["nan", "inf", "-inf"]))}))

ANY = st.one_of(assignment, sinkhorn, pairing, odeint, paths)

# The command line (tests/fuzz/cli_cases.py): 0-3 mutations of a command's tiny base arguments.
_SEED_VALUES = ["0", "7", str(2**63 - 1), "-1", str(2**63), str(2**70), "abc", "1e3", ""]
_DEVICE_VALUES = ["cpu", "auto", "cuda", "cuda:0", "cuda:-1", "tpu", "", "CPU", "meta", "cpu:0",
                  "cuda:99999999999999999999", "mps", "cuda:x"]
_CHECKPOINTS = ["@good", "@good", "@empty", "@garbage", "@truncated", "@foreign", "@ckptdir", "@missing", "@file",
                "@data_ok", "@dir", ""]


def _pairs(flag, values):
    return [[flag, v] for v in values]


TRAIN_MUTATIONS = (
    _pairs("--device", _DEVICE_VALUES)
    + _pairs("--out", ["@fresh", "@file/run", "/proc/flowfast-fuzz/run", "@file", "@dir", "", "@good_run",
                       "@fresh/a/b/c", "/dev/full", "@run_garbage", "@run_empty", "@run_truncated", "@run_ckptdir",
                       "@run_foreign"])
    + [["--resume", None]] * 4 + [["--override-config", None], ["--loss-weight", None], ["--no-progress", "<drop>"]]
    + _pairs("--seed", _SEED_VALUES)
    + _pairs("--steps", ["-1", "0", "1", "3", "abc", "2.5"])
    + _pairs("--batch-size", ["-8", "0", "1", "2", "3"])
    + _pairs("--lr", ["-1", "0", "1e-2", "1e30", "nan", "inf", "-inf", "abc"])
    + _pairs("--path", ["icfm", "otcfm", "sbcfm", "fm", "vp", "bogus"])
    + _pairs("--sigma", ["-1", "0", "0.5", "nan", "inf", "1e30"])
    + _pairs("--method", ["cfm", "lsd", "esd", "distill", "bogus", "dfm"])
    + _pairs("--task", ["markov", "bogus"]) + _pairs("--task-size", ["-1", "0", "16"])
    + _pairs("--teacher", ["@good", "@garbage", "@missing", "@ckptdir", "@foreign"])
    + _pairs("--source", ["gaussian", "moons", "bogus"]) + _pairs("--target", ["8gaussians", "checkerboard", "bogus"])
    + _pairs("--data", ["@data_ok", "@data_nan", "@data_inf", "@data_huge", "@data_empty", "@data_1d", "@data_int",
                        "@data_img", "@data_obj", "@data_text", "@data_missing", "@dir"])
    + _pairs("--hidden", ["0", "-1", "1"]) + _pairs("--depth", ["0", "-1"])
    + _pairs("--ema-decay", ["-1", "0", "0.5", "1", "2", "nan"])
    + _pairs("--log-every", ["0", "-1"]) + _pairs("--checkpoint-every", ["0", "-1"])
    + _pairs("--eval-n", ["-1", "1", "3"])
    + _pairs("--coupling", ["independent", "exact", "sinkhorn", "nfm", "bogus"])
    + _pairs("--nfm-draws", ["0", "-1", "1"])
)
SAMPLE_MUTATIONS = (
    _pairs("--checkpoint", _CHECKPOINTS) + _pairs("--n", ["-1", "0", "1", "3", "abc"])
    + _pairs("--steps", ["-1", "0", "1", "3", "abc"])
    + _pairs("--method", ["euler", "midpoint", "rk4", "dopri5", "map", "ancestral", "bogus"])
    + _pairs("--seed", _SEED_VALUES) + _pairs("--device", _DEVICE_VALUES) + [["--no-ema", None]] * 2
    + _pairs("--out", ["@fresh.pt", "@fresh.npy", "@fresh", "@file/x.pt", "/proc/flowfast-fuzz/x.pt", "@dir", "",
                       "@fresh/sub/dir/x.npy", "/dev/full", "@file"])
)
EVAL_MUTATIONS = [m for m in SAMPLE_MUTATIONS if m[0] != "--out"]
HELP_ARGV = [["--help"], ["train", "--help"], ["sample", "--help"], ["eval", "--help"], ["bogus"], [], ["info"],
             ["train", "--bogus-flag"], ["sample"], ["eval", "--checkpoint"]]


def _cli(command, mutations):
    return st.fixed_dictionaries({"op": st.just("cli"), "command": st.just(command),
                                  "mutations": st.lists(st.sampled_from(mutations), min_size=0, max_size=3,
                                                        unique_by=lambda m: m[0])})


_help = st.sampled_from(HELP_ARGV).map(
    lambda argv: {"op": "cli", "command": "help", "mutations": [["<positional>%d" % i, a] for i, a in enumerate(argv)]})
cli = st.one_of(_cli("train", TRAIN_MUTATIONS), _cli("train", TRAIN_MUTATIONS), _cli("sample", SAMPLE_MUTATIONS),
                _cli("eval", EVAL_MUTATIONS), _help)
