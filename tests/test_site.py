"""The documentation site as scripts/test.sh builds it, opened in a browser."""

from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, PROJECT_DIR
from tests.test_docs import strict_site_build


@pytest.mark.integration
@pytest.mark.browser
def test_the_built_site_opens_on_its_home_and_its_generated_reference(tmp_path: Path) -> None:
    """The site as scripts/test.sh builds it, in a browser: the home page with its links,
    and the configuration reference generated from the schema (screenshots in tmp_path)."""
    from playwright.sync_api import sync_playwright

    site = tmp_path / "site"
    built = strict_site_build(PROJECT_DIR, site)
    assert built.returncode == 0, built.stderr[-3000:]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto((site / "index.html").as_uri())
        page.get_by_role("link", name="Getting started").first.wait_for(timeout=30_000)
        page.screenshot(path=tmp_path / "home.png", full_page=True)
        page.goto((site / "reference" / "configuration" / "index.html").as_uri())
        page.get_by_text("tuning.search_space.NAME.low").first.wait_for(timeout=30_000)
        rows = page.locator("table tr").count()
        page.screenshot(path=tmp_path / "configuration.png")
        browser.close()
    assert rows > 100  # every setting of every section
    assert (tmp_path / "home.png").stat().st_size > 10_000
