"""``unimat model``: inspect model presets.

    unimat model presets                          # parameter counts for the MP-20 tensor (L=20, 9 x 18)
    unimat model presets --dataset carbon_24      # ... for another data set's spec
    unimat model presets --flops                  # also forward GFLOPs per sample
    unimat model sampling checkpoints/carbon24_transformer_cpu.pt          # the sampler settings it carries
    unimat model sampling in.pt --sampler ddpm --steps 100 --noise-scale 0.3 --out out.pt   # a copy with new ones
    unimat model sampling run/checkpoints/step_00010000 --autoguide-with run/checkpoints/step_00006000 \
        --autoguidance 2 --out out.pt      # a copy that extrapolates away from the earlier network
"""
from __future__ import annotations

import argparse

from .sample import parse_restart


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
    ps.add_argument("--restart", type=parse_restart, metavar="T:K",
                    help="restart pass: noise to timestep T, K deterministic steps back ('none': drop it)")
    ps.add_argument("--distinct-compositions", choices=("on", "off"),
                    help="unconditional draws avoid repeating a composition (model/composition.py: sample_distinct)")
    ps.add_argument("--autoguide-with", metavar="CKPT",
                    help="an earlier checkpoint of the same run to guide with (diffusion/autoguidance.py); "
                         "its weights travel inside the new file")
    ps.add_argument("--autoguidance", type=float, metavar="W",
                    help="autoguidance weight in [0, 10] (0 removes the guide network)")
    ps.add_argument("--autoguidance-max-t", type=int, metavar="T",
                    help="guide only at timesteps t <= T, the low-noise end (default: every t; -1: every t)")
    ps.add_argument("--clear", action="store_true",
                    help="drop the defaults and any guide network (back to DDIM-100, eta 0, noise scale 1)")
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

    from unimat_dist.inference.checkpoint import (
        autoguidance_summary,
        load_inference_checkpoint,
        sampling_defaults,
        save_inference_checkpoint,
    )

    payload = load_inference_checkpoint(args.checkpoint)
    given = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("eta", args.eta),
                               ("noise_scale", args.noise_scale)) if v is not None}
    if args.restart is not None:
        given["restart"] = list(args.restart) or None
    if args.distinct_compositions is not None:
        given["distinct_compositions"] = args.distinct_compositions == "on"
    guiding = args.autoguide_with is not None or args.autoguidance is not None or args.autoguidance_max_t is not None
    if not given and not args.clear and not guiding:
        print(json.dumps({"sampling": payload["sampling"], "autoguidance": autoguidance_summary(payload)}))
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
    new = {k: v for k, v in new.items() if v is not None}
    payload["sampling"] = sampling_defaults(new, "--sampler/--steps/--eta/--noise-scale/--restart",
                                            int(payload["diffusion"]["timesteps"]))
    if args.clear and not guiding:
        payload["autoguidance"] = None
    if guiding:
        payload["autoguidance"] = _autoguidance(payload, args.autoguide_with, args.autoguidance, args.autoguidance_max_t)
    if payload.get("autoguidance") is None:
        payload.pop("autoguidance", None)
    payload.pop("path", None)
    digest = save_inference_checkpoint(payload, str(out))
    print(json.dumps({"checkpoint": str(out), "sha256": digest, "sampling": payload["sampling"],
                      "autoguidance": autoguidance_summary(payload)}))
    return 0


def _autoguidance(payload: dict, guide_path: str | None, weight: float | None, max_t: int | None) -> dict | None:
    """The ``"autoguidance"`` entry of a checkpoint given a guide checkpoint, a weight and/or an interval:
    the guide must be the same model on the same data (architecture, spec, normalizer, diffusion) and
    trained less."""
    from unimat_dist.diffusion.autoguidance import check_max_t, check_weight
    from unimat_dist.inference.checkpoint import autoguidance_entry, load_inference_checkpoint

    entry = payload.get("autoguidance")
    if weight is not None:
        weight = check_weight(weight, "--autoguidance")
    # not given: keep the entry's interval; -1: every t; T >= 0: only t <= T
    interval = {} if max_t is None else {"max_t": None if max_t == -1 else check_max_t(max_t, "--autoguidance-max-t")}
    if guide_path is None:
        if entry is None:
            if weight or interval:
                raise SystemExit("--autoguidance needs a guide network: pass --autoguide-with CKPT")
            return None
        if weight == 0:
            return None
        return autoguidance_entry(dict(entry, **({"weight": weight} if weight is not None else {}), **interval),
                                  "--autoguidance")
    if weight is None:
        raise SystemExit("--autoguide-with needs --autoguidance W (e.g. 2)")
    if weight == 0:
        return None
    guide = load_inference_checkpoint(guide_path)
    for key in ("model", "spec", "normalizer", "diffusion", "properties"):
        if guide.get(key) != payload.get(key):
            raise SystemExit(f"{guide['path']} is not the same model as the checkpoint ({key} differs); "
                             "guide with an earlier checkpoint of the same run")
    step, guide_step = int(payload.get("step") or 0), int(guide.get("step") or 0)
    if guide_step >= step:
        raise SystemExit(f"the guide ({guide['path']}, step {guide_step}) must be trained less than the "
                         f"checkpoint (step {step})")
    return autoguidance_entry({"weight": weight, "state_dict": guide["state_dict"], "step": guide_step,
                               "weights": guide.get("weights", "ema"), **interval}, "--autoguide-with")
