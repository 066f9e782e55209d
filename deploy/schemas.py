"""Request and response schemas of the generation API (pydantic v2; they also make the OpenAPI schema).

Validation runs in three layers, each a 4xx with a message, never a 500:

1. the body: too large -> 413, not JSON / not an object -> 400;
2. the schema (``GenerateRequest``): wrong types, unknown fields, out-of-range numbers -> 422;
3. the model and the service limits (``parse_generate_request`` then ``prepare_job``): too many samples,
   too many steps, unknown element, element outside the model's system, too many atoms of one element,
   unknown property -> 422.
"""
from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SEED_MAX = 2**63 - 1


class ApiError(Exception):
    """A client error: HTTP ``status`` with a machine-readable ``type`` and a message naming the field."""

    def __init__(self, status: int, type_: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.field = status, type_, message, field

    def body(self) -> dict[str, Any]:
        err = {"type": self.type, "message": self.message}
        if self.field:
            err["field"] = self.field
        return {"error": err}


class GenerateRequest(BaseModel):
    """``POST /v1/generate`` body. Every field is optional; the default is one unconditional DDIM sample."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    num_samples: int = Field(1, ge=1,
                             description="crystals to generate (at most the service's max_samples_per_request)")
    composition: Union[str, dict[str, Union[int, float]], None] = Field(
        None, description='formula ("Fe2O3") or element counts ({"Fe": 2, "O": 3}); null = unconditional',
        examples=["SrTiO3", {"Sr": 1, "Ti": 1, "O": 3}])
    exact_counts: bool = Field(True, description="true: exactly these atom counts; false: only these element types")
    properties: Optional[dict[str, float]] = Field(
        None, description="property targets in raw units (see GET /v1/model for the names the model knows)",
        examples=[{"heat_ref": -0.5}])
    guidance: float = Field(0.0, ge=0.0, description="classifier-free guidance weight w for the properties")
    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: Optional[int] = Field(None, ge=1, description="denoising steps; null = service default (DDIM) or T (DDPM)")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM stochasticity (0 = deterministic)")
    seed: Optional[int] = Field(None, ge=0, le=SEED_MAX,
                                description="makes this request's samples reproducible whatever it is batched with; "
                                            "null = a random seed, returned in the response")
    format: Optional[Literal["cif", "json"]] = Field(None, description="cif (CIF text) or json (lattice, species, "
                                                                       "coordinates); null = service default")


class Validity(BaseModel):
    decoded: bool = Field(description="the output decoded to at least one atom")
    structure_valid: bool = Field(description="all interatomic distances >= 0.5 A and volume >= 0.1 A^3 (CDVAE)")
    composition_valid: Optional[bool] = Field(description="SMACT charge neutrality + electronegativity (CDVAE)")
    matches_request: Optional[bool] = Field(description="composition equals the request (null: no composition asked)")


class StructureOut(BaseModel):
    index: int
    formula: Optional[str] = Field(description="reduced formula; null when nothing decoded")
    num_atoms: int
    validity: Validity
    cif: Optional[str] = Field(None, description="format=cif: CIF text (P1)")
    structure: Optional[dict[str, Any]] = Field(
        None, description="format=json: {lattice: {matrix, a, b, c, alpha, beta, gamma, volume}, species, "
                          "frac_coords, cart_coords}")


class ValiditySummary(BaseModel):
    count: int
    decoded: int
    structure_valid: int
    composition_valid: int
    matches_request: int
    valid: int = Field(description="structure_valid and not composition-invalid")


class Timing(BaseModel):
    total_s: float = Field(description="receipt to response, seconds")
    sample_s: float = Field(description="admission into the running denoising loop to its last step, seconds")
    batch_requests: int = Field(description="the most requests that shared one of this request's network evaluations")
    loop_samples: int = Field(description="the most rows (crystals) of one of this request's network evaluations")


class GenerateResponse(BaseModel):
    id: str
    num_samples: int
    seed: int
    sampler: str
    steps: int
    eta: float
    format: str
    structures: list[StructureOut]
    validity: ValiditySummary
    timing: Timing
    model: dict[str, Any] = Field(description="checkpoint and step that generated these crystals")


class ErrorBody(BaseModel):
    type: str
    message: str
    field: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


_TYPE_TAGS = {"str", "int", "float", "bool", "dict[str,union[int,float]]"}  # pydantic's union-member loc entries


def _location(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err.get("loc", ()) if str(p) not in _TYPE_TAGS)


def _messages(exc: ValidationError) -> tuple[str, str]:
    """(first field, message) of a schema violation, one clause per field."""
    by_field: dict[str, str] = {}
    for e in exc.errors():
        loc = _location(e) or "body"
        if loc.split(".")[0] == "composition":
            by_field["composition"] = ('composition: must be a formula string ("Fe2O3"), an object of element '
                                       'counts ({"Fe": 2, "O": 3}) or null')
        else:
            by_field.setdefault(loc, f"{loc}: {e['msg']}")
    first = next(iter(by_field))
    return first, "; ".join(by_field.values())


def parse_generate_request(body: bytes, max_bytes: int) -> GenerateRequest:
    """Body bytes -> ``GenerateRequest``; ``ApiError`` 413 / 400 / 422 with a message naming the field."""
    if len(body) > max_bytes:
        raise ApiError(413, "request_too_large", f"request body is {len(body)} bytes; the limit is {max_bytes}")
    if not body.strip():
        raise ApiError(400, "malformed_json", "request body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[...]]]]": well-formed but deeper than the parser's stack
        raise ApiError(400, "malformed_json", "request body is nested too deeply to parse") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return GenerateRequest.model_validate(data)
    except ValidationError as exc:
        field, message = _messages(exc)
        raise ApiError(422, "invalid_request", message, None if field == "body" else field) from None
