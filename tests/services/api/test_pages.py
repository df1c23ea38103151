"""The pages as a person sees them: Debian's headless Chromium against a real API server
(uvicorn, Redis, a SQLite registry with validated checkpoints -- ``test_api.serving``).

Chromium resolves no host name but 127.0.0.1, so a page still reaching for a CDN renders
empty and fails here. Each page is loaded once: its DOM dumped after its scripts ran
(``--virtual-time-budget`` lets timers and fetches run) and a screenshot taken. With
``MZ_UPDATE_SCREENSHOTS=1`` the screenshots are copied to ``docs/``. Without a Chromium
that runs, every test here is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from services.validator.job import equity_curve
from tests.helpers import REPO, wait_for
from tests.services.api.test_api import serving

pytestmark = pytest.mark.redis

INSTALL_HINT = "Debian: apt-get install chromium; .ci/run installs it"
REFRESH_S = 5  # status.js's REFRESH_MS


# ----------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def chromium(tmp_path_factory) -> list[str]:
    """The command line of a headless Chromium that works here, or a skip saying why not."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip(f"Chromium is not installed ({INSTALL_HINT}): the pages are tested in a real browser")
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # root in a container has no user namespaces for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # offline: no CDN can answer
    ]
    try:
        probe = subprocess.run(
            [*command, "--dump-dom", "data:text/html,<p id=probe>ok</p>"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"Chromium ({binary}) cannot run here: {exc}")
    if 'id="probe"' not in probe.stdout:
        pytest.skip(f"Chromium ({binary}) cannot run here (exit {probe.returncode}): {probe.stderr[-500:]}")
    return command


def render(chromium: list[str], url: str, png: Path, budget_ms: int = 8000) -> str:
    """The DOM of `url` after `budget_ms` of virtual time (scripts, timers and fetches
    run); a screenshot of the window goes to `png`."""
    done = subprocess.run(
        [*chromium, f"--virtual-time-budget={budget_ms}", f"--screenshot={png}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout, f"chromium failed on {url}: {done.stderr[-2000:]}"
    assert png.exists(), f"no screenshot of {url}: {done.stderr[-2000:]}"
    return done.stdout


def check_screenshot(png: Path, name: str) -> None:
    """A real picture (not a blank page), kept in docs/ when asked to."""
    from matplotlib.image import imread

    pixels = imread(png)
    assert pixels.shape[:2] == (1000, 1280) and pixels[..., :3].std() > 0.05, f"{png} looks blank"
    if os.environ.get("MZ_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(png, REPO / "docs" / name)


class Elements(HTMLParser):
    """Every start tag of a document as (tag, attributes)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.all: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.all.append((tag, dict(attrs)))

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        return [a for t, a in self.all if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def text_of(dom: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert found, f"no element #{element_id}"
    return found.group(1)


# ----------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """test_api's server (checkpoints A best 1.5, B never traded, C corrupt, D), plus a
    validation of D, an equity curve for A, a trainer status, two collectors and the
    services of `microzero up`."""
    with serving(tmp_path_factory.mktemp("pages")) as env:
        r, keys, ids, registry = env["redis"], env["keys"], env["ids"], env["registry"]
        kw = {"error": None, "split": "validation", "duration_s": 1.0}
        registry.add_validation(ids["D"], "ok", score=0.7, metrics={"trades": 5}, **kw)
        curve = equity_curve(np.sin(np.arange(900) / 40.0) + 0.05)
        registry.add_validation(ids["A"], "ok", score=1.5, metrics={"trades": 12}, equity=curve, **kw)
        trainer = {"step": 98765, "episodes_inserted": 4321, "replay_positions": 50000, "learner_steps_per_s": 3.5}
        r.set(keys.trainer_status, json.dumps(trainer))
        for cid, episodes in (("collector-a", 77), ("collector-b", 5)):
            beat = {"episodes": episodes, "model_version": 3, "env_steps_per_s": 900.0}
            r.set(f"{keys.collector_prefix}{cid}{keys.collector_suffix}", json.dumps(beat), ex=120)
        services = {
            "trainer": {"running": True, "pid": 4242, "restarts": 2, "last_exit_code": -9},
            "validator": {"running": True, "pid": 4243, "restarts": 0, "last_exit_code": None},
        }
        r.set(keys.supervisor_status, json.dumps({"services": services}), ex=120)
        # /status answers from a cache refreshed every 0.2 s here.
        assert wait_for(lambda: len(env["client"].get("/status").json()["collectors"]) == 2, 10)
        yield {**env, "curve": curve}


# ----------------------------------------------------------------------------- the pages


def test_pages_and_their_files_come_from_this_server(site):
    client, ids = site["client"], site["ids"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r'(src|href)="(https?:)?//', page.text)  # nothing from elsewhere
    for path, kind in (
        ("/assets/pages/status.js", "text/javascript"),
        ("/assets/pages/status.css", "text/css"),
        ("/assets/docs/swagger-ui-bundle.js", "text/javascript"),
        ("/assets/docs/swagger-ui.css", "text/css"),
        ("/assets/docs/redoc.standalone.js", "text/javascript"),
    ):
        got = client.get(path)
        assert got.status_code == 200 and got.headers["content-type"].startswith(kind), path
    assert client.get("/assets/docs/missing.js").status_code == 404
    # The status page's data: the equity curve stored with the best's validation.
    equity = client.get(f"/checkpoints/{ids['A']}/equity").json()
    assert equity["bars"] == 900 and equity["pips"] == site["curve"]["pips"] and equity["split"] == "validation"
    assert client.get(f"/checkpoints/{ids['B']}/equity").status_code == 404  # validated without a curve
    # Static files are counted by their mount in the request metrics, not as "<unmatched>".
    metrics = client.get("/metrics").text
    assert 'route="/assets/docs/{path}",status="200"' in metrics


@pytest.mark.browser
def test_status_page_shows_progress_and_charts_and_refreshes(chromium, site, tmp_path):
    png = tmp_path / "status.png"
    dom = render(chromium, site["url"] + "/", png, budget_ms=(2 * REFRESH_S + 1) * 1000)
    check_screenshot(png, "status-page.png")
    ids = site["ids"]
    assert 'data-state="ready"' in dom, dom[:3000]
    refreshes = re.search(r'data-refreshes="(\d+)"', dom)
    assert refreshes and int(refreshes.group(1)) >= 2  # it refreshed itself
    # Run progress from /status, as rendered by the script.
    assert text_of(dom, "learner-steps") == "98,765"
    assert text_of(dom, "episodes") == "4,321"
    assert text_of(dom, "checkpoints") == "4"
    assert text_of(dom, "best") == f"#{ids['A']}" and text_of(dom, "served") == f"#{ids['A']}"
    assert text_of(dom, "health") == "ok"
    elements = Elements(dom)
    rows = {a["data-collector"] for a in elements.find("tr") if a.get("data-collector")}
    assert rows == {"collector-a", "collector-b"}
    restarts = re.search(r'data-service="trainer"><td>trainer</td><td>yes</td><td>4242</td><td>(\d+)</td>', dom)
    assert restarts and restarts.group(1) == "2", dom[:3000]
    # The score chart: one mark per validated checkpoint, the best highlighted, the one
    # that never traded drawn apart.
    points = {int(a["data-checkpoint"] or -1): a["class"] for a in elements.find("circle", "point")}
    assert points == {ids["A"]: "point best", ids["D"]: "point"}
    assert [a["data-checkpoint"] for a in elements.find("path", "no-trades")] == [str(ids["B"])]
    # The best checkpoint's equity curve: every stored point drawn.
    lines = [a for a in elements.find("path", "line") if a.get("data-points")]
    assert [a["data-points"] for a in lines] == [str(len(site["curve"]["pips"]))]
    assert "900 bars" in text_of(dom, "equity-caption")


@pytest.mark.browser
def test_swagger_ui_renders_the_operations_offline(chromium, site, tmp_path):
    html = site["client"].get("/docs").text
    assert not re.search(r'(src|href)="https?://', html), html  # every asset from this server
    png = tmp_path / "docs.png"
    dom = render(chromium, site["url"] + "/docs", png)
    check_screenshot(png, "api-docs.png")
    rendered = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert {"/status", "/checkpoints", "/checkpoints/{checkpoint_id}/equity", "/v1/act"} <= rendered, dom[:3000]


@pytest.mark.browser
def test_redoc_renders_offline(chromium, site, tmp_path):
    html = site["client"].get("/redoc").text
    assert not re.search(r'(src|href)="https?://', html), html
    dom = render(chromium, site["url"] + "/redoc", tmp_path / "redoc.png")
    assert "Where the pipeline stands" in dom and "Checkpoints, newest first" in dom, dom[:3000]
