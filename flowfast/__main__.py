"""Command line: ``python -m flowfast <command>``.

Commands:
    info   print the build and device information
    demo   exact minibatch-OT pairing on a 2D toy: pairing quality vs the independent coupling and
           vs torchcfm-style sampling with replacement, and a plot under runs/ (if matplotlib)
"""

from __future__ import annotations

import argparse
import json
import sys


def _info(_: argparse.Namespace) -> int:
    import torch

    import flowfast

    print(json.dumps({"flowfast": flowfast.__version__, "torch": torch.__version__,
                      "build": flowfast.build_info(), "cuda_available": flowfast.cuda_available()},
                     indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from flowfast.demo import run_pairing_demo

    run_pairing_demo(n=args.n, seed=args.seed, out_dir=args.out, device=args.device)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowfast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build and device information").set_defaults(func=_info)
    demo = sub.add_parser("demo", help="exact OT pairing on a 2D toy, with metrics and a plot")
    demo.add_argument("--n", type=int, default=1024, help="minibatch size (default 1024)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    demo.add_argument("--out", default="runs/demo", help="output folder for the plot")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
