"""``python -m flowfast train-nf``: train a TarFlow teacher for NFM couplings (see flowfast/__main__.py
for the other commands, and ``train --coupling nfm --teacher PATH`` for the student)."""

from __future__ import annotations

import argparse
import json
import os

__all__ = ["add_parser", "train_nf"]


def _config(args: argparse.Namespace) -> dict:
    import torch

    from flowfast import data
    from flowfast.nfm import TarFlow
    from flowfast.nfm.objective import check_eta

    check_eta(args.eta)
    if args.grad_clip < 0 or args.warmup < 0:
        raise ValueError(f"--grad-clip and --warmup must be >= 0 (0: off), got {args.grad_clip} and {args.warmup}")
    if args.data:
        from flowfast.train.batches import load_array

        shape = tuple(load_array(args.data).shape[1:])
        where = {"data": os.path.abspath(args.data), "source": None}
    else:
        shape = tuple(data.get_sampler(args.target)(1, torch.Generator().manual_seed(0)).shape[1:])
        where = {"target": args.target, "source": None}
    flow = TarFlow(shape, patch=args.patch if len(shape) == 3 else None,
                   token_dim=args.token_dim if len(shape) == 1 else None, width=args.width, blocks=args.blocks,
                   layers=args.layers, heads=args.heads)
    return {"method": "tarflow", "model_kind": "tarflow", "model": flow.config, "eta": args.eta,
            "batch_size": args.batch_size, "lr": args.lr, "ema_decay": None if args.ema_decay <= 0 else args.ema_decay,
            "grad_clip": None if args.grad_clip <= 0 else args.grad_clip, "warmup_steps": args.warmup, **where}


def train_nf(args: argparse.Namespace) -> int:
    import torch

    from flowfast.__main__ import _check_resume_config, _device
    from flowfast.train import Trainer
    from flowfast.train.recipes import build_run

    config = _config(args)
    device = _device(args.device)
    model, objective, source, target = build_run(config, device=device, seed=args.seed)
    overridden = _check_resume_config(args.out, config, args.override_config) if args.resume else []
    optimizer = torch.optim.AdamW(model.to(device).parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=1e-4)
    trainer = Trainer(model, objective=objective, source=source, target=target, optimizer=optimizer,
                      batch_size=args.batch_size, ema_decay=config["ema_decay"], seed=args.seed, device=device,
                      log_every=args.log_every, out_dir=args.out, checkpoint_every=args.checkpoint_every,
                      progress=not args.no_progress, config=config, grad_clip=config["grad_clip"],
                      warmup_steps=args.warmup)
    if "lr" in overridden:
        trainer.lr_override = args.lr
    losses = trainer.train(args.steps, resume=args.resume)
    summary = {"step": trainer.step, "steps_run": len(losses), "last_loss": losses[-1] if losses else None,
               "checkpoint": trainer.checkpoint_path, "metrics": trainer.metrics_path}
    if args.eval_n:
        summary["eval"] = trainer.evaluate(n=args.eval_n)
    print(json.dumps(summary))
    return 0


def add_parser(sub, formatter_class) -> None:
    from flowfast.data import SAMPLERS

    p = sub.add_parser("train-nf", formatter_class=formatter_class,
                       help="train a TarFlow normalizing flow (the teacher of NFM couplings)",
                       description="Maximum-likelihood training of a TarFlow (flowfast.nfm) on noise-augmented "
                                   "data x + eta * eps (a 2D toy --target, or --data rows / (N, C, H, W) images). "
                                   "The recipe TarFlow needs: AdamW (0.9, 0.95), a learning-rate warm-up, "
                                   "gradient clipping and an EMA of the weights. Then: `python -m flowfast train "
                                   "--coupling nfm --teacher OUT/checkpoint.pt`.")
    p.add_argument("--target", default="8gaussians", choices=sorted(SAMPLERS), help="the 2D toy to model")
    p.add_argument("--data", default=None, metavar="PATH", help="a .npy/.pt file of (N, d) rows or (N, C, H, W) images")
    p.add_argument("--eta", type=float, default=0.05, help="noise augmentation std (TarFlow's noise_std)")
    p.add_argument("--patch", type=int, default=4, help="images: patch size (must divide H and W)")
    p.add_argument("--token-dim", type=int, default=1, help="vectors: numbers per token (must divide d)")
    p.add_argument("--width", type=int, default=64, help="transformer width")
    p.add_argument("--blocks", type=int, default=4, help="affine blocks (alternating token order), >= 2")
    p.add_argument("--layers", type=int, default=2, help="causal transformer layers per block")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--steps", type=int, default=5000, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=int, default=200, help="learning-rate warm-up steps")
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip (0: none)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (0: no EMA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/tarflow", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    p.add_argument("--override-config", action="store_true", help="with --resume: accept a changed batch size / lr")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--eval-n", type=int, default=0, help="after training, print the samples' W2 on this many (0: skip)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=train_nf)

