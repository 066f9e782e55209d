"""``unimat model``: inspect model presets.

    unimat model presets                          # parameter counts for the MP-20 tensor (L=20, 9 x 18)
    unimat model presets --dataset carbon_24      # ... for another data set's spec
    unimat model presets --flops                  # also forward GFLOPs per sample
    unimat model sampling checkpoints/carbon24_transformer_cpu.pt          # the sampler settings it carries
    unimat model sampling in.pt --sampler ddpm --steps 100 --noise-scale 0.3 --out out.pt   # a copy with new ones
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect model presets (parameter counts, FLOPs)")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    pp = msub.add_parser("presets", help="print every preset with its parameter count")
    pp.add_argument("--dataset", default="mp_20", help="data set whose UniMat spec (L, H, W) sizes the model")
    pp.add_argument("--properties", type=int, default=1, help="number of conditioning properties")
    pp.add_argument("--flops", action="store_true", help="also count forward FLOPs per sample (slower)")
    pp.set_defaults(func=run_presets)
    ps = msub.add_parser("sampling", help="print, or write a copy of a checkpoint with, its default sampler settings")
    ps.add_argument("checkpoint", help="inference checkpoint (file, run/checkpoint directory or fsspec URI)")
    ps.add_argument("--sampler", choices=("ddim", "ddpm"))
    ps.add_argument("--steps", type=int)
    ps.add_argument("--eta", type=float)
    ps.add_argument("--noise-scale", type=float)
    ps.add_argument("--clear", action="store_true", help="drop the defaults (back to DDIM-100, eta 0, noise scale 1)")
    ps.add_argument("--out", help="new checkpoint file to write (with its .sha256); required to change anything")
    ps.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ps.set_defaults(func=run_sampling)


def preset_table(dataset: str = "mp_20", num_properties: int = 1, flops: bool = False) -> list[dict]:
    """[{preset, params, ...}] for every preset, built on the meta device (no memory, no time)."""
    import torch

    from unimat_dist.model import PRESETS, build_unet
    from unimat_dist.training.config import DataConfig
    from unimat_dist.training.setup import resolve_spec

    spec = resolve_spec(DataConfig(dataset=dataset))
    rows = []
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            net = build_unet(cfg, spec, num_properties)
        row = {
            "preset": name,
            "params": net.num_params(),
            "dim": cfg.dim,
            "dim_mults": list(cfg.dim_mults),
            "res_blocks": cfg.num_res_blocks,
            "attn_levels": list(cfg.attn_levels),
            "spec": spec.describe(),
        }
        if flops:
            row["gflops_fwd_per_sample"] = net.flops_per_sample() / 1e9
        rows.append(row)
    return rows


def run_presets(args) -> int:
    rows = preset_table(args.dataset, args.properties, args.flops)
    print(f"presets for {rows[0]['spec']}, {args.properties} conditioning propert{'y' if args.properties == 1 else 'ies'}")
    header = f"{'preset':<8}{'params':>14}  {'dim':>4}  {'mults':<14}{'blocks':>6}  {'attn':<10}"
    if args.flops:
        header += f"{'GFLOP/sample':>14}"
    print(header)
    for r in rows:
        line = (f"{r['preset']:<8}{r['params']:>14,}  {r['dim']:>4}  {str(tuple(r['dim_mults'])):<14}"
                f"{r['res_blocks']:>6}  {str(tuple(r['attn_levels'])):<10}")
        if args.flops:
            line += f"{r['gflops_fwd_per_sample']:>14.2f}"
        print(line)
    return 0


def run_sampling(args) -> int:
    """Sampling defaults travel inside the checkpoint (``"sampling"``), so `unimat sample`, `unimat results
    evaluate` and the service sample a released model the way it was measured unless told otherwise."""
    import json
    from pathlib import Path

    from unimat_dist.sampling.checkpoint import load_inference_checkpoint, sampling_defaults, save_inference_checkpoint

    payload = load_inference_checkpoint(args.checkpoint)
    given = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("eta", args.eta),
                               ("noise_scale", args.noise_scale)) if v is not None}
    if not given and not args.clear:
        print(json.dumps(payload["sampling"]))
        return 0
    if not args.out:
        raise SystemExit("--out is required to write new sampling defaults (the input checkpoint is never modified)")
    out = Path(args.out)
    if Path(payload["path"]).resolve() == out.resolve():
        raise SystemExit(f"--out {out} is the input checkpoint; write a new file")
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    new = {} if args.clear else dict(payload["sampling"])
    new.update(given)
    payload["sampling"] = sampling_defaults(new, "--sampler/--steps/--eta/--noise-scale")
    payload.pop("path", None)
    digest = save_inference_checkpoint(payload, str(out))
    print(json.dumps({"checkpoint": str(out), "sha256": digest, "sampling": payload["sampling"]}))
    return 0
