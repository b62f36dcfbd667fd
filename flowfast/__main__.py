"""Command line: ``python -m flowfast <command>`` (``<command> --help`` for the options).

Commands:
    info     print the build and device information
    train    train a flow-matching MLP on a 2D toy (JSONL metrics, checkpoints, --resume)
    sample   draw samples from a checkpoint with an ODE solver
    eval     exact W2 between a checkpoint's samples and the target (prints JSON)
    demo     train I-CFM and OT-CFM on N(0, I) -> 8 gaussians, print a W2 / NFE table, write a plot
             (--coupling: the older exact-OT pairing demo)
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _info(_: argparse.Namespace) -> int:
    import torch

    import flowfast

    print(json.dumps({"flowfast": flowfast.__version__, "torch": torch.__version__,
                      "build": flowfast.build_info(), "cuda_available": flowfast.cuda_available()},
                     indent=2))
    return 0


def _device(name: str) -> str:
    """--device: cpu, cuda, cuda:N or auto; CUDA only when flowfast can use it here."""
    import torch

    import flowfast

    if name == "auto":
        return "cuda" if flowfast.cuda_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not flowfast.cuda_available():
            raise ValueError(f"--device {name}, but flowfast cannot use CUDA here (torch.cuda.is_available()="
                             f"{torch.cuda.is_available()}, cuda_compiled={flowfast.build_info()['cuda_compiled']}); "
                             "use --device cpu or auto")
        return name
    raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}")


# Settings a resumed run can take over from the command line (--override-config); the model's
# shape cannot change under its weights.
OVERRIDABLE = ("path", "sigma", "source", "target", "batch_size", "lr", "ema_decay")


def _check_resume_config(out_dir: str, config: dict, override: bool) -> list[str]:
    """A resumed run must continue the configuration it was started with: refuse silent drift.
    With ``override``, the overridable differences are accepted (and returned, to be applied)."""
    from flowfast.train import CHECKPOINT_NAME, read_checkpoint_config

    saved = read_checkpoint_config(os.path.join(out_dir, CHECKPOINT_NAME))
    if saved is None:
        return []
    changed = [key for key in sorted(config) if key in saved and saved[key] != config[key]]
    describe = lambda keys: "; ".join(f"{k}: checkpoint {saved[k]!r}, now {config[k]!r}" for k in keys)  # noqa: E731
    fixed = [key for key in changed if key not in OVERRIDABLE]
    if fixed:
        raise ValueError(f"--resume cannot change {describe(fixed)} (the checkpoint's weights have that shape)")
    if changed and not override:
        raise ValueError("--resume with a configuration that differs from the checkpoint's (" + describe(changed)
                         + "); rerun with the checkpoint's values, pass --override-config to apply the new ones, "
                         "or train into a new --out")
    return changed


def _train(args: argparse.Namespace) -> int:
    import torch

    from flowfast import data
    from flowfast.models import MLP
    from flowfast.train import Trainer, make_path

    path = make_path(args.path, args.sigma)
    if args.path == "fm" and args.source != "gaussian":
        raise ValueError("--path fm (Lipman's flow matching) starts from N(0, I): use --source gaussian")
    source, target = data.get_sampler(args.source), data.get_sampler(args.target)
    dim = source(1, torch.Generator().manual_seed(0)).shape[1]
    torch.manual_seed(args.seed)  # the initial weights
    model = MLP(dim, hidden=args.hidden, depth=args.depth)
    ema = None if args.ema_decay <= 0 else args.ema_decay
    config = {"model": model.config(), "path": args.path, "sigma": args.sigma, "source": args.source,
              "target": args.target, "batch_size": args.batch_size, "lr": args.lr, "ema_decay": ema}
    device = _device(args.device)
    overridden = _check_resume_config(args.out, config, args.override_config) if args.resume else []
    trainer = Trainer(model, path, source, target,
                      optimizer=torch.optim.AdamW(model.to(device).parameters(), lr=args.lr, weight_decay=1e-5),
                      batch_size=args.batch_size, ema_decay=ema, seed=args.seed, device=device,
                      log_every=args.log_every, out_dir=args.out, checkpoint_every=args.checkpoint_every,
                      progress=not args.no_progress, config=config)
    if "lr" in overridden:
        trainer.lr_override = args.lr  # the optimizer state from the checkpoint carries the old one
    if overridden:
        print(f"[flowfast] --override-config: resuming with the new {', '.join(overridden)}", file=sys.stderr)
    losses = trainer.train(args.steps, resume=args.resume)
    summary = {"step": trainer.step, "steps_run": len(losses),
               "last_loss": losses[-1] if losses else None,
               "checkpoint": trainer.checkpoint_path, "metrics": trainer.metrics_path}
    if args.eval_n:
        summary["eval"] = trainer.evaluate(n=args.eval_n)
    print(json.dumps(summary))
    return 0


def _load(args: argparse.Namespace):
    from flowfast.train import Trainer

    if not os.path.exists(args.checkpoint):
        raise ValueError(f"no checkpoint at {args.checkpoint}")
    return Trainer.from_checkpoint(args.checkpoint, device=_device(args.device))


def _generator(seed):
    import torch

    return None if seed is None else torch.Generator().manual_seed(seed)


def _sample(args: argparse.Namespace) -> int:
    import torch

    trainer = _load(args)
    result = trainer.sample(args.n, steps=args.steps, method=args.method, ema=not args.no_ema,
                            generator=_generator(args.seed))
    x = result.x.cpu()
    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    if args.out.endswith(".npy"):
        import numpy as np

        np.save(args.out, x.numpy())
    else:
        torch.save(x, args.out)
    print(json.dumps({"out": args.out, "shape": list(x.shape), "nfe": result.nfe, "method": args.method,
                      "steps": None if args.method == "dopri5" else args.steps, "checkpoint_step": trainer.step}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    trainer = _load(args)
    print(json.dumps(trainer.evaluate(n=args.n, steps=args.steps, method=args.method, ema=not args.no_ema,
                                      generator=_generator(args.seed))))
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.coupling:
        from flowfast.demo import run_pairing_demo

        run_pairing_demo(n=args.n, seed=args.seed, out_dir=args.out, device=_device(args.device))
        return 0
    from flowfast.demo import run_training_demo

    run_training_demo(steps=args.steps, batch_size=args.batch_size, n_eval=args.n_eval,
                      eval_sets=args.eval_sets, seed=args.seed,
                      out_dir=args.out, device=_device(args.device), progress=not args.no_progress,
                      threads=args.threads or None)
    return 0


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from flowfast.data import SAMPLERS
    from flowfast.samplers import METHODS
    from flowfast.train import PATHS

    parser = argparse.ArgumentParser(prog="python -m flowfast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build and device information").set_defaults(func=_info)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    train = sub.add_parser("train", help="train a flow-matching MLP on a 2D toy", formatter_class=defaults,
                           description="Train an MLP velocity field on a CFM path between two 2D toy "
                                       "distributions. Writes OUT/metrics.jsonl, OUT/config.json and "
                                       "OUT/checkpoint.pt (atomic); --resume continues from the checkpoint "
                                       "with the same losses as an uninterrupted run. --steps is the total.")
    train.add_argument("--source", default="gaussian", choices=sorted(SAMPLERS), help="x0 distribution (t=0)")
    train.add_argument("--target", default="8gaussians", choices=sorted(SAMPLERS), help="x1 distribution (t=1)")
    train.add_argument("--path", default="otcfm", choices=sorted(PATHS),
                       help="icfm, otcfm (exact minibatch OT), sbcfm (Schrodinger bridge), fm (Lipman), vp")
    train.add_argument("--sigma", type=float, default=0.1, help="path noise (sigma_min for fm)")
    train.add_argument("--steps", type=int, default=20000, help="total optimizer steps")
    train.add_argument("--batch-size", type=int, default=512)
    train.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (weight decay 1e-5)")
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--hidden", type=int, default=64, help="MLP width")
    train.add_argument("--depth", type=int, default=3, help="MLP hidden layers")
    train.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (0: no EMA)")
    train.add_argument("--out", default="runs/train", help="run folder (runs/<name>)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    train.add_argument("--override-config", action="store_true",
                       help="with --resume: apply this command's path, sigma, data, batch size, lr and EMA decay "
                            "instead of refusing a configuration that differs from the checkpoint's")
    train.add_argument("--log-every", type=int, default=100, help="steps per metrics line")
    train.add_argument("--checkpoint-every", type=int, default=1000, help="steps per checkpoint")
    train.add_argument("--eval-n", type=int, default=0, help="after training, print W2 on this many samples (0: skip)")
    train.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    train.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")
    train.set_defaults(func=_train)

    for name, helptext, func in (("sample", "draw samples from a checkpoint", _sample),
                                 ("eval", "W2 of a checkpoint's samples against the target (JSON)", _eval)):
        p = sub.add_parser(name, help=helptext, description=helptext, formatter_class=defaults)
        p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by `python -m flowfast train`")
        p.add_argument("--n", type=_positive, default=2000 if name == "eval" else 1000, help="number of samples")
        p.add_argument("--steps", type=_positive, default=100, help="solver steps (fixed-step methods)")
        p.add_argument("--method", default="euler", choices=METHODS, help="ODE solver")
        p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
        p.add_argument("--seed", type=_seed, default=None, help="seed for the source samples (default: fixed per run)")
        p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
        if name == "sample":
            p.add_argument("--out", default="samples.pt", help="output file: a (n, d) tensor (.pt) or array (.npy)")
        p.set_defaults(func=func)

    demo = sub.add_parser("demo", formatter_class=defaults,
                          help="I-CFM vs OT-CFM on N(0,I) -> 8 gaussians: W2 / NFE table and a plot",
                          description="Train I-CFM and OT-CFM (sigma 0.1, MLP 3x64) on N(0, I) -> 8 gaussians, "
                                      "print W2 for 1/2/4/8/100 Euler steps and dopri5 with the NFE, write "
                                      "OUT/demo.png and OUT/results.json. --coupling runs the exact-OT "
                                      "pairing demo instead.")
    demo.add_argument("--coupling", action="store_true", help="run the exact-OT pairing demo instead")
    demo.add_argument("--steps", type=_positive, default=12000, help="training steps per model")
    demo.add_argument("--batch-size", type=_positive, default=256, help="training minibatch")
    demo.add_argument("--n-eval", type=_positive, default=2000, help="samples per W2 eval set")
    demo.add_argument("--eval-sets", type=_positive, default=3, help="independent eval sets averaged per W2")
    demo.add_argument("--n", type=_positive, default=1024, help="--coupling: minibatch size")
    demo.add_argument("--seed", type=_seed, default=0)
    demo.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    demo.add_argument("--out", default="runs/demo", help="output folder")
    demo.add_argument("--threads", type=int, default=1, help="torch threads (0: keep torch's default)")
    demo.add_argument("--no-progress", action="store_true", help="no progress lines")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import pickle

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, EOFError, OverflowError, MemoryError, pickle.UnpicklingError,
            RuntimeError) as exc:
        # One line, no traceback: bad arguments, unreadable or foreign files, an allocation failure.
        kind = "" if isinstance(exc, ValueError) else f"{type(exc).__name__}: "
        print(f"{parser.prog} {args.command}: error: {kind}{exc}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
