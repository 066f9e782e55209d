"""The generation page of the service (GET /, deploy/page.py) in a real headless Chromium, against a Ray Serve
app started here on 127.0.0.1 with the released Perov-5 checkpoint: the page and every file it loads come
from the app; Generate shows the crystals as gallery cards with validity flags, drawn thumbnails, a 3D viewer
and CIF/POSCAR downloads that pymatgen reads; the API's 4xx messages appear next to the field they name.

Screenshots go to out/test-artifacts/ (tests/browser.py); ``UNIMAT_DOCS_SCREENSHOTS=1`` also refreshes
docs/img/service_page.png, the README's picture.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import requests

from browser import canvas_drawn, chromium_page, screenshot
from generation_fixtures import free_port
from unimat_dist.ray_local import init_ray

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "perov5_transformer_cpu.pt"
MAX_SAMPLES = 8
BUDGET = 400  # num_samples x steps per request


@pytest.fixture(scope="module")
def service_url():
    import ray
    from ray import serve

    from deploy.app import start_service

    init_ray("local", num_cpus=2, log_to_driver=False)
    try:
        settings = {"checkpoint": str(CHECKPOINT), "torch_threads": 1, "max_samples_per_request": MAX_SAMPLES,
                    "max_sample_steps": BUDGET, "default_steps_ddim": 20}
        yield start_service(settings, host="127.0.0.1", port=free_port(), name="page", cpus_per_replica=1)
    finally:
        serve.shutdown()
        ray.shutdown()


def _api_error(url: str, body: dict) -> dict:
    r = requests.post(url + "/v1/generate", data=json.dumps(body), headers={"Content-Type": "application/json"},
                      timeout=60)
    assert 400 <= r.status_code < 500, r.text
    return r.json()["error"]


def _page_errors(errors: list[str]) -> list[str]:
    """The page's own errors: uncaught exceptions, CSP violations; not the console lines Chromium writes for
    the 4xx answers the test asks for."""
    return [e for e in errors if "status of 422" not in e]


def test_page_and_its_files_come_from_the_service(service_url):
    r = requests.get(service_url + "/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assets = [a for a in re.findall(r'(?:src|href)="([^"#]+)"', html) if not a.startswith("data:")]
    assert {"static/viewer.js", "static/cards.js", "static/page.js", "static/gallery.css", "static/page.css"} <= {
        a.split("?")[0] for a in assets}
    for a in assets:
        assert not re.match(r"^(https?:)?//", a), a  # same origin only: no CDN
        got = requests.get(f"{service_url}/{a}", timeout=30)
        assert got.status_code == 200, (a, got.status_code)
        if a.startswith("static/"):
            assert got.headers["content-type"].split(";")[0] in {"text/javascript", "text/css"}, a
    # the gallery's files are the same bytes the gallery ships
    gallery = ROOT / "unimat_dist" / "gallery" / "static"
    assert requests.get(service_url + "/static/cards.js", timeout=30).content == (gallery / "cards.js").read_bytes()
    for bad in ("static/app.py", "static/..%2Fapp.py", "static/.env", "static/%2e%2e%2fpage.py", "static/nope.js",
                "static/index.html"):
        assert requests.get(f"{service_url}/{bad}", timeout=30).status_code == 404, bad
    spec = requests.get(service_url + "/openapi.json", timeout=30).json()
    assert "/" not in spec["paths"] and "/v1/generate" in spec["paths"]  # the page is not part of the API


def test_generate_shows_cards_viewer_and_downloads(service_url):
    from pymatgen.core import Structure

    errors: list[str] = []
    with chromium_page(errors=errors) as page:
        page.goto(service_url + "/")
        page.locator("#model-info", has_text="step 36000").wait_for()
        assert page.get_attribute("#num_samples", "max") == "8"
        assert page.get_attribute("#steps", "placeholder") == "default 20"
        page.fill("#composition", "SrTiO3")
        page.fill("#num_samples", "6")
        page.fill("#steps", "20")
        page.fill("#seed", "7")
        page.click("#generate")
        page.locator(".pg-run .um-card").nth(5).wait_for()
        cards = page.locator(".pg-run .um-card")
        assert cards.count() == 6
        # the same request through the API gives the same crystals (seeded)
        body = {"composition": "SrTiO3", "num_samples": 6, "steps": 20, "seed": 7, "sampler": "ddim", "format": "json"}
        api = requests.post(service_url + "/v1/generate", json=body, timeout=120).json()
        shown = [cards.nth(k).get_attribute("data-formula") for k in range(6)]
        assert shown == [s["formula"] for s in api["structures"]]
        assert {s["formula"] for s in api["structures"]} == {"SrTiO3"}
        head = page.text_content(".pg-run-head")
        assert f"{api['validity']['valid']} of 6 valid" in head and "seed 7" in head and "DDIM 20 steps" in head
        # validity flags on every card, matching the API's
        for k, s in enumerate(api["structures"]):
            card = cards.nth(k)
            for flag, value in s["validity"].items():
                if value is None:
                    continue
                # the flag's key as the card found it: in the facts (top level) or the validity object
                el = card.locator(f'.um-flag[data-flag="{flag}"], .um-flag[data-flag="validity.{flag}"]')
                assert el.count() == 1 and ("um-ok" in el.get_attribute("class")) == value, (k, flag)
        # thumbnails drawn (lazily, when the card is on screen)
        page.locator(".pg-run .um-card canvas.um-thumb").first.scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        assert canvas_drawn(page, ".pg-run .um-card canvas.um-thumb") > 0.02
        shot = screenshot(page, "service_page_cards", full_page=False)
        if os.environ.get("UNIMAT_DOCS_SCREENSHOTS") == "1":
            screenshot(page, "service_page", full_page=False, to=ROOT / "docs" / "img" / "service_page.png")
        assert shot.stat().st_size > 20_000

        # a card's CIF and POSCAR downloads parse to the card's crystal
        for fmt, suffix in (("cif", ".cif"), ("poscar", ".vasp")):
            with page.expect_download() as dl:
                cards.first.locator(f'a.pg-dl[data-format="{fmt}"]').click()
            path = dl.value.path()
            assert dl.value.suggested_filename.endswith(suffix)
            s = Structure.from_file(str(Path(path).rename(Path(path).with_suffix(suffix))))
            assert s.composition.reduced_formula == "SrTiO3" and len(s) == 5

        # the 3D viewer: opens on a click, draws the crystal, offers its downloads
        cards.first.click()
        viewer = page.locator("#um-viewer")
        viewer.wait_for()
        page.wait_for_timeout(300)
        assert canvas_drawn(page, "#um-viewer canvas") > 0.01
        assert viewer.locator(".um-downloads a").count() >= 2
        screenshot(page, "service_page_viewer", full_page=False)
        page.keyboard.press("Escape")
        viewer.wait_for(state="detached")

        # a second Generate (any composition, a random seed) adds a new run above the first; the seed it
        # shows is exact (63 bits, not rounded to a JS number): the API reproduces the run's crystals with it
        page.fill("#composition", "")
        page.fill("#num_samples", "3")
        page.fill("#seed", "")
        page.click("#generate")
        page.locator(".pg-run").nth(1).wait_for()
        assert page.locator(".pg-run").count() == 2
        new = page.locator(".pg-run").first.locator(".um-card")
        assert new.count() == 3
        seed = page.text_content(".pg-run .pg-seed")
        assert re.fullmatch(r"\d+", seed), seed
        again = requests.post(service_url + "/v1/generate", json={"num_samples": 3, "steps": 20, "seed": int(seed),
                                                                  "format": "json"}, timeout=120).json()
        assert [new.nth(k).get_attribute("data-formula") for k in range(3)] == [
            s["formula"] for s in again["structures"]]
        page.click(".pg-run .pg-seed")  # reuses the seed
        assert page.input_value("#seed") == seed
    assert not _page_errors(errors), errors


@pytest.mark.parametrize("fill, field, body", [
    ({"#composition": "Xx2O3"}, "composition", {"composition": "Xx2O3"}),
    ({"#composition": "Sr0TiO3"}, "composition", {"composition": "Sr0TiO3"}),
    ({"#num_samples": "50"}, "num_samples", {"num_samples": 50}),
    ({"#num_samples": "8", "#steps": "100"}, "num_samples", {"num_samples": 8, "steps": 100}),  # the budget
    ({"#sampler": "ddpm", "#steps": "5000"}, "steps", {"sampler": "ddpm", "steps": 5000}),
])
def test_api_errors_show_next_to_their_field(service_url, fill, field, body):
    expected = _api_error(service_url, body)
    assert expected["field"] == field  # the API names the field ...
    errors: list[str] = []
    with chromium_page(errors=errors) as page:
        page.goto(service_url + "/")
        page.locator("#model-info", has_text="step 36000").wait_for()
        for selector, value in fill.items():
            if selector == "#sampler":
                page.select_option(selector, value)
            else:
                page.fill(selector, value)
        page.click("#generate")
        slot = page.locator(f"#{field}-error")
        slot.wait_for()
        assert slot.text_content() == expected["message"]  # ... and the page shows its message there
        assert page.get_attribute(f"#{field}", "aria-invalid") == "true"
        assert page.text_content("#form-error") == ""
        assert page.locator(".pg-run").count() == 0
        if field == "composition" and body["composition"] == "Xx2O3":
            screenshot(page, "service_page_bad_composition", full_page=False)
        page.fill(f"#{field}", "1")  # editing the field clears its message
        assert slot.text_content() == ""
    assert not _page_errors(errors), errors
