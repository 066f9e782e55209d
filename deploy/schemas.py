"""Request and response schemas of the generation API (pydantic v2; they also make the OpenAPI schema).

Validation runs in three layers, each a 4xx with a message, never a 500:

1. the body: too large -> 413, not sent in time -> 408 (``deploy/app.py``), not JSON / not an object /
   a string that is not valid Unicode (a lone UTF-16 surrogate such as ``"\\ud800"``) -> 400;
2. the values (``_check_values``): a number no 64-bit float or ``int64`` can hold (an integer of more than
   ``MAX_INT_DIGITS`` digits, a float literal such as ``1e400`` that overflows to infinity) -> 422 naming
   the field, before anything converts it (Python refuses to parse integers of > 4,300 digits, and
   ``float(10**400)`` raises);
3. the schema (``GenerateRequest``): wrong types, unknown fields, out-of-range numbers -> 422;
4. the composition rule (``_check_composition``): every count, in a formula string or an object, must be
   a number in (0, ``MAX_COUNT``]; ``"Sr0TiO3"`` and ``{"Sr": 0}`` get the same 422 (pymatgen would
   silently drop the zero term of the string);
5. the model and the service limits (``deploy/app.py`` then ``prepare_job``): too many samples, too many
   steps, samples x steps over the compute budget, unknown element, element outside the model's system,
   too many atoms of one element, unknown property, property target outside its range -> 422.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from unimat_dist.generation.jobs import SEED_MAX

# The longest integer literal accepted anywhere in a request: SEED_MAX has 19 digits; anything longer is
# out of every field's range, and refusing it before ``int()`` keeps a 5,000-digit literal from costing
# quadratic conversion time (or Python's 4,300-digit ValueError).
MAX_INT_DIGITS = 20
MAX_COUNT = 1_000_000  # upper bound of one element's count in a composition (any model's L is far below)


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
    sampler: Optional[Literal["ddim", "ddpm"]] = Field(
        None, description="null = the model's default (GET /v1/model: defaults.sampler; ddim unless the checkpoint "
                          "was released with another)")
    steps: Optional[int] = Field(None, ge=1, description="denoising steps; null = the model's default steps, else the "
                                                         "service default (DDIM) or T (DDPM)")
    eta: Optional[float] = Field(None, ge=0.0, le=1.0,
                                 description="DDIM stochasticity (0 = deterministic); null = the model's default (0)")
    noise_scale: Optional[float] = Field(
        None, ge=0.0, le=1.0, description="multiplies the sampler's added noise (DDPM, or DDIM with eta > 0): < 1 "
                                          "samples at a lower temperature, less diverse and more precise crystals; "
                                          "null = the model's default (1 unless the checkpoint says otherwise)")
    restart: Optional[list[int]] = Field(
        None, max_length=2, description="[t, steps]: after the chain, noise the crystals forward to timestep t and "
                                        "take steps deterministic steps back (restart sampling; costs steps more "
                                        "evaluations); [] = none; null = the model's default")
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
    facts: Optional[dict[str, Any]] = Field(
        None, description="per-crystal facts (unimat_dist.crystal_facts.FACT_KEYS): formula, num_atoms, elements, "
                          "spacegroup_symbol/number at symprec, loose_spacegroup_*, density (g/cm^3), "
                          "volume_per_atom (A^3), min_distance (A), min_distance_ratio (to the sum of covalent "
                          "radii), too_close, validity flags; null values where not computable")
    cif: Optional[str] = Field(None, description="format=cif: CIF text (P1)")
    cif_symmetrized: Optional[str] = Field(
        None, description="format=cif: symmetrised CIF (conventional cell + the space group's operations at the "
                          "facts' symprec) when a group above P1 is found")
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
    noise_scale: float
    restart: Optional[list[int]] = Field(None, description="[t, steps] of the restart pass, or null")
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


class _OutOfRange:
    """A JSON number no field can hold (kept as its literal text until ``_check_values`` names its field)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_int(text: str) -> int | _OutOfRange:
    return _OutOfRange(text) if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


def _parse_float(text: str) -> float | _OutOfRange:
    value = float(text)  # never raises for a JSON number literal; overflows to +-inf
    return value if math.isfinite(value) else _OutOfRange(text)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-8:]} ({len(text)} characters)"


def _check_values(value: Any, where: str = "") -> None:
    """``ApiError`` for the first string that is not valid Unicode (400) or number out of range (422)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a "\\udXXX" escape: no response could even echo it
            raise ApiError(400, "malformed_json", f"{where or 'body'}: a string holds a lone UTF-16 surrogate "
                                                  "(e.g. \\ud800); strings must be valid Unicode",
                           where.split(".")[0] or None) from None
    elif isinstance(value, _OutOfRange):
        # the field as the schema layer names it: "composition" for any count, else the full path
        field = "composition" if where.split(".")[0] == "composition" else where
        raise ApiError(422, "invalid_request", f"{where}: the number {_short(value.text)} is out of range", field)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, where)
            _check_values(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for k, item in enumerate(value):
            _check_values(item, f"{where}.{k}" if where else str(k))


# pymatgen's formula grammar: an element symbol or a closing bracket of a group, then its amount
_FORMULA_AMOUNT = re.compile(r"([A-Z][a-z]*|[)\]])\s*([-.\deE]+)")


def _check_composition(comp: Union[str, dict[str, Union[int, float]], None]) -> None:
    """One rule for the counts of a formula string and of an object: each in (0, MAX_COUNT]. (pymatgen
    drops a zero term of a formula, so ``"Sr0TiO3"`` would silently become TiO3.)"""
    if comp is None:
        return
    if isinstance(comp, str):
        terms = []
        for m in _FORMULA_AMOUNT.finditer(comp):
            try:
                terms.append((m.group(1), float(m.group(2))))
            except ValueError:  # not a number: pymatgen's parser reports the formula
                continue
    else:
        terms = list(comp.items())
    for element, count in terms:
        name = "a bracketed group" if element in ")]" else element
        # "Sr0TiO3" (0.0) and {"Sr": 0} (0) read the same
        shown = f"{int(count):,}" if math.isfinite(count) and count == int(count) else f"{count:g}"
        if not count > 0:  # also NaN
            raise ApiError(422, "invalid_request", f"composition: the count of {name} must be a positive number, "
                                                   f"got {shown}; leave an element out instead", "composition")
        if count > MAX_COUNT:
            raise ApiError(422, "invalid_request", f"composition: the count of {name} ({shown}) exceeds the "
                                                   f"limit of {MAX_COUNT:,}", "composition")


def parse_generate_request(body: bytes, max_bytes: int) -> GenerateRequest:
    """Body bytes -> ``GenerateRequest``; ``ApiError`` 413 / 400 / 422 with a message naming the field."""
    if len(body) > max_bytes:
        raise ApiError(413, "request_too_large", f"request body is {len(body)} bytes; the limit is {max_bytes}")
    if not body.strip():
        raise ApiError(400, "malformed_json", "request body is empty; send a JSON object")
    try:
        data = json.loads(body, parse_int=_parse_int, parse_float=_parse_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[...]]]]": well-formed but deeper than the parser's stack
        raise ApiError(400, "malformed_json", "request body is nested too deeply to parse") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", f"request body must be a JSON object, got {type(data).__name__}")
    try:
        _check_values(data)
    except RecursionError:  # as deep as the parser could go, with less stack left in a server than here
        raise ApiError(400, "malformed_json", "request body is nested too deeply to parse") from None
    try:
        request = GenerateRequest.model_validate(data)
    except ValidationError as exc:
        field, message = _messages(exc)
        raise ApiError(422, "invalid_request", message, None if field == "body" else field) from None
    _check_composition(request.composition)
    return request
