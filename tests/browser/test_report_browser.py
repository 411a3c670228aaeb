"""Every report in a real headless Chromium (Playwright driving the system's browser): it
loads with no console error and no request leaving the file, every chart has drawn marks,
hovering a mark shows its tooltip, and a screenshot is written and is not blank.

Chromium comes from Debian's `chromium` package (scripts/install-browser.sh, run by .ci/run);
MESHPLAN_CHROMIUM names another executable. Under CI=true a missing browser fails these tests
(tests/conftest.py) instead of skipping them."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import invoke

pytestmark = pytest.mark.browser

pytest.importorskip("plotly")
sync_api = pytest.importorskip("playwright.sync_api")

# As the machine notes say: headless, no GPU, and none of Chromium's own network traffic
# (this machine's closed network refuses it, noisily).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

TRAIN = ["--model", "llama3-8b", "--cluster", "dgx-h100"]
REPORTS = {
    "plan": ["plan", *TRAIN, "--num-gpus", "64", "--global-batch-size", "512", "--seq-len",
             "8192"],
    "estimate": ["estimate", *TRAIN, "--num-gpus", "16", "--global-batch-size", "64",
                 "--seq-len", "4096", "--tp", "2", "--pp", "4"],
    "simulate": ["simulate", *TRAIN, "--num-gpus", "16", "--global-batch-size", "64",
                 "--seq-len", "4096", "--tp", "2", "--pp", "4", "--schedule", "zb-h1"],
    "serve-simulate": ["serve", "simulate", *TRAIN, "--rate", "40", "--num-requests", "500",
                       "--input-len", "512", "--output-len", "128", "--slo-ttft-ms", "300",
                       "--slo-tpot-ms", "40"],
    "serve-plan": ["serve", "plan", *TRAIN, "--num-gpus", "2", "--input-len", "512",
                   "--output-len", "128", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "50",
                   "--num-requests", "200", "--workers", "1", "--top", "3"],
}
HOVER_TEXT = {"plan": "tok/s/GPU", "estimate": "compute", "simulate": " ms",
              "serve-simulate": "of requests", "serve-plan": "tok/s/user"}
"""What the tooltip of the first chart's first mark shows (its layout, its times...)."""

# Marks Plotly draws in SVG: scatter points, line paths, bar rectangles.
MARKS = ".scatterlayer .point, .scatterlayer path.js-line, .barlayer .point path"
# The share of a screenshot's pixels that differ from its top-left pixel (the background).
INK = """async (b64) => {
  const img = new Image();
  img.src = 'data:image/png;base64,' + b64;
  await img.decode();
  const c = document.createElement('canvas');
  c.width = img.width; c.height = img.height;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 0; i < d.length; i += 4)
    if (Math.abs(d[i] - d[0]) + Math.abs(d[i + 1] - d[1]) + Math.abs(d[i + 2] - d[2]) > 30)
      ink++;
  return ink / (d.length / 4);
}"""


def chromium_path() -> str:
    path = os.environ.get("MESHPLAN_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    if not path:
        pytest.skip("chromium not installed (scripts/install-browser.sh installs it)")
    return path


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reports")
    out = {}
    for name, args in REPORTS.items():
        out[name] = folder / f"{name}.html"
        code, _, err = invoke(*args, "--html", str(out[name]))
        assert code == 0, err
    return out


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.mark.parametrize("name", list(REPORTS))
def test_report_renders_in_chromium(browser, reports: dict[str, Path], name: str,
                                    tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"failed request {r.url}"))

    def only_the_file(route) -> None:  # the network is off: anything else is a failure
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_file)
    page.goto(reports[name].as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg")
    charts = page.locator(".js-plotly-plot")
    assert charts.count() >= 2
    for i in range(charts.count()):
        assert charts.nth(i).locator(MARKS).count() > 0, f"chart {i + 1} of {name} is empty"
    assert page.locator("canvas.gl-canvas, .gl-container canvas").count() == 0  # no WebGL

    first = charts.first.locator(".scatterlayer .point, .barlayer .point path").first
    first.hover(force=True)
    tip = page.locator(".hoverlayer .hovertext")
    tip.first.wait_for(state="visible", timeout=5000)
    assert HOVER_TEXT[name] in tip.first.text_content()

    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    ink = page.evaluate(INK, base64.b64encode(shot.read_bytes()).decode())
    assert ink > 0.02, f"screenshot of {name} is nearly blank ({ink:.1%} ink)"
    assert errors == [] and outside == []
    page.close()
