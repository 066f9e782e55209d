"""``unimat serve`` (start the generation service) and ``unimat generate`` (its command-line client).

    unimat serve --checkpoint out/train_tiny_cpu                         # http://127.0.0.1:8000, Ctrl-C / SIGTERM stop
    unimat serve --checkpoint checkpoints/perov5_transformer_cpu.pt --max-sample-steps 12800 --body-timeout 5
    unimat serve --checkpoint s3://bucket/run/inference.pt --port 8080 --max-batch-size 64 --num-replicas 2
    unimat generate --url http://127.0.0.1:8000 --num 8 --composition SrTiO3 --steps 50 --out out/srtio3
    unimat generate --url http://127.0.0.1:8000 --num 4 --property heat_ref=-0.5 --guidance 1.0 --format json
    unimat generate --url http://127.0.0.1:8000 --info                  # model, limits, batching settings

``unimat generate`` writes ``<out>/<id>_<k>.cif`` (or ``<out>/<id>.json``) plus ``<out>/<id>.response.json``
and prints one summary line; ``<id>`` is the response's id reduced to letters, digits, ``-`` and ``_``
(a server's answer never names a path outside ``--out``).
For production, deploy with ``serve deploy deploy/serve_config.yaml``
or the KubeRay manifest (docs/generation.md).
"""
from __future__ import annotations

import argparse

from .sample import parse_restart


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="start the generation service (Ray Serve) on this machine",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--checkpoint", required=True, help="inference.pt, a checkpoint/run directory, or a URI")
    s.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--route-prefix", default="/")
    s.add_argument("--num-replicas", type=int, default=1)
    s.add_argument("--cpus-per-replica", type=float, default=1.0)
    s.add_argument("--gpus-per-replica", type=float, default=0.0)
    s.add_argument("--ray-address", default=None, help="connect to this Ray cluster (default: start a local one)")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local Ray cluster")
    s.add_argument("--max-sample-steps", type=int, default=None, metavar="N",
                   help="compute budget of one request, num_samples x steps (default 6400)")
    s.add_argument("--body-timeout", type=float, default=None, metavar="SECONDS",
                   help="seconds a request body may take to arrive before a 408 (default 10)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="service setting (deploy/settings.py), repeatable: max_batch_size=64, torch_threads=4, ...")
    s.set_defaults(func=run_serve)

    g = sub.add_parser("generate", help="request crystals from a running generation service",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--url", default="http://127.0.0.1:8000", help="service URL")
    g.add_argument("--info", action="store_true", help="print the model/limits (GET /v1/model) and exit")
    g.add_argument("--num", type=int, default=1, help="number of crystals")
    g.add_argument("--composition", default=None, help="e.g. Fe2O3 (default: unconditional)")
    g.add_argument("--types-only", action="store_true", help="condition on element types only, not exact counts")
    g.add_argument("--property", action="append", default=[], metavar="NAME=VALUE", help="property target, repeatable")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight")
    g.add_argument("--sampler", choices=("ddim", "ddpm"), default=None)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--eta", type=float, default=None)
    g.add_argument("--noise-scale", type=float, default=None,
                   help="multiplies the added noise (< 1: lower temperature)")
    g.add_argument("--restart", type=parse_restart, default=None, metavar="T:K",
                   help="restart pass: noise to timestep T, K deterministic steps back ('none': off; default: the model's)")
    g.add_argument("--seed", type=int, default=None, help="default: random (the response says which)")
    g.add_argument("--format", choices=("cif", "json"), default="cif")
    g.add_argument("--out", default=None, help="folder for the structures (default: only print the summary)")
    g.add_argument("--timeout", type=float, default=300.0, help="seconds")
    g.set_defaults(func=run_generate)


def _settings(args) -> dict:
    out = {"checkpoint": args.checkpoint}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r} must look like KEY=VALUE")
        out[key.strip()] = value
    # the dedicated flags win over --set of the same setting
    if getattr(args, "max_sample_steps", None) is not None:
        out["max_sample_steps"] = args.max_sample_steps
    if getattr(args, "body_timeout", None) is not None:
        out["body_timeout_s"] = args.body_timeout
    return out


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def run_serve(args) -> int:
    """Serve until Ctrl-C or SIGTERM (what Kubernetes and systemd send), then shut Serve and Ray down.

    Without its own SIGTERM handler the process would die with Ray's (``sys.exit`` from ``ray.init``)
    and leave the local Ray's daemons to atexit; here both signals take the same path: Serve's
    applications are deleted, then ``ray.shutdown()`` stops the raylet, GCS and agents this process
    started (joining a cluster, it only disconnects).
    """
    import logging
    import signal
    import time

    import ray
    from ray import serve

    from deploy.app import start_service
    from unimat_dist.ray_local import init_ray

    log = logging.getLogger(__name__)  # under unimat_dist: the CLI's log configuration shows it
    signal.signal(signal.SIGTERM, _raise_terminated)  # also while starting: a pod can be stopped at any time
    try:
        settings = _settings(args)
        init_ray(args.ray_address, num_cpus=args.num_cpus)
        # ray.init replaced the handler with its own (sys.exit) and Ray's C++ failure handler, which on
        # SIGTERM prints a stack and can end the process with SIGABRT half-way through the shutdown
        signal.signal(signal.SIGTERM, _raise_terminated)
        url = start_service(settings, host=args.host, port=args.port, route_prefix=args.route_prefix,
                            num_replicas=args.num_replicas, cpus_per_replica=args.cpus_per_replica,
                            gpus_per_replica=args.gpus_per_replica, ray_address=args.ray_address,
                            num_cpus=args.num_cpus)
        log.info("serving %s at %s (POST /v1/generate, GET /v1/model, /healthz, /docs; the generation page: "
                 "open %s/ in a browser); Ctrl-C or SIGTERM stops", args.checkpoint, url, url)
        while True:
            # short sleeps: a signal that the kernel delivers to one of Ray's threads only sets a flag, which
            # the main thread acts on when it next runs Python code
            time.sleep(1.0)
    except KeyboardInterrupt as stop:
        log.info("%s: shutting down", "SIGTERM" if isinstance(stop, _Terminated) else "interrupted")
    finally:
        # a second SIGTERM (a supervisor repeating itself) must not cut the shutdown short; SIGKILL still can
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    return 0


def run_generate(args) -> int:
    import json
    import logging
    from pathlib import Path

    from unimat_dist.cli.sample import parse_properties
    from unimat_dist.generation.client import GenerationClient

    client = GenerationClient(args.url, timeout=args.timeout)
    if args.info:
        print(json.dumps(client.model(), indent=1))
        return 0
    r = client.generate(
        num_samples=args.num, composition=args.composition, exact_counts=not args.types_only,
        properties=parse_properties(args.property) or None, guidance=args.guidance, sampler=args.sampler,
        steps=args.steps, eta=args.eta, noise_scale=args.noise_scale, seed=args.seed, format=args.format,
        restart=None if args.restart is None else list(args.restart),
    )
    files = write_response(r, args.out) if args.out else []
    v = r["validity"]
    logging.getLogger("unimat.generate").info(
        "%d crystals (%d decoded, %d structurally valid, %d valid, %d match the request) from step %s, seed %d, "
        "in %.2f s%s", v["count"], v["decoded"], v["structure_valid"], v["valid"], v["matches_request"],
        r["model"]["step"], r["seed"], r["timing"]["total_s"],
        f" -> {Path(args.out)} ({len(files)} files)" if files else "")
    return 0


def safe_name(text, default: str = "response", limit: int = 12) -> str:
    """A file-name stem from text a server sent: letters, digits, ``-`` and ``_`` only (no separators,
    dots, NUL or drive letters), at most ``limit`` characters, ``default`` when nothing is left."""
    import re

    stem = re.sub(r"[^A-Za-z0-9_-]", "", str(text) if text is not None else "")[:limit]
    return stem or default


def write_response(response: dict, out: str) -> list:
    """Write a ``/v1/generate`` response: one CIF per decoded crystal (or one JSON of all), plus the
    response itself; returns the paths.

    The response comes from a server, which may be hostile: every name that becomes a path is reduced by
    ``safe_name`` (the crystal number is this client's own count), and each path is checked to lie in
    ``out`` before anything is written.
    """
    import json
    from pathlib import Path

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = out_dir.resolve()

    def inside(name: str) -> Path:
        path = out_dir / name
        if path.resolve().parent != root:  # defence in depth: safe_name already rules this out
            raise ValueError(f"refusing to write {name!r} outside {out_dir}")
        return path

    rid = safe_name(response.get("id"))
    structures = response.get("structures") or []
    files = []
    if response.get("format") == "cif":
        for k, s in enumerate(structures):
            cif = s.get("cif") if isinstance(s, dict) else None
            if isinstance(cif, str) and cif:
                path = inside(f"{rid}_{k:04d}.cif")
                path.write_text(cif)
                files.append(path)
    else:
        path = inside(f"{rid}.json")
        path.write_text(json.dumps([s.get("structure") if isinstance(s, dict) else None for s in structures],
                                   indent=1))
        files.append(path)
    meta = inside(f"{rid}.response.json")
    meta.write_text(json.dumps(response, indent=1))
    return files + [meta]
