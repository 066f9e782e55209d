"""``python -m unimat_dist ...`` = ``unimat ...``: works wherever the package is importable, including a Ray
job whose ``--working-dir`` is this repository on nodes that have the dependencies but not the package
(no ``unimat`` script on PATH there):

    ray job submit --working-dir . -- python -m unimat_dist train --config cluster/jobs/train_tiny_ray_cpu.yaml
"""
from __future__ import annotations

import sys

from unimat_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
