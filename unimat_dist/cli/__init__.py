"""The ``unimat`` command line.

Every module in this package that defines ``register(subparsers)`` adds its subcommands; a subcommand
stores its handler with ``parser.set_defaults(func=handler)``, and the handler takes the parsed
``argparse.Namespace`` and returns an exit code (or None for 0). Modules import heavy dependencies
(torch, Ray, pymatgen) inside their handlers so that ``unimat --help`` stays fast.

    unimat --help
    unimat stats --dataset perov_5
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys


def _version() -> str:
    from unimat_dist import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimat", description="UniMat crystal diffusion on Ray")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ...)")
    parser.add_argument("--version", action="version", version=f"unimat-dist {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from unimat_dist.cpu_threads import configure  # threads from the CPUs this process has

    configure(getattr(args, "threads", None), what=f"unimat {args.command}")
    try:
        from unimat_dist.config.job_paths import resolve_output_flags  # --out inside `ray job submit`

        resolve_output_flags(args)
        rc = args.func(args)
    except ModuleNotFoundError as exc:  # an optional dependency (extra) this subcommand needs is not installed
        from unimat_dist.extras import missing_extra_message

        message = missing_extra_message(exc, args.command)
        if message is None or logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(f"unimat {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:  # user errors: one clear line, no traceback
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(f"unimat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
