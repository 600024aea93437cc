"""``ppokit package``: a run as a directory for a model hub (the work is :func:`ppokit.hub.package.package_run`)."""

from __future__ import annotations

import argparse
from typing import Any

from ppokit.hub.package import DEFAULT_LICENSE, package_run


def add_parser(sub: Any) -> None:
    """Register ``ppokit package`` on the CLI's subparsers."""
    p = sub.add_parser(
        "package", help="a trained model as a directory for a model hub: weights, config, model card",
        description="Write OUT_DIR for a model hub: the run's weights (safetensors) and config, its evaluation, "
        "the learning curves and a model card (README.md). Control runs load with PPO.load(OUT_DIR); "
        "RLHF, SFT and reward runs are save_pretrained directories. Push it with huggingface_hub: "
        "hf upload <user>/<repo> OUT_DIR",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (control, RLHF PPO, SFT or reward)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the directory to write (must not exist or be empty)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true",
                       help="control runs: the policy of the best periodic evaluation (RUN_DIR/best), not the final one")
    which.add_argument("--checkpoint", action="store_true",
                       help="the latest checkpoint's weights, for a run stopped before its end")
    p.add_argument("--license", default=DEFAULT_LICENSE, help=f"the card's license id (default {DEFAULT_LICENSE})")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR (once the new one is complete)")


def run(args: argparse.Namespace) -> int:
    from ppokit.io.run_info import refuse_group

    refuse_group(args.run_dir, "package")
    out = package_run(args.run_dir, args.out_dir, overwrite=args.overwrite, license=args.license, best=args.best,
                      checkpoint=args.checkpoint)
    print(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    print(f"push it with: hf upload <user>/<repo> {out}")
    return 0
