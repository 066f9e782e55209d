"""Start or join Ray for a `unimat` command, with a new local Ray bound to 127.0.0.1 by default.

Ray binds its GCS, raylets and object store to the machine's network address unless told otherwise, and
ignores ``--node-ip-address=127.0.0.1`` ("resolving" loopback to that address); what keeps a local Ray on
loopback is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (NOTES-stack), read when ``ray`` is imported: set here
in the environment for the processes Ray starts and on the already imported constant for this one.
A command that starts its own Ray (quickstart, serve, ingest, train, generate-batch) is a single-machine
job: nothing else needs to reach its ports. To expose a local Ray anyway, set ``UNIMAT_RAY_BIND=network``.
Joining an existing cluster (an explicit address or ``RAY_ADDRESS``) is unchanged.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

BIND_ENV = "UNIMAT_RAY_BIND"
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_requested() -> bool:
    value = os.environ.get(BIND_ENV, "loopback").strip().lower()
    if value not in ("loopback", "127.0.0.1", "network"):
        raise ValueError(f"{BIND_ENV}={value!r}: use 'loopback' (default) or 'network'")
    return value != "network"


def init_ray(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = True,
             **kwargs) -> bool:
    """Connect to Ray at ``address`` / ``RAY_ADDRESS``, or start a new local one on 127.0.0.1.

    Returns True if this call started or connected Ray (the caller shuts it down), False if Ray was
    already initialised in this process.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=log_to_driver, **kwargs)
        return True
    if loopback_requested():
        os.environ[_LOOPBACK_ENV] = "0"  # for the processes Ray starts (they import ray afresh)
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported ray before the variable was set
    kwargs.setdefault("include_dashboard", False)
    # address="local": a new cluster, never an unrelated `ray start` cluster found on this machine
    from unimat_dist.cpu_threads import without_auto_env

    with without_auto_env():  # Ray gives each worker OMP_NUM_THREADS = its reserved CPUs, not ours
        ray.init(address="local", num_cpus=num_cpus, log_to_driver=log_to_driver, **kwargs)
    log.info("started a local Ray (%s CPUs) bound to %s", ray.cluster_resources().get("CPU"),
             "127.0.0.1" if loopback_requested() else "the machine's network address")
    return True


def node_ip() -> str:
    """The address of this process's Ray node (127.0.0.1 for a loopback-bound local Ray)."""
    import ray

    return ray.util.get_node_ip_address()
