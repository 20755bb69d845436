"""The report opened in a real browser: headless chromium driven by selenium.

Checks what only a browser can tell: the page loads without console errors and without a single
network request, every image decodes (natural width > 0), and the numbers a reader sees are
those of `symdiff evaluate --json`. `make test` installs Debian's chromium and chromium-driver
when it runs as root with apt-get; elsewhere these tests are skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from report_helpers import XYZ_BROKEN, XYZ_GOOD, make_cache, percent_text, run_symdiff, write_run

pytestmark = pytest.mark.slow

# Without the networking switches chromium keeps trying to reach its update and sync services,
# which on a closed network stalls page loads; a fresh profile keeps runs independent.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000")


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    chromium, driver_path = _find("chromium", "chromium-browser"), _find("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("chromium or chromedriver not found: `make test` installs them as root with apt-get "
                    "(apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path keeps selenium from looking for (downloading) a driver of its own.
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def cache(tmp_path_factory, small_packed) -> Path:
    return make_cache(tmp_path_factory.mktemp("cache"), small_packed)


def open_page(browser, path: Path) -> None:
    browser.get(path.resolve().as_uri())
    # Decoding a data URI is asynchronous: wait for every image before measuring it.
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.allSettled(Array.from(document.images).map(i => i.decode())).then(() => done(true));")


def assert_clean_load(browser) -> None:
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    # Data URIs make no resource entries: anything listed here went (or tried to go) out.
    requests = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert requests == []


def image_widths(browser) -> list[tuple[str, bool, int]]:
    return browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")


def shown_metrics(browser) -> dict[tuple[str, str], tuple[float, str]]:
    cells = browser.execute_script(
        "return Array.from(document.querySelectorAll('td[data-metric]')).map(td => "
        "[td.dataset.set, td.dataset.metric, td.dataset.value, td.querySelector('.value').innerText])")
    return {(set_id, metric): (None if value == "" else float(value), text) for set_id, metric, value, text in cells}


def test_molecule_report_in_chromium(browser, cache, tmp_path):
    good, broken = tmp_path / "good.xyz", tmp_path / "broken.xyz"
    good.write_text(XYZ_GOOD)
    broken.write_text(XYZ_BROKEN)
    report = tmp_path / "report.html"
    result = run_symdiff(cache, "evaluate", str(good), str(broken), "--report", str(report), "--json", "-")
    assert result.returncode == 0, result.stderr
    expected = {"pooled": json.loads(result.stdout)}
    for column, path in (("input-0", good), ("input-1", broken)):
        alone = run_symdiff(cache, "evaluate", str(path), "--json", "-")
        expected[column] = json.loads(alone.stdout)

    open_page(browser, report)
    assert_clean_load(browser)
    images = image_widths(browser)
    assert len(images) == 3 + 5  # three figures, five molecules drawn
    assert all(complete and width > 0 for _, complete, width in images), images

    shown = shown_metrics(browser)
    for column, payload in expected.items():
        for metric, fraction in payload["fractions"].items():
            value, text = shown[(column, metric)]
            assert value == fraction, (column, metric)
            assert text == percent_text(fraction), (column, metric)
    # The reference column is there too, with a value in every row.
    assert all(shown[("reference", metric)][0] is not None for metric in expected["pooled"]["fractions"])
    stable_tags = browser.execute_script(
        "return Array.from(document.querySelectorAll('.mol')).map(m => m.dataset.stable)")
    assert stable_tags.count("false") == 1  # the carbon and the far hydrogen


def test_training_report_in_chromium(browser, cache, tmp_path):
    runs = [write_run(tmp_path / "a"), write_run(tmp_path / "b", 60, (30, 60), 3.0)]
    report = tmp_path / "runs.html"
    result = run_symdiff(cache, "evaluate", *map(str, runs), "--report", str(report))
    assert result.returncode == 0, result.stderr

    open_page(browser, report)
    assert_clean_load(browser)
    images = image_widths(browser)
    assert len(images) == 2 and all(complete and width > 0 for _, complete, width in images), images
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#runs-table tbody tr')).map(r => "
        "[r.querySelector('[data-field=steps]').innerText, r.querySelector('[data-field=molecule_stability]').innerText])")
    assert rows == [["40", "40.00 %"], ["60", "60.00 %"]]
