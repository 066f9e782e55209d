# syntax=docker/dockerfile:1
# The unimat-dist image: Ray + torch + this package (+ DeepSpeed), for the Ray cluster launcher
# (cluster/aws-gpu.yaml), the KubeRay RayJobs (cluster/kuberay/*.yaml) and the RayService
# (deploy/kuberay-rayservice.yaml). One file, two variants (build arg VARIANT, which is both the
# rayproject/ray tag suffix and the PyTorch wheel index):
#   docker build -t unimat-dist:0.1.0-cpu .                                                     # CPU
#   docker build --build-arg VARIANT=cu124 -t ghcr.io/unimat-dist/unimat-dist:0.1.0-cu124 .     # CUDA 12.4
#   docker push ghcr.io/unimat-dist/unimat-dist:0.1.0-cu124     # (your registry: rename it in the YAMLs too)
#   docker run --rm -v "$PWD/out:/home/ray/unimat-dist/out" unimat-dist:0.1.0-cpu               # unimat quickstart
# No ENTRYPOINT on purpose: the cluster launcher starts the container as `docker run ... <image> bash` and
# KubeRay replaces the command with `ray start ...`; the default command (CMD) is the CPU quickstart.
# tests/test_docker_image.py checks this file's instructions and that every YAML names the same image.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG VARIANT=cpu
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${VARIANT}

ARG VARIANT
ARG TORCH_VERSION=2.13.0
ARG DEEPSPEED_VERSION=0.19.8
ARG EXTRAS=all

ENV PYTHONUNBUFFERED=1 \
    RAY_DEDUP_LOGS=0

# torch from the variant's wheel index first (cpu, cu124, ...); the package accepts any torch >= 2.1.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${VARIANT}"

# The repository (minus .dockerignore: no .venv, out/, caches) at the path the KubeRay entrypoints use.
WORKDIR /home/ray/unimat-dist
COPY --chown=ray:users . .

# The package with every extra but DeepSpeed (ray, serve, eval; editable: the bundled data/ and checkpoints/
# stay next to it), pinned by the lock, then
# DeepSpeed without compiling its ops (they are JIT-built on first use where a toolchain exists).
RUN pip install --no-cache-dir -c requirements/lock-cpu.txt -e ".[${EXTRAS}]" \
 && DS_BUILD_OPS=0 pip install --no-cache-dir --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}" \
 && unimat --help > /dev/null \
 && python -m unimat_dist --help > /dev/null \
 && python -c "import ray, torch, deepspeed, unimat_dist, data_pipeline, deploy"

CMD ["unimat", "quickstart", "--out", "out/quickstart"]
