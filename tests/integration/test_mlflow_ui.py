"""The MLflow UI, for real: headless Chromium opens a sweep on a live `mlflow server`, expands the
sweep's parent run and finds every trial's child run on the page; the screenshot is kept."""

import json
import os
import shutil
import time
import urllib.request

import pytest
from click.testing import CliRunner

from candle_ray.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# CI installs the browser (make browser): there a missing one is a failure, not a quiet skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SCREENSHOTS = ROOT / "test-artifacts"


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1500,1000"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER) and not IN_CI,
                    reason="needs chromium and chromium-driver (make installs them)")
def test_sweep_is_browsable_in_mlflow_ui(ray_cluster, workdir, mlflow_server):
    assert CHROMIUM and CHROMEDRIVER, "CI=true but chromium / chromedriver are not on PATH: `make browser` failed"
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    tiny = ROOT / "tests" / "support" / "tiny_nt3.py"
    r = CliRunner().invoke(main, ["tune", str(tiny), "--smoke", "--num-samples", "3", "--scheduler", "fifo",
                                  "--set", "epochs=2", "--name", "ui-sweep", "--tracking-uri", mlflow_server],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    sweep = json.loads((workdir / "candle-ray-sweeps" / "ui-sweep" / "sweep.json").read_text())
    parent_id = sweep["parent_run_id"]
    with urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={parent_id}") as resp:
        experiment_id = json.load(resp)["run"]["info"]["experiment_id"]
    trial_ids = [p.name for p in (workdir / "candle-ray-sweeps" / "ui-sweep" / "trials").iterdir()]
    assert len(trial_ids) == 3
    request = urllib.request.Request(f"{mlflow_server}/api/2.0/mlflow/runs/search", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"experiment_ids": [experiment_id],
                                                      "filter": f"tags.mlflow.parentRunId = '{parent_id}'"}).encode())
    with urllib.request.urlopen(request) as resp:
        child = json.load(resp)["runs"][0]
    child_id = child["info"]["run_id"]
    (dataset,) = {d["dataset"]["name"] for d in child["inputs"]["dataset_inputs"]}

    browser = _browser()
    try:
        browser.get(f"{mlflow_server}/#/experiments/{experiment_id}/runs")
        wait = WebDriverWait(browser, 60)
        parent_link = wait.until(ec.presence_of_element_located(
            (By.CSS_SELECTOR, f"a[href$='/runs/{parent_id}']")))
        assert parent_link.text == "ui-sweep"
        # The parent row's expander shows the nested child runs (one per trial).
        cell = parent_link.find_element(By.XPATH, "ancestor::div[contains(@class, 'ag-cell')][1]")
        cell.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(t in browser.page_source for t in trial_ids):
            time.sleep(0.5)
        SCREENSHOTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "mlflow_ui_sweep.png"))
        missing = [t for t in trial_ids if t not in browser.page_source]
        assert not missing, f"trial runs not on the page: {missing}"
        # Lineage: the runs' Datasets column names the cache entry they trained on.
        assert dataset in browser.page_source, "the dataset is not in the runs table's Datasets column"
        # A trial's System metrics tab draws the CPU and memory its epochs used.
        browser.get(f"{mlflow_server}/#/experiments/{experiment_id}/runs/{child_id}/system-metrics")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "cpu_utilization_percentage" not in browser.page_source:
            time.sleep(0.5)
        browser.save_screenshot(str(SCREENSHOTS / "mlflow_ui_system_metrics.png"))
        assert "cpu_utilization_percentage" in browser.page_source, "no system metrics on the trial's page"
    finally:
        browser.quit()
    assert (SCREENSHOTS / "mlflow_ui_sweep.png").stat().st_size > 10_000
