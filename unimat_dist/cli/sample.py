"""``unimat sample``: generate crystals from a trained model's inference checkpoint.

    unimat sample --checkpoint out/train_tiny_cpu --num 16 --out out/samples
    unimat sample --checkpoint out/run/checkpoints/step_00010000/inference.pt --num 256 \
        --composition Fe2O3 --sampler ddim --steps 100 --out out/fe2o3
    unimat sample --checkpoint s3://bucket/run/inference.pt --num 64 --composition SrTiO3 --types-only \
        --property heat_ref=-0.5 --guidance 1.0 --format extxyz --out out/srtio3

Writes, per decoded sample ``sample_000042`` (``unimat_dist.crystal_files``): ``cif/<name>.cif`` (P1),
``cif_sym/<name>.cif`` (symmetrised, when a group above P1 is found), ``poscar/<name>.vasp``, one
multi-frame ``samples.extxyz`` whose frames carry the facts in ``atoms.info``; and for the run
``summary.csv`` (one row of facts per sample: formula, space group, density, shortest distance, validity
flags...; keys in ``unimat_dist.crystal_facts``) and ``summary.json`` (request, timings, how many decoded,
the same per-crystal rows under ``"crystals"``) and ``gallery/index.html``, the run's static offline gallery
(``unimat_dist.gallery``: thumbnails, filters, 3D viewer; ``--no-gallery`` skips it). ``--format cif`` writes only the P1 CIFs, ``--format
extxyz`` only samples.extxyz (the two tables always). ``--out`` must be new or empty: a folder that
already holds crystals would mix two runs. ``--overwrite`` replaces a previous ``unimat sample`` result
there, deleting only the files its summary.json lists and its gallery/ folder (when that holds only the files a
gallery build writes); any other content is refused, never deleted.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate crystals from an inference checkpoint")
    p.add_argument("--checkpoint", required=True, help="inference.pt, a checkpoint/run directory, or an fsspec URI")
    p.add_argument("--num", type=int, required=True, help="number of crystals")
    p.add_argument("--composition", default=None, help="e.g. Fe2O3 (default: unconditional)")
    p.add_argument("--types-only", action="store_true", help="condition on element types only, not exact counts")
    p.add_argument("--property", action="append", default=[], metavar="NAME=VALUE",
                   help="property target (raw units), repeatable; needs a property-conditioned model")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight w (0 = conditional model)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default=None,
                   help="default: the checkpoint's sampling defaults, else ddim (so for --steps, --eta, --noise-scale)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: 100 for DDIM, T for DDPM)")
    p.add_argument("--eta", type=float, default=None, help="DDIM stochasticity (0 = deterministic)")
    p.add_argument("--noise-scale", type=float, default=None,
                   help="multiplies the added noise (DDPM, or DDIM with --eta > 0); < 1: lower temperature, "
                        "more precise geometry, less diversity (default 1)")
    p.add_argument("--restart", type=parse_restart, default=None, metavar="T:K",
                   help="after the chain, noise the crystals to timestep T and take K deterministic steps back "
                        "(restart sampling; 'none': off; default: the checkpoint's)")
    p.add_argument("--autoguidance", type=float, default=None, metavar="W",
                   help="weight of the checkpoint's guide network (default: the checkpoint's; 0: off, half the cost)")
    p.add_argument("--distinct-compositions", choices=("on", "off"), default=None,
                   help="compositions drawn from the model's prior without repeats while it has new ones "
                        "(default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--format", choices=("all", "cif", "extxyz"), default="all",
                   help="all: P1 + symmetrised CIF, POSCAR and samples.extxyz (default); cif: P1 CIFs only; "
                        "extxyz: samples.extxyz only (summary.csv/json always)")
    p.add_argument("--symprec", type=float, default=0.1,
                   help="spglib tolerance (A) of the space groups in the table and the symmetrised CIFs")
    p.add_argument("--facts-workers", type=int, default=None,
                   help="processes computing the per-crystal facts of 2,000+ crystals (default: all CPUs; 1 = none)")
    p.add_argument("--no-gallery", action="store_true", help="do not write the run's gallery (gallery/index.html)")
    p.add_argument("--out", default="out/samples", help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous `unimat sample` result in --out (only the files it lists are removed)")
    p.set_defaults(func=run)


def parse_restart(text: str) -> tuple[int, ...]:
    """``--restart T:K`` -> (T, K); ``none`` -> () (no restart, whatever the checkpoint's default)."""
    import argparse

    if text.strip().lower() in ("none", "off", "0"):
        return ()
    t, sep, k = text.partition(":")
    try:
        return int(t), int(k)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T:K (e.g. 100:20) or none, got {text!r}") from None


def on_off(value: str | None) -> bool | None:
    """``on``/``off`` flags whose absence means "the checkpoint's setting"."""
    return None if value is None else value == "on"


def parse_properties(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--property {item!r} must look like NAME=VALUE")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--property {item!r}: {value!r} is not a number") from None
    return out


def sample_to_folder(
    checkpoint: str,
    num: int,
    out: str,
    *,
    composition: str | None = None,
    exact_counts: bool = True,
    properties: dict[str, float] | None = None,
    guidance: float = 0.0,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    noise_scale: float | None = None,
    restart: tuple[int, ...] | None = None,
    autoguidance: float | None = None,
    distinct_compositions: bool | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | None = None,
    precision: str = "auto",
    fmt: str = "all",
    progress: bool = True,
    overwrite: bool = False,
    symprec: float = 0.1,
    facts_workers: int | None = None,
    gallery: bool = True,
) -> dict:
    """Generate ``num`` crystals and write them plus summary.json into ``out``; returns the summary.
    Sampler settings left None come from the checkpoint's sampling defaults, then the library's."""
    import json
    import time
    import warnings
    from pathlib import Path

    from unimat_dist.crystal_facts import facts_table
    from unimat_dist.crystal_files import write_crystal_files, write_text_atomic
    from unimat_dist.generation.records import validity_flags
    from unimat_dist.inference import load_generator

    prepare_output(Path(out), overwrite)  # before minutes of sampling, not after
    t0 = time.perf_counter()
    g = load_generator(checkpoint, device=device, precision=precision, autoguidance=autoguidance)
    t_load = time.perf_counter() - t0
    settings = g.sampling_settings(sampler, steps, eta, noise_scale, restart)
    sampler, steps, eta, noise_scale, restart = (settings[k] for k in ("sampler", "steps", "eta", "noise_scale",
                                                                        "restart"))
    t0 = time.perf_counter()
    structures = g.sample(
        num, composition, exact_counts, properties or {}, guidance, sampler=sampler, steps=steps, eta=eta,
        noise_scale=noise_scale, restart=restart, seed=seed, batch_size=batch_size, progress=progress,
        distinct=distinct_compositions,
    )
    t_sample = time.perf_counter() - t0
    out_dir = Path(out)
    t0 = time.perf_counter()
    flags = [validity_flags(s, composition, exact_counts) for s in structures]
    facts = facts_table(structures, symprec=symprec, flags=flags, workers=facts_workers, progress=progress)
    t_facts = time.perf_counter() - t0
    files, rows = write_crystal_files(out_dir, structures, facts, formats=FORMATS[fmt], symprec=symprec,
                                      extxyz_name=EXTXYZ_NAME)
    with warnings.catch_warnings():  # pymatgen warns about electronegativities of exotic elements
        warnings.simplefilter("ignore")
        formulas = [s.composition.reduced_formula if s is not None else None for s in structures]
    summary = {
        "checkpoint": g.meta.get("path"),
        "checkpoint_step": g.meta.get("step"),
        "request": {
            "num": num, "composition": composition, "exact_counts": exact_counts, "properties": properties or {},
            "guidance": guidance, "sampler": sampler, "steps": steps, "eta": eta, "noise_scale": noise_scale,
            "restart": list(restart) if restart else None, "autoguidance": g.meta.get("autoguidance"), "seed": seed,
            "distinct_compositions": g.distinct_compositions if distinct_compositions is None else distinct_compositions,
        },
        "spec": g.spec.to_dict(),
        "num_decoded": sum(s is not None for s in structures),
        "failed_indices": [i for i, s in enumerate(structures) if s is None],
        "formulas": formulas,
        "compositions": [
            {str(e): int(n) for e, n in s.composition.get_el_amt_dict().items()} if s is not None else None
            for s in structures
        ],
        "load_seconds": t_load,
        "sample_seconds": t_sample,
        "structures_per_second": num / max(t_sample, 1e-9),
        "facts_seconds": t_facts,
        "device": str(g.device),
        "symprec": symprec,
        "files": {"table": CSV_NAME, "extxyz": EXTXYZ_NAME if "extxyz" in FORMATS[fmt] else None},
        "output": [str(f) for f in files],
        "crystals": rows,
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=1))
    if gallery:  # after summary.json, which it reads; never fails the run (a warning instead)
        from unimat_dist.gallery import write_gallery

        t0 = time.perf_counter()
        page = write_gallery(out_dir, out_dir / GALLERY_DIR, workers=facts_workers,
                             title=f"unimat sample: {out_dir.name}")
        summary["gallery"] = f"{GALLERY_DIR}/{page.name}" if page is not None else None
        summary["gallery_seconds"] = time.perf_counter() - t0
        write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


FORMATS = {"all": ("cif", "cif_sym", "poscar", "extxyz"), "cif": ("cif",), "extxyz": ("extxyz",)}
EXTXYZ_NAME = "samples.extxyz"
CSV_NAME = "summary.csv"
CRYSTAL_DIRS = {"cif": ".cif", "cif_sym": ".cif", "poscar": ".vasp"}  # folder -> suffix of its sample_* files
GALLERY_DIR = "gallery"  # the run's gallery (unimat_dist.gallery): replaced by --overwrite when it holds only its files


def _previous_outputs(out) -> list | None:
    """The files a previous ``unimat sample`` wrote into ``out`` (from its summary.json), else None."""
    import json
    from pathlib import Path

    try:
        summary = json.loads((out / "summary.json").read_text())
        listed = [Path(f) for f in summary["output"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    root = out.resolve()
    files = []
    for f in listed:  # by name only (summary paths were relative to the cwd of that run), as this command names them
        if f.name in (EXTXYZ_NAME, CSV_NAME) and f.parent.name not in CRYSTAL_DIRS:
            files.append(root / f.name)
        elif (f.parent.name in CRYSTAL_DIRS and f.name.startswith("sample_")
              and f.suffix == CRYSTAL_DIRS[f.parent.name]):
            files.append(root / f.parent.name / f.name)
        else:
            return None
    return files


def prepare_output(out, overwrite: bool) -> None:
    """Refuse an ``--out`` that holds anything, unless it is a previous sample result and ``overwrite``."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    previous = _previous_outputs(out)
    if previous is None:
        raise ValueError(f"--out {out} is not empty ({len(entries)} entries, e.g. {entries[0]!r}) and holds no "
                         "`unimat sample` result; choose a new or empty folder (nothing was written or deleted)")
    if not overwrite:
        raise ValueError(f"--out {out} already holds a `unimat sample` result ({len(previous)} files); new crystals "
                         "would mix with them. Choose a new folder, or pass --overwrite to replace that result")
    from unimat_dist.gallery import gallery_files, remove_gallery

    expected = {out.resolve() / "summary.json", *previous}
    dirs = [out.resolve() / d for d in CRYSTAL_DIRS]
    gallery = out.resolve() / GALLERY_DIR
    if gallery_files(gallery) is None:
        raise ValueError(f"--out {out}: {GALLERY_DIR}/ holds files a gallery build did not write; refusing to "
                         "overwrite there, choose a new folder (nothing was written or deleted)")
    extra = [p for p in out.resolve().iterdir()
             if p not in expected and not (p in dirs and p.is_dir()) and p != gallery]
    for d in dirs:
        extra += [p for p in d.iterdir() if p not in expected] if d.is_dir() else []
    if extra:
        raise ValueError(f"--out {out} holds files the previous `unimat sample` did not write (e.g. {extra[0].name!r}); "
                         "refusing to overwrite there, choose a new folder")
    remove_gallery(gallery)
    for f in previous:
        f.unlink(missing_ok=True)
    for d in dirs:
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    (out / "summary.json").unlink()
    import logging

    logging.getLogger("unimat.sample").info("--overwrite: removed the previous result's %d files from %s",
                                            len(previous), out)


def run(args) -> int:
    import logging

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = sample_to_folder(
        args.checkpoint, args.num, args.out, composition=args.composition, exact_counts=not args.types_only,
        properties=parse_properties(args.property), guidance=args.guidance, sampler=args.sampler, steps=args.steps,
        eta=args.eta, noise_scale=args.noise_scale, restart=args.restart,
        autoguidance=args.autoguidance, distinct_compositions=on_off(args.distinct_compositions), seed=args.seed,
        batch_size=args.batch_size, device=args.device, precision=args.precision,
        fmt=args.format, overwrite=args.overwrite, symprec=args.symprec, facts_workers=args.facts_workers,
        gallery=not args.no_gallery,
    )
    logging.getLogger("unimat.sample").info(
        "%d/%d decoded in %.1f s (%.2f structures/s) -> %s/summary.json",
        summary["num_decoded"], args.num, summary["sample_seconds"], summary["structures_per_second"], args.out,
    )
    if summary.get("gallery"):
        logging.getLogger("unimat.sample").info("gallery (%.1f s): %s/%s", summary["gallery_seconds"], args.out,
                                                summary["gallery"])
    return 0
