"""Command line: ``python -m flowfast <command>`` (``<command> --help`` for the options).

Commands:
    info     print the build and device information
    train    train a flow-matching MLP (--method cfm) or a few-step flow map (--method lsd|esd|psd|distill)
             on a 2D toy or your own data (--data PATH.npy|.pt); JSONL metrics, checkpoints, --resume
    sample   draw samples from a checkpoint (flow maps: --steps K jumps; velocity models: an ODE solver)
    eval     exact W2 and NFE of a checkpoint's samples against the target (prints JSON)
    train-nf train a TarFlow normalizing flow, the teacher of NFM couplings (train --coupling nfm --teacher)
    demo     OT-CFM teacher -> LSD and distilled flow maps on N(0, I) -> 8 gaussians: W2 at 1/2/4/8
             steps next to the ODE, and a plot (--cfm: I-CFM vs OT-CFM; --coupling: exact-OT pairing)
"""

from __future__ import annotations

import argparse
import json
import math
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
OVERRIDABLE = ("path", "sigma", "source", "target", "data", "coupling", "batch_size", "lr", "ema_decay")


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
        raise ValueError(f"--resume cannot change {describe(fixed)} (the checkpoint's weights and optimizer belong to "
                         "that model and method); train into a new --out")
    if changed and not override:
        raise ValueError("--resume with a configuration that differs from the checkpoint's (" + describe(changed)
                         + "); rerun with the checkpoint's values, pass --override-config to apply the new ones, "
                         "or train into a new --out")
    return changed


def _run_config(args: argparse.Namespace) -> dict:
    """The JSON-able description of the run (flowfast.train.recipes) from the train options."""
    import torch

    from flowfast import data
    from flowfast.flowmaps import TEACHER_METHODS
    from flowfast.train.recipes import TOKEN_METHODS, flow_map_model

    config = {"method": args.method, "batch_size": args.batch_size, "lr": args.lr,
              "ema_decay": None if args.ema_decay <= 0 else args.ema_decay}
    if args.method in TOKEN_METHODS or args.task:
        return _categorical_config(args, config)
    if args.data:
        from flowfast.train.batches import load_array

        config.update(data=os.path.abspath(args.data), source=args.source)
        item_shape = tuple(load_array(args.data).shape[1:])
    else:
        config.update(source=args.source or "gaussian", target=args.target)
        item_shape = tuple(data.get_sampler(config["source"])(1, torch.Generator().manual_seed(0)).shape[1:])
    if args.method == "cfm":
        if args.coupling not in (None, "nfm"):
            raise ValueError("--coupling is for the flow-map methods and nfm; --method cfm pairs by its --path "
                             "(otcfm: exact OT, sbcfm: Sinkhorn, icfm: independent)")
        if args.coupling == "nfm":
            config.update(_nfm_options(args, config))
        elif args.teacher or args.nfm_draws:
            raise ValueError("--method cfm takes --teacher / --nfm-draws only with --coupling nfm")
        args.path = args.path or "otcfm"
        args.sigma = 0.1 if args.sigma is None else args.sigma
        if args.path == "fm" and (config["source"] or "gaussian") != "gaussian":
            raise ValueError("--path fm (Lipman's flow matching) starts from N(0, I): use --source gaussian")
        if len(item_shape) != 1 and config.get("coupling") != "nfm":
            raise ValueError(f"--method cfm trains a vector MLP; the data has samples of shape {item_shape}: "
                             "use a flow-map method (e.g. --method lsd, a U-Net for images)")
        model = {"dim": math.prod(item_shape), "hidden": args.hidden, "depth": args.depth, "time_embedding": True}
        if len(item_shape) != 1:  # an NFM student on images: the MLP on flattened pixels, as the teacher's data
            model["sample_shape"] = list(item_shape)
        config.update(path=args.path, sigma=args.sigma, model_kind="mlp", model=model)
        return config
    if args.coupling == "nfm" or args.nfm_draws:
        raise ValueError("--coupling nfm / --nfm-draws pair a --method cfm run (e.g. --path icfm); the flow maps pair by "
                         "independent, exact or sinkhorn")
    if args.path is not None or args.sigma is not None:
        raise ValueError(f"--path and --sigma are for --method cfm; the flow maps (--method {args.method}) train on "
                         "the straight interpolant (1 - t) x0 + t x1 without noise; pair with --coupling")
    kind, model = flow_map_model(item_shape, args.hidden, args.depth)
    config.update(model_kind=kind, model=model, coupling=args.coupling or "independent", loss_weight=args.loss_weight)
    needs_teacher = args.method in TEACHER_METHODS
    if needs_teacher and not args.teacher:
        raise ValueError(f"--method {args.method} distils a teacher: pass --teacher CHECKPOINT (e.g. of an otcfm run)")
    if args.teacher and not needs_teacher:
        raise ValueError(f"--teacher is for the distillation methods; --method {args.method} trains without one")
    if args.teacher:
        from flowfast.train import read_checkpoint

        if read_checkpoint(args.teacher) is None:  # a garbage file is refused now, not at the first step
            raise ValueError(f"no teacher checkpoint at {args.teacher}")
        config["teacher"] = os.path.abspath(args.teacher)
    return config


def _nfm_options(args: argparse.Namespace, config: dict) -> dict:
    """--coupling nfm: the teacher checkpoint (a train-nf run), the path (default icfm, sigma 0: the
    paper's rectified-flow loss) and the N(0, I) source the flow's noise lives in."""
    if not args.teacher:
        raise ValueError("--coupling nfm needs --teacher CHECKPOINT (of a `python -m flowfast train-nf` run)")
    from flowfast.train import read_checkpoint

    teacher = read_checkpoint(args.teacher)
    if teacher is None:
        raise ValueError(f"no teacher checkpoint at {args.teacher}")
    if (teacher.get("config") or {}).get("method") != "tarflow":
        raise ValueError(f"--coupling nfm needs a TarFlow teacher (train-nf); {args.teacher} is a "
                         f"{(teacher.get('config') or {}).get('method', 'cfm')!r} run")
    if (config.get("source") or "gaussian") != "gaussian":
        raise ValueError("--coupling nfm pairs data with the flow's N(0, I) noise: use --source gaussian")
    if args.nfm_draws and not args.data:
        raise ValueError("--nfm-draws caches encodings per dataset row: it needs --data (a --target sampler never "
                         "repeats a sample)")
    if args.path in ("otcfm", "sbcfm"):
        raise ValueError(f"--path {args.path} couples by OT itself; --coupling nfm pairs through the teacher: use "
                         "--path icfm (the paper's rectified flow, the default), fm or vp")
    args.path = args.path or "icfm"
    args.sigma = 0.0 if args.sigma is None else args.sigma
    return {"coupling": "nfm", "teacher": os.path.abspath(args.teacher), "nfm_draws": args.nfm_draws}


def _categorical_config(args: argparse.Namespace, config: dict) -> dict:
    """A categorical flow map (--method vfm/csd/ecld) or a discrete flow model (--method
    dfm/pairflow) on a token task (--task)."""
    from flowfast.categorical.tasks import get_task
    from flowfast.train.recipes import DISCRETE_METHODS, TOKEN_METHODS

    if args.method not in TOKEN_METHODS:
        raise ValueError(f"--task trains a categorical flow map or a discrete flow model: use --method "
                         f"{' / '.join(TOKEN_METHODS)}, not {args.method}")
    if not args.task:
        raise ValueError(f"--method {args.method} trains on token sequences: pass --task (markov, brackets, digits)")
    given = [flag for flag, value in (("--data", args.data), ("--path", args.path), ("--sigma", args.sigma),
                                      ("--coupling", args.coupling), ("--teacher", args.teacher),
                                      ("--nfm-draws", args.nfm_draws),
                                      ("--loss-weight", args.loss_weight)) if value]
    if given:
        raise ValueError(f"{', '.join(given)} do not apply to the categorical methods (--method {args.method})")
    task = get_task(args.task)
    kind = "discrete_transformer" if args.method in DISCRETE_METHODS else "simplex_transformer"
    config.update(task=args.task, task_size=args.task_size, model_kind=kind,
                  model={"vocab": task.vocab, "length": task.length, "width": args.hidden, "depth": args.depth,
                         "heads": 4})
    return config


def _train(args: argparse.Namespace) -> int:
    import torch

    from flowfast.train import Trainer
    from flowfast.train.recipes import build_run

    config = _run_config(args)
    device = _device(args.device)
    model, objective, source, target = build_run(config, device=device, seed=args.seed)
    overridden = _check_resume_config(args.out, config, args.override_config) if args.resume else []
    trainer = Trainer(model, objective, source, target,
                      optimizer=torch.optim.AdamW(model.to(device).parameters(), lr=args.lr, weight_decay=1e-5),
                      batch_size=args.batch_size, ema_decay=config["ema_decay"], seed=args.seed, device=device,
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
        summary["eval"] = trainer.evaluate(n=args.eval_n, **_sampler_options(trainer, None, None))
    print(json.dumps(summary))
    return 0


def _sampler_options(trainer, method, steps) -> dict:
    """The run's default sampler (a flow map: 4 jumps; a velocity model: Euler, 100 steps) unless given."""
    from flowfast.train.objectives import resolve_sampler

    if method == "map" and not callable(getattr(trainer.path, "sample", None)):
        raise ValueError("--method map composes a flow map; this checkpoint is a velocity model: use an ODE method")
    method, steps = resolve_sampler(trainer.path, method, steps)
    return {"method": method, "steps": steps}


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
    options = _sampler_options(trainer, args.method, args.steps)
    result = trainer.sample(args.n, ema=not args.no_ema, generator=_generator(args.seed), **options)
    x = result.x.cpu()
    if trainer.config.get("task") and x.is_floating_point():
        x = x.argmax(-1)  # categorical: the tokens (n, L) of the final endpoint distributions
    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    if args.out.endswith(".npy"):
        import numpy as np

        np.save(args.out, x.numpy())
    else:
        torch.save(x, args.out)
    print(json.dumps({"out": args.out, "shape": list(x.shape), "nfe": result.nfe, "method": options["method"],
                      "steps": None if options["method"] == "dopri5" else options["steps"],
                      "checkpoint_step": trainer.step}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    trainer = _load(args)
    options = _sampler_options(trainer, args.method, args.steps)
    report = trainer.evaluate(n=args.n, ema=not args.no_ema, generator=_generator(args.seed), **options)
    if trainer.config.get("task"):  # categorical: also the task's exact metrics
        from flowfast.categorical.tasks import get_task

        tokens = trainer.sample(args.n, ema=not args.no_ema, generator=_generator(args.seed), **options).x
        tokens = tokens.argmax(-1) if tokens.is_floating_point() else tokens
        report["task"] = get_task(trainer.config["task"]).evaluate(tokens)
    print(json.dumps(report))
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.coupling:
        from flowfast.demo import run_pairing_demo

        run_pairing_demo(n=args.n, seed=args.seed, out_dir=args.out, device=_device(args.device))
        return 0
    options = dict(batch_size=args.batch_size, n_eval=args.n_eval, eval_sets=args.eval_sets, seed=args.seed,
                   out_dir=args.out, device=_device(args.device), progress=not args.no_progress,
                   threads=args.threads or None)
    if args.cfm:
        from flowfast.demo import run_training_demo

        run_training_demo(steps=args.steps or 12000, **options)
        return 0
    from flowfast.demo import run_flowmap_demo

    run_flowmap_demo(teacher_steps=args.steps or 8000, map_steps=args.steps or 8000, **options)
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
    from flowfast.flowmaps import OBJECTIVES
    from flowfast.train import PATHS
    from flowfast.train.recipes import TOKEN_METHODS

    parser = argparse.ArgumentParser(prog="python -m flowfast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build and device information").set_defaults(func=_info)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    train = sub.add_parser("train", help="train a flow-matching model or a flow map", formatter_class=defaults,
                           description="Train an MLP velocity field on a CFM path (--method cfm) or a few-step flow "
                                       "map (--method lsd, esd, psd, psd-u, or distill/emd/pfmm from --teacher) between "
                                       "two 2D toys or from N(0, I) noise to your own data (--data). Writes "
                                       "OUT/metrics.jsonl, OUT/config.json and OUT/checkpoint.pt (atomic); --resume "
                                       "continues from the checkpoint with the same losses as an uninterrupted run. "
                                       "--steps is the total.")
    train.add_argument("--method", default="cfm", choices=["cfm", *sorted(OBJECTIVES), *TOKEN_METHODS],
                       help="cfm: a velocity model on --path; vfm/csd/ecld: a categorical flow map on --task "
                            "(flowfast.categorical); dfm/pairflow: a uniform-source discrete flow model on --task, "
                            "on independent or PairFlow pairs (flowfast.discrete); the others train a flow map "
                            "X_{s,t} (flowfast.flowmaps)")
    train.add_argument("--task", default=None, choices=["markov", "brackets", "digits"],
                       help="vfm/csd/ecld/dfm/pairflow: the token task (flowfast.categorical.tasks) to train on")
    train.add_argument("--task-size", type=int, default=20000, help="--task: training sequences (digits: its split)")
    train.add_argument("--source", default=None, choices=sorted(SAMPLERS),
                       help="x0 distribution (t=0); default gaussian, or N(0, I) shaped like --data")
    train.add_argument("--target", default="8gaussians", choices=sorted(SAMPLERS), help="x1 distribution (t=1)")
    train.add_argument("--data", default=None, metavar="PATH",
                       help="train on your own x1 rows instead of --target: a .npy or .pt file of shape (N, d) or "
                            "(N, C, H, H) images (flow maps get a U-Net)")
    train.add_argument("--path", default=None, choices=sorted(PATHS),
                       help="--method cfm: icfm, otcfm (exact minibatch OT, the default), sbcfm (Schrodinger bridge), "
                            "fm (Lipman), vp")
    train.add_argument("--sigma", type=float, default=None, help="--method cfm: path noise (default 0.1; sigma_min for fm)")
    train.add_argument("--coupling", default=None, choices=["independent", "exact", "sinkhorn", "nfm"],
                       help="flow maps: how each batch is paired (default independent); nfm (--method cfm): pair "
                            "each data sample with its noise under the TarFlow --teacher (flowfast.nfm)")
    train.add_argument("--teacher", default=None, metavar="CHECKPOINT",
                       help="distill/lmd/emd/pfmm: the checkpoint of the velocity to distil (e.g. an otcfm run); "
                            "--coupling nfm: a train-nf checkpoint")
    train.add_argument("--nfm-draws", type=_positive, default=None,
                       help="--coupling nfm with --data (vectors, or images: an MLP on flattened pixels): cache this "
                            "many teacher encodings per data row")
    train.add_argument("--loss-weight", action="store_true", help="flow maps: learn the two-time loss weight w_{s,t}")
    train.add_argument("--steps", type=int, default=20000, help="total optimizer steps")
    train.add_argument("--batch-size", type=int, default=512)
    train.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (weight decay 1e-5)")
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--hidden", type=int, default=64, help="MLP width (vector data); transformer width (--task)")
    train.add_argument("--depth", type=int, default=3, help="MLP hidden layers (vector data); blocks (--task)")
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

    from flowfast.nfm.cli import add_parser as add_train_nf

    add_train_nf(sub, defaults)
    for name, helptext, func in (("sample", "draw samples from a checkpoint", _sample),
                                 ("eval", "W2 of a checkpoint's samples against the target (JSON)", _eval)):
        p = sub.add_parser(name, help=helptext, description=helptext, formatter_class=defaults)
        p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by `python -m flowfast train`")
        p.add_argument("--n", type=_positive, default=2000 if name == "eval" else 1000, help="number of samples")
        p.add_argument("--steps", type=_positive, default=None,
                       help="flow maps: jumps of the map (default 4); ODE: fixed solver steps (default 100)")
        p.add_argument("--method", default=None, choices=["map", "ancestral", *METHODS],
                       help="map (flow maps, the default for them), ancestral / euler (discrete flow models: "
                            "default ancestral, 32 steps) or an ODE solver (default euler)")
        p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
        p.add_argument("--seed", type=_seed, default=None, help="seed for the source samples (default: fixed per run)")
        p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
        if name == "sample":
            p.add_argument("--out", default="samples.pt", help="output file: a (n, d) tensor (.pt) or array (.npy)")
        p.set_defaults(func=func)

    demo = sub.add_parser("demo", formatter_class=defaults,
                          help="flow maps on N(0,I) -> 8 gaussians: W2 at 1/2/4/8 steps next to the ODE, and a plot",
                          description="Train an OT-CFM teacher (MLP 3x64), then an LSD flow map and a map distilled "
                                      "from the teacher (FlowMapMLP 3x128) on N(0, I) -> 8 gaussians; print W2 and "
                                      "NFE at 1/2/4/8 jumps next to the teacher's Euler and dopri5, write "
                                      "OUT/demo.png and OUT/results.json. --cfm: I-CFM vs OT-CFM instead "
                                      "(OUT/cfm.png); --coupling: the exact-OT pairing demo.")
    demo.add_argument("--cfm", action="store_true", help="run the I-CFM vs OT-CFM demo instead")
    demo.add_argument("--coupling", action="store_true", help="run the exact-OT pairing demo instead")
    demo.add_argument("--steps", type=_positive, default=None,
                      help="training steps per model (default 8000; --cfm 12000)")
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
    except FloatingPointError as exc:  # the run diverged: one line, no traceback
        print(f"{parser.prog} {args.command}: error: training diverged: {exc} (a lower --lr may help)".splitlines()[0],
              file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, EOFError, OverflowError, MemoryError, pickle.UnpicklingError,
            RuntimeError) as exc:
        # One line, no traceback: bad arguments, unreadable or foreign files, an allocation failure.
        kind = "" if isinstance(exc, ValueError) else f"{type(exc).__name__}: "
        print(f"{parser.prog} {args.command}: error: {kind}{exc}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
