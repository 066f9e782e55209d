"""The generation service: a Ray Serve application serving batched UniMat sampling over HTTP.

    serve run deploy/serve_config.yaml                                        # config file (autoscaling, resources)
    serve run deploy.app:build_app checkpoint=out/train_tiny_cpu max_batch_size=16
    unimat serve --checkpoint out/train_tiny_cpu --host 127.0.0.1 --port 8000 # local Ray + Serve, blocking
    serve deploy deploy/serve_config.yaml                                     # onto a running cluster
    kubectl apply -f deploy/kuberay-rayservice.yaml                           # KubeRay RayService

Endpoints (docs/generation.md has request/response examples):

    POST /v1/generate   {"num_samples", "composition", "exact_counts", "properties", "guidance", "sampler",
                         "steps", "eta", "noise_scale", "restart", "seed", "format"} -> structures (CIF or JSON) + validity flags
    GET  /v1/model      checkpoint, spec (L, grid, elements), properties, limits, batching settings
    GET  /v1/stats      this replica's request/batch/loop counters (batch-size histogram)
    GET  /healthz       liveness; GET /openapi.json and /docs: the OpenAPI schema
    GET  /              the generation page (deploy/page.py): a form, the gallery's cards and 3D viewer

Every error is a JSON ``{"error": {"type", "message", "field"?}}``, counted in ``/v1/stats`` and the
metrics: 400 (not JSON, invalid Unicode, a proxy-hint header), 408 (body not sent within ``body_timeout_s``),
413 (body over ``max_request_bytes``), 422 (schema, limits, compute budget, the model's constraints),
503 (sampling loop gone), and 500 (a bug: logged with its traceback, the message names only its class).

One deployment, ``UniMatGenerator``: each replica loads the model once (``__init__``), ``generate``
only parses and validates, ``_generate_one`` hands each request to the replica's ``ContinuousSampler``
(``unimat_dist/generation/continuous.py``, the one batching layer): one
denoising loop (a child process by default, ``engine: process``) that requests join at the next step boundary and leave when
their last step is done (up to ``max_batch_size`` requests and ``max_batch_samples`` rows at a time),
each row at its own timestep, so requests with different compositions, guidance, samplers and step
counts share every network evaluation. The event loop keeps accepting requests while the device
works; decoding and CIF/JSON formatting run on two other threads.
"""
# No ``from __future__ import annotations``: FastAPI resolves route annotations from the globals of the
# by-value pickled methods, which hold only names the code uses.
import asyncio
import logging
import secrets
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from unimat_dist import __version__

from .metrics import ServiceMetrics
from .page import add_page_routes
from .schemas import MAX_COUNT, ApiError, ErrorResponse, GenerateRequest, GenerateResponse, parse_generate_request
from .settings import ServeSettings, load_settings

log = logging.getLogger("ray.serve")

api = FastAPI(
    title="unimat-dist generation API",
    version=__version__,
    description="Crystal structures from a UniMat diffusion model (arXiv 2311.09235), batched on Ray Serve.",
)

add_page_routes(api, __version__)  # GET / (the generation page) and GET /static/<name> (its JS/CSS)

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 408, 413, 422, 500, 503)}

# Serve's proxy reads these request headers as per-request overrides meant for a load balancer in front
# (ray.serve._private.http_util): "x-request-timeout-seconds: 0" turns the proxy's request timeout off and
# "x-request-disconnect-disabled: ?1" keeps a request computing after its client is gone. From a client they
# would let work outlive the client that asked for it, so /v1/generate refuses requests that carry them.
_PROXY_HINT_HEADERS = ("x-request-timeout-seconds", "x-request-disconnect-disabled")


def _internal_error(route: str, exc: BaseException) -> JSONResponse:
    """The 500 of a bug: logged with its traceback, answered as JSON naming only the exception's class."""
    log.error("unhandled error in %s", route, exc_info=exc)
    return JSONResponse({"error": {"type": "internal", "message": f"internal error ({type(exc).__name__}); "
                                                                  "the service logged it"}}, status_code=500)


@api.exception_handler(Exception)
async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    """Last resort for an exception outside the routes' own guards (those also count it): JSON, not
    Starlette's plain-text "Internal Server Error"."""
    return _internal_error(request.url.path, exc)


# Every helper the deployment uses is defined above it: Serve pickles the decorated class by value, with
# the module globals that exist at decoration time.
class _Failed:
    """The outcome of a request whose generation raised: that request alone gets an error response."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Pending:
    """A validated request on its way through the running loop."""

    __slots__ = ("job", "fmt", "composition", "exact_counts", "ticket")

    def __init__(self, job, fmt: str, composition, exact_counts: bool) -> None:
        self.job, self.fmt, self.composition, self.exact_counts = job, fmt, composition, exact_counts
        self.ticket: int | None = None  # the sampler's ticket once submitted


def _response_body(p: _Pending, structures: list, info: dict[str, Any]) -> dict[str, Any]:
    """The response of one request: per crystal its formula, validity flags, facts (``crystal_facts``:
    space group, density, shortest distance, ...) and CIF (P1, plus the symmetrised CIF when a group
    above P1 is found) or JSON structure."""
    from unimat_dist.crystal_facts import crystal_facts
    from unimat_dist.crystal_files import symmetrized_cif
    from unimat_dist.generation import structure_to_cif, structure_to_json, summarize_flags, validity_flags

    req_id = uuid.uuid4().hex
    flags, out = [], []
    for k, s in enumerate(structures):
        f = validity_flags(s, p.composition, p.exact_counts)
        flags.append(f)
        facts = crystal_facts(s, flags=f)
        entry: dict[str, Any] = {
            "index": k,
            "formula": s.composition.reduced_formula if s is not None else None,
            "num_atoms": len(s) if s is not None else 0,
            "validity": f,
            "facts": facts,
        }
        if s is not None:
            if p.fmt == "cif":
                entry["cif"] = structure_to_cif(s, f"{req_id[:12]}_{k}")
                if (facts["spacegroup_number"] or 1) > 1:
                    try:
                        entry["cif_symmetrized"] = symmetrized_cif(s, facts["symprec"])
                    except Exception:  # noqa: BLE001 - the P1 CIF stands alone
                        pass
            else:
                entry["structure"] = structure_to_json(s)
        out.append(entry)
    summary = summarize_flags(flags)
    job = p.job
    return {
        "id": req_id,
        "num_samples": job.num_samples,
        "seed": job.seed,
        "sampler": job.sampler,
        "steps": job.steps,
        "eta": job.eta,
        "noise_scale": job.noise_scale,
        "restart": list(job.restart) if job.restart else None,
        "format": p.fmt,
        "structures": out,
        "validity": {k: summary[k] for k in ("count", "decoded", "structure_valid", "composition_valid",
                                             "matches_request", "valid")},
        "model": {"checkpoint": info["checkpoint"], "step": info["step"]},
    }


def _max_ongoing_requests() -> int | None:
    """This replica's ``max_ongoing_requests`` (from Serve's private replica context; None if unavailable)."""
    ctx = serve.get_replica_context()
    config = getattr(ctx, "_deployment_config", None) if ctx is not None else None
    return getattr(config, "max_ongoing_requests", None)


async def _read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body, refusing (413) more than ``max_bytes`` without reading it all, and (408) a body that has
    not fully arrived ``timeout_s`` seconds after the replica took the request: Serve's proxy assigns a
    request to a replica slot on its headers, so without this bound an idle client holds a slot forever."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "request_too_large", f"request body is {declared} bytes; the limit is {max_bytes}")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, "request_too_large", f"request body exceeds the limit of {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s "
                                               "(body_timeout_s)") from None


@serve.deployment(name="UniMatGenerator", max_ongoing_requests=64, health_check_period_s=10, health_check_timeout_s=60)
@serve.ingress(api)
class UniMatGenerator:
    def __init__(self, settings: dict[str, Any]) -> None:
        import torch

        from unimat_dist.generation import model_info, open_generator
        from unimat_dist.generation.continuous import ContinuousSampler
        from unimat_dist.generation.engine_process import ProcessSampler

        self.settings: ServeSettings = load_settings(settings)
        s = self.settings
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        t0 = time.perf_counter()
        self.metrics = ServiceMetrics()
        if s.engine == "process":
            # the loop runs in a child process with its own GIL; this process keeps a CPU copy of the
            # generator for validation and decoding only (its weights are dropped)
            self.g = open_generator(s.checkpoint, s.storage_options, device="cpu", precision="fp32")
            self.info = model_info(self.g)
            self.g.drop_weights()
            self._engine = ProcessSampler(
                {"checkpoint": self.g.meta.get("path") or s.checkpoint, "storage_options": s.storage_options,
                 "device": s.device, "precision": s.precision},
                max_requests=s.max_batch_size, max_rows=s.max_batch_samples, torch_threads=s.torch_threads,
                on_admit=self.metrics.batch, on_step=self.metrics.step)
            self.info.update(device=self._engine.info["device"], precision=self._engine.info["precision"])
        else:
            self.g = open_generator(s.checkpoint, s.storage_options, device=s.device, precision=s.precision)
            self.info = model_info(self.g)
            self._engine = ContinuousSampler(self.g, max_requests=s.max_batch_size, max_rows=s.max_batch_samples,
                                             on_admit=self.metrics.batch, on_step=self.metrics.step)
        self.info["engine"] = s.engine
        scaler = self.g.scaler  # the model's standardisation of each property: the accepted ranges follow it
        self.property_ranges = {name: (m - s.max_property_sigma * sd, m + s.max_property_sigma * sd)
                                for name, m, sd in zip(scaler.names, scaler.mean, scaler.std)}
        self._format_executor = ThreadPoolExecutor(2, thread_name_prefix="unimat-format")
        self._warm_up()
        self.max_ongoing_requests = _max_ongoing_requests()
        log.info("UniMatGenerator: %s (step %s, %s parameters) on %s in %.1f s; max_batch_size %d, "
                 "max_ongoing_requests %s", self.info["checkpoint"], self.info["step"], f"{self.info['parameters']:,}",
                 self.info["device"], time.perf_counter() - t0, s.max_batch_size, self.max_ongoing_requests)
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < s.max_batch_size:
            log.warning("max_ongoing_requests=%d < max_batch_size=%d: batches will hold at most %d requests",
                        self.max_ongoing_requests, s.max_batch_size, self.max_ongoing_requests)

    def _warm_up(self) -> None:
        """One tiny generation through the loop before the first request: first-call costs (kernels, SMACT
        tables, the decoder) land here."""
        import threading

        from unimat_dist.generation import GenerationJob, prepare_job, validity_flags
        from unimat_dist.inference import SampleRequest

        job = prepare_job(self.g, GenerationJob(1, SampleRequest(), "ddim", 1, 0.0, 0))
        done, result = threading.Event(), []
        self._engine.submit(job, lambda batch, stats, error: (result.append((batch, error)), done.set()))
        if not done.wait(600):
            raise RuntimeError("warm-up generation did not finish within 600 s")
        batch, error = result[0]
        if error is not None:
            raise RuntimeError(f"warm-up generation failed: {error}") from error
        validity_flags(self.g.to_structures(batch)[0])

    def check_health(self) -> None:
        if self.g is None:  # pragma: no cover - __init__ raises instead
            raise RuntimeError("model not loaded")
        if not self._engine.alive:  # Serve replaces an unhealthy replica
            raise RuntimeError("the sampling loop has stopped")

    def __del__(self) -> None:
        """Replica shutdown: stop the sampling loop (waiting a few seconds for the requests in it)."""
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.close(timeout=5.0)

    # ------------------------------------------------------------------ routes
    # Every route answers a bug of its own as a JSON 500 that is counted and logged (``_guarded``), so no
    # exception reaches Serve's plain-text fallback.
    def _guarded(self, route: str, exc: BaseException, t0: float) -> JSONResponse:
        self.metrics.error("internal")
        self.metrics.request(route, 500, time.perf_counter() - t0)
        return _internal_error(route, exc)

    @api.get("/healthz")
    async def healthz(self):
        t0 = time.perf_counter()
        try:
            if not self._engine.alive:
                self.metrics.request("/healthz", 503)
                return JSONResponse({"status": "sampling loop stopped", "model_step": self.info["step"]},
                                    status_code=503)
            self.metrics.request("/healthz", 200)
            return {"status": "ok", "model_step": self.info["step"]}
        except Exception as exc:  # noqa: BLE001 - answered as a counted JSON 500
            return self._guarded("/healthz", exc, t0)

    @api.get("/v1/model")
    async def model(self):
        t0 = time.perf_counter()
        try:
            body = self._model_body()
        except Exception as exc:  # noqa: BLE001 - answered as a counted JSON 500
            return self._guarded("/v1/model", exc, t0)
        self.metrics.request("/v1/model", 200)
        return body

    def _defaults(self) -> dict[str, Any]:
        """What a request that leaves a field out gets: the checkpoint's sampling defaults, then the service's."""
        s, T = self.settings, self.info["timesteps"]
        run = self.g.sampling_settings()
        out = {"sampler": run["sampler"], "steps_ddim": min(s.default_steps_ddim, T), "steps_ddpm": T,
               "eta": run["eta"], "noise_scale": run["noise_scale"],
               "restart": list(run["restart"]) if run["restart"] else None, "format": s.default_format,
               # unconditional / element-type requests: no composition twice among one request's samples
               "distinct_compositions": self.g.distinct_compositions}
        if run["steps"] is not None:  # the checkpoint's own step count, for either sampler
            out["steps_ddim"] = out["steps_ddpm"] = min(run["steps"], T)
        return out

    def _model_body(self) -> dict[str, Any]:
        s = self.settings
        return {
            **self.info,
            "limits": {
                "max_samples_per_request": s.max_samples_per_request,
                "max_request_bytes": s.max_request_bytes,
                "body_timeout_s": s.body_timeout_s,
                "max_steps": min(s.max_steps, self.info["timesteps"]),
                # compute budget: num_samples x steps of one request
                "max_sample_steps": s.max_sample_steps,
                "max_guidance": s.max_guidance,
                "max_count_per_element": MAX_COUNT,
                # accepted target per property, raw units: training mean +- max_property_sigma x std
                "property_ranges": {k: list(v) for k, v in self.property_ranges.items()},
                "max_property_sigma": s.max_property_sigma,
            },
            "defaults": self._defaults(),
            "batching": {"max_batch_size": s.max_batch_size, "max_ongoing_requests": self.max_ongoing_requests,
                         "max_batch_samples": s.max_batch_samples,
                         "policy": "continuous: one running denoising loop; requests join at the next step and "
                                   "leave after their last, each row at its own timestep (compositions, properties, "
                                   "guidance, samplers and step counts mix freely); requests are never split"},
            "server_version": __version__,
        }

    @api.get("/v1/stats")
    async def stats(self):
        t0 = time.perf_counter()
        try:
            ctx = serve.get_replica_context()
            engine = {"kind": self.settings.engine, "alive": self._engine.alive, "pid": self._engine.pid,
                      "load": list(self._engine.load)}
            return {"replica": ctx.replica_tag if ctx else None, "engine": engine, **self.metrics.snapshot()}
        except Exception as exc:  # noqa: BLE001 - answered as a counted JSON 500
            return self._guarded("/v1/stats", exc, t0)

    @api.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses=_ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {
                "schema": GenerateRequest.model_json_schema(ref_template="#/components/schemas/{model}")}
        }}},
    )
    async def generate(self, request: Request):
        t0 = time.perf_counter()
        try:
            return await self._generate(request, t0)
        except asyncio.CancelledError:  # the client is gone: nobody to answer (counted by _generate)
            raise
        except Exception as exc:  # noqa: BLE001 - answered as a counted JSON 500
            return self._guarded("/v1/generate", exc, t0)

    async def _generate(self, request: Request, t0: float):
        s = self.settings
        try:
            hint = next((h for h in _PROXY_HINT_HEADERS if h in request.headers), None)
            if hint is not None:
                raise ApiError(400, "header_not_allowed", f"the {hint} header is reserved for a load balancer in "
                                                          "front of the service; send the request without it")
            body = await _read_body(request, s.max_request_bytes, s.body_timeout_s)
            pending = self._validate(parse_generate_request(body, s.max_request_bytes))
        except ApiError as exc:
            self.metrics.error(exc.type)
            self.metrics.request("/v1/generate", exc.status, time.perf_counter() - t0)
            # a 408 leaves the declared body unread: the connection cannot carry another request
            headers = {"Connection": "close"} if exc.status == 408 else None
            return JSONResponse(exc.body(), status_code=exc.status, headers=headers)
        try:
            result = await self._generate_one(pending)
        except asyncio.CancelledError:
            # Serve cancels a request whose client disconnected: ``generate`` withdraws its job from the
            # sampling loop by its ticket (dropped at the next step, queued or running)
            self.metrics.error("cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in the batch path itself; answered below
            result = _Failed(exc)
        if isinstance(result, _Failed):  # a device/model failure or a stopped loop, not the client's fault
            return self._failure(result.error, time.perf_counter() - t0)
        total = time.perf_counter() - t0
        result["timing"]["total_s"] = total
        self.metrics.request("/v1/generate", 200, total)
        return JSONResponse(result)

    def _failure(self, error: BaseException, seconds: float) -> JSONResponse:
        if not self._engine.alive:  # the loop (or its process) is gone: Serve's health check replaces us
            status, type_ = 503, "unavailable"
            message = "the sampling loop of this replica stopped; retry (the replica is being replaced)"
        else:
            log.error("generation failed", exc_info=error)
            status, type_ = 500, "internal"
            message = f"generation failed: {type(error).__name__}"
        self.metrics.error(type_)
        self.metrics.request("/v1/generate", status, seconds)
        return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status)

    # ------------------------------------------------------------------ validation
    def _validate(self, req: GenerateRequest) -> _Pending:
        """Service limits and the model's constraints -> a prepared job; ``ApiError`` 422 otherwise."""
        from unimat_dist.diffusion.samplers import reverse_plan
        from unimat_dist.generation import GenerationJob, prepare_job
        from unimat_dist.inference import SampleRequest

        s, T = self.settings, self.info["timesteps"]
        if req.num_samples > s.max_samples_per_request:
            raise ApiError(422, "limit_exceeded", f"num_samples {req.num_samples} exceeds this service's limit of "
                                                  f"{s.max_samples_per_request} per request", "num_samples")
        # unset sampler fields: the checkpoint's sampling defaults, then the service's (DDIM, default_steps_ddim)
        try:
            run = self.g.sampling_settings(req.sampler, req.steps, req.eta, req.noise_scale, req.restart)
        except ValueError as exc:  # only the restart is checked there: the schema bounded the rest
            raise ApiError(422, "invalid_request", str(exc), "restart") from None
        sampler = run["sampler"]
        steps = run["steps"] if run["steps"] is not None else (T if sampler == "ddpm" else min(s.default_steps_ddim, T))
        if steps > min(s.max_steps, T):
            raise ApiError(422, "limit_exceeded", f"steps {steps} exceeds the limit of {min(s.max_steps, T)} "
                                                  f"(service max_steps {s.max_steps}, model T {T})", "steps")
        evaluations = len(reverse_plan(T, sampler, steps, run["eta"], run["noise_scale"], run["restart"]))
        if req.num_samples * evaluations > s.max_sample_steps:
            raise ApiError(422, "limit_exceeded",
                           f"num_samples x steps = {req.num_samples} x {evaluations} = {req.num_samples * evaluations:,} "
                           f"sample-steps exceeds this service's compute budget of {s.max_sample_steps:,} per "
                           "request (max_sample_steps); ask for fewer samples or steps", "num_samples")
        for name, value in (req.properties or {}).items():
            lo, hi = self.property_ranges.get(name, (-float("inf"), float("inf")))  # unknown: prepare_job names it
            if not lo <= value <= hi:
                raise ApiError(422, "limit_exceeded",
                               f"properties.{name}: {value:g} is outside [{lo:.6g}, {hi:.6g}], the range this model "
                               f"accepts (its training mean +- {s.max_property_sigma:g} std)", f"properties.{name}")
        if req.guidance > s.max_guidance:
            raise ApiError(422, "limit_exceeded", f"guidance {req.guidance} exceeds the limit of {s.max_guidance}",
                           "guidance")
        if run["eta"] > 0 and sampler != "ddim":
            raise ApiError(422, "invalid_request", "eta applies to the ddim sampler only", "eta")
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        sample_request = SampleRequest(req.composition, req.exact_counts, dict(req.properties or {}), req.guidance)
        job = GenerationJob(req.num_samples, sample_request, sampler, steps, run["eta"], seed,
                            noise_scale=run["noise_scale"], restart=run["restart"])
        try:
            prepare_job(self.g, job)
        except ValueError as exc:
            field = "properties" if "propert" in str(exc) else "composition"
            raise ApiError(422, "model_constraint", str(exc), field) from None
        return _Pending(job, req.format or s.default_format, req.composition, req.exact_counts)

    # ------------------------------------------------------------------ sampling
    async def _generate_one(self, p: _Pending) -> dict[str, Any] | _Failed:
        """The request's job in the running loop, then its response body (formatted off the event loop).

        The running loop (``ContinuousSampler``, up to ``max_batch_size`` requests and ``max_batch_samples``
        rows) is the service's one batching layer: concurrent requests share its network evaluations step
        by step and each answers when its own job is done. A ``@serve.batch`` in front of it only added a
        hop: a call answers when all of its requests are done, so a 1-crystal request cut into the same
        call as a maximal one waited for it (bench soak: small-request p99 20.6x its unloaded value), and
        with one request per call it passed requests through (docs/generation.md, "Batching")."""
        try:
            done = await self._engine.generate(p.job, on_submit=lambda ticket: setattr(p, "ticket", ticket))
        except Exception as exc:  # noqa: BLE001 - a device/model failure, answered by the caller
            return _Failed(exc)
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(self._format_executor, self._format, [p], [done]))[0]

    def _format(self, items: list[_Pending], sampled: list) -> list:
        """Decoded structures and response bodies (CIF/JSON, validity flags), off the device thread; per
        request a body, None (cancelled) or ``_Failed``."""
        outcomes: Counter[str] = Counter()
        bodies = []
        for p, done in zip(items, sampled):
            if done is None or isinstance(done, _Failed):  # cancelled: nobody to answer; failed: answered by generate
                bodies.append(done)
                continue
            batch, stats = done
            self.metrics.sampled(stats.seconds)
            try:
                body = _response_body(p, self.g.to_structures(batch), self.info)
            except Exception as exc:  # noqa: BLE001 - this request fails alone
                bodies.append(_Failed(exc))
                continue
            # batch_requests / loop_samples: the most requests / rows that shared one of its network evaluations
            body["timing"] = {"total_s": 0.0, "sample_s": stats.seconds, "batch_requests": stats.peak_requests,
                              "loop_samples": stats.peak_rows}
            v = body["validity"]
            outcomes.update({"valid": v["valid"], "invalid": v["decoded"] - v["valid"],
                             "undecoded": v["count"] - v["decoded"]})
            bodies.append(body)
        self.metrics.structure_outcomes(outcomes)
        return bodies


def application(settings: dict[str, Any], **deployment_options: Any) -> serve.Application:
    """The bound application for ``ServeSettings`` fields, with Serve deployment options (``num_replicas``,
    ``ray_actor_options``, ``autoscaling_config``, ...) for programmatic use (``unimat serve``, tests)."""
    s = load_settings(settings)
    deployment_options.setdefault("max_ongoing_requests", max(2 * s.max_batch_size, 8))
    return UniMatGenerator.options(**deployment_options).bind(asdict(s))


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder (``import_path: deploy.app:build_app``); ``args`` are ``ServeSettings`` fields.

    ``max_ongoing_requests`` defaults to twice ``max_batch_size``: a replica only batches the requests it
    holds, so a smaller value caps every batch (Serve's default of 5 would cap them at 5). A Serve config
    that sets ``max_ongoing_requests`` itself must keep it >= ``max_batch_size``.
    """
    return application(args)


def start_service(settings: dict, *, host: str = "127.0.0.1", port: int = 8000, route_prefix: str = "/",
                  num_replicas: int = 1, cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0,
                  name: str = "unimat", ray_address: str | None = None, num_cpus: int | None = None) -> str:
    """Start (or connect to) Ray, start Serve's HTTP proxy on ``host:port``, deploy the app; returns its URL.

    Serve keeps its first ``http_options`` for the life of the Ray cluster: on a cluster where Serve
    already runs, ``host``/``port`` are those of the running proxy.
    """
    from unimat_dist.ray_local import init_ray

    # joins ray_address / RAY_ADDRESS, else starts a new local Ray bound to 127.0.0.1 (never an unrelated
    # `ray start` cluster found on this machine); a no-op where Ray already runs in this process
    init_ray(ray_address, num_cpus=num_cpus)
    serve.start(http_options={"host": host, "port": port})
    app = application(settings, num_replicas=num_replicas,
                      ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    serve.run(app, name=name, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"
