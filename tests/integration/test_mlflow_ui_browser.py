"""A user opens the MLflow UI, finds a gantry run by name and sees its sample grid.

Headless Debian chromium driven by Playwright; Playwright's own browser download is never used.
`make test` installs chromium when it runs as root; anywhere else, without chromium this test
fails (never skips), so the suite cannot pass without having looked at the UI.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.config import TrackingConfig
from pipeline.tracking.mlflow_tracker import MLflowTracker

CHROMIUM = shutil.which("chromium")  # Debian's /usr/bin/chromium
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


def test_run_and_its_sample_grid_show_in_the_ui(request, tmp_path):
    if CHROMIUM is None:
        pytest.fail("the MLflow UI browser test needs Debian chromium, which is not installed; "
                    "run: sudo apt-get install chromium", pytrace=False)
    from playwright.sync_api import expect, sync_playwright

    mlflow_server = request.getfixturevalue("mlflow_server")  # only once chromium is known to be there

    grid = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(grid).save(tmp_path / "grid.png")
    name = f"ui-grid-{tmp_path.name[-8:]}"
    tracker = MLflowTracker(TrackingConfig(uri=mlflow_server.uri, experiment="ui-browser"), name,
                            spool_dir=tmp_path / "spool", system_metrics=False)
    tracker.log_metrics({"loss": 0.5}, 0)
    tracker.log_artifact(str(tmp_path / "grid.png"), "samples")
    tracker.close()
    exp_id = tracker.client.get_run(tracker.run_id).info.experiment_id

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            # MLflow 3 opens on its GenAI views unless asked for the model-training one.
            page.goto(f"{mlflow_server.uri}/#/experiments/{exp_id}/runs?workflowType=machine_learning", wait_until="load")
            page.get_by_text(name, exact=True).first.click()
            expect(page).to_have_url(f"{mlflow_server.uri}/#/experiments/{exp_id}/runs/{tracker.run_id}")
            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text("samples", exact=True).first.click()
            page.get_by_text("grid.png", exact=True).first.click()
            shown = page.locator('img[alt="samples/grid.png"]')
            expect(shown).to_be_visible()
            size = shown.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
            page.screenshot(path=str(tmp_path / "mlflow-ui.png"))
        finally:
            browser.close()
    assert size == [96, 64]  # the PNG the run logged, decoded by the browser
    assert (tmp_path / "mlflow-ui.png").stat().st_size > 10_000
