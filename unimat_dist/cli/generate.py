"""``unimat serve`` (start the generation service) and ``unimat generate`` (its command-line client).

    unimat serve --checkpoint out/train_tiny_cpu                         # http://127.0.0.1:8000, Ctrl-C stops
    unimat serve --checkpoint s3://bucket/run/inference.pt --port 8080 --max-batch-size 64 --num-replicas 2
    unimat generate --url http://127.0.0.1:8000 --num 8 --composition SrTiO3 --steps 50 --out out/srtio3
    unimat generate --url http://127.0.0.1:8000 --num 4 --property heat_ref=-0.5 --guidance 1.0 --format json
    unimat generate --url http://127.0.0.1:8000 --info                  # model, limits, batching settings

``unimat generate`` writes ``<out>/<id>_<k>.cif`` (or ``<out>/<id>.json``) plus ``<out>/<id>.response.json``
and prints one summary line. For production, deploy with ``serve deploy deploy/serve_config.yaml``
or the KubeRay manifest (docs/generation.md).
"""
from __future__ import annotations

import argparse


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
    return out


def start_service(settings: dict, *, host: str = "127.0.0.1", port: int = 8000, route_prefix: str = "/",
                  num_replicas: int = 1, cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0,
                  name: str = "unimat", ray_address: str | None = None, num_cpus: int | None = None) -> str:
    """Start (or connect to) Ray, start Serve's HTTP proxy on ``host:port``, deploy the app; returns its URL.

    Serve keeps its first ``http_options`` for the life of the Ray cluster: on a cluster where Serve
    already runs, ``host``/``port`` are those of the running proxy.
    """
    import ray
    from ray import serve

    from deploy.app import application

    import os

    if not ray.is_initialized():
        address = ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:  # "local": a new cluster, never an unrelated `ray start` cluster found on this machine
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    app = application(settings, num_replicas=num_replicas,
                      ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    serve.run(app, name=name, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def run_serve(args) -> int:
    import logging
    import time

    from ray import serve

    url = start_service(_settings(args), host=args.host, port=args.port, route_prefix=args.route_prefix,
                        num_replicas=args.num_replicas, cpus_per_replica=args.cpus_per_replica,
                        gpus_per_replica=args.gpus_per_replica, ray_address=args.ray_address, num_cpus=args.num_cpus)
    log = logging.getLogger("unimat.serve")
    log.info("serving %s at %s (POST /v1/generate, GET /v1/model, /healthz, /docs); Ctrl-C stops", args.checkpoint, url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("shutting down")
    finally:
        serve.shutdown()
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
        steps=args.steps, eta=args.eta, seed=args.seed, format=args.format,
    )
    files = write_response(r, args.out) if args.out else []
    v = r["validity"]
    logging.getLogger("unimat.generate").info(
        "%d crystals (%d decoded, %d structurally valid, %d valid, %d match the request) from step %s, seed %d, "
        "in %.2f s%s", v["count"], v["decoded"], v["structure_valid"], v["valid"], v["matches_request"],
        r["model"]["step"], r["seed"], r["timing"]["total_s"],
        f" -> {Path(args.out)} ({len(files)} files)" if files else "")
    return 0


def write_response(response: dict, out: str) -> list:
    """Write a ``/v1/generate`` response: one CIF per decoded crystal (or one JSON of all), plus the
    response itself; returns the paths."""
    import json
    from pathlib import Path

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rid = response["id"][:12]
    files = []
    if response["format"] == "cif":
        for s in response["structures"]:
            if s.get("cif"):
                path = out_dir / f"{rid}_{s['index']:04d}.cif"
                path.write_text(s["cif"])
                files.append(path)
    else:
        path = out_dir / f"{rid}.json"
        path.write_text(json.dumps([s.get("structure") for s in response["structures"]], indent=1))
        files.append(path)
    meta = out_dir / f"{rid}.response.json"
    meta.write_text(json.dumps(response, indent=1))
    return files + [meta]
