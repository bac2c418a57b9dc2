"""The README and the documentation site (docs/, mkdocs.yml): generated pages fresh, the
README short, linked to every page, free of measured figures, and its quick start the
commands the end-to-end tests run. `scripts/test.sh` builds the site with
`mkdocs build --strict` (broken links and missing pages fail)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.pages import DIGEST_MARK, PAGES, bench_digest
from docs_build.reference import pages
from tabular_mlops.mlflow.descriptions import SERVE_MODULE
from tests.conftest import E2E_EXPERIMENT, PROJECT_DIR, SERVICE_URI, mlflow_run_command

pytestmark = pytest.mark.unit

README = PROJECT_DIR / "README.md"


def readme() -> str:
    return README.read_text()


def nav_pages() -> list[str]:
    """Every page of the site's navigation, as a path under docs/."""

    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml names a Python function (the Mermaid fence): not this test's business.
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)
    settings = yaml.load((PROJECT_DIR / "mkdocs.yml").read_text(), Loader=Loader)

    def walk(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [page for item in node for page in walk(item)]
        if isinstance(node, dict):
            return [page for value in node.values() for page in walk(value)]
        return []

    return walk(settings["nav"])


def test_every_generated_page_is_as_its_source_makes_it() -> None:
    stale = [
        str(path.relative_to(PROJECT_DIR))
        for path, text in pages().items()
        if not path.exists() or path.read_text() != text
    ]
    assert not stale, f"stale: {stale}; run `python -m docs_build`"


def test_every_benchmark_page_was_written_by_its_bench_as_it_is_now() -> None:
    written = sorted(PAGES.glob("*.md"))
    assert written, "no benchmark page: run the benches (docs/benchmarks.md)"
    for page in written:
        text = page.read_text()
        module = re.search(r"`python -m bench\.(\w+)", text)
        digest = re.search(rf"{DIGEST_MARK} (\w+)", text)
        assert module and digest, f"{page.name}: not written by a bench"
        assert digest.group(1) == bench_digest(module.group(1)), (
            f"{page.name} is stale: bench.{module.group(1)} changed since; run it again"
        )


def test_the_readme_is_short_and_one_click_from_every_page() -> None:
    text = readme()
    assert len(text.splitlines()) <= 200
    linked = set(re.findall(r"\]\(docs/([^)#]+)", text))
    assert set(nav_pages()) - linked == set()


def test_the_readme_holds_no_figure_a_bench_or_the_suite_measures() -> None:
    # Such figures live on the benchmark pages, written by the benches, never copied.
    measured = re.compile(
        r"\b\d[\d,.]*\s?(?:s|ms|seconds|minutes|MB|GB|GiB|%|x|rows/s|tests)\b|\b0\.\d{2,}\b"
    )
    prose = re.sub(r"```.*?```", "", readme(), flags=re.S)
    assert measured.findall(prose) == []


def quick_start() -> list[list[str]]:
    """The commands of the README's path from a first model to a served one."""
    section = readme().split("## From a first model to a served one", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README's quick-start block"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines()]


def test_the_readme_quick_start_is_what_the_end_to_end_tests_run() -> None:
    train, ui, chain, serve = quick_start()
    # scripts/train.sh runs train_basic as tests/test_e2e_train_basic.py does.
    assert train == ["scripts/train.sh"]
    script = (PROJECT_DIR / "scripts" / "train.sh").read_text()
    expected = mlflow_run_command(".", "train_basic", "local")
    assert shlex.join(expected).replace("local", '"${ENV_MANAGER:-local}"') in script
    assert f"--experiment-name {E2E_EXPERIMENT}" in script
    assert ui[:2] == ["mlflow", "ui"]
    # The chain, as tests/test_e2e_main.py runs it (mlflow_run_command).
    assert chain == [*mlflow_run_command(".", "main", "local"), "--experiment-name", E2E_EXPERIMENT]
    # The server, as test_support.servers.model_server starts it for the e2e tests.
    assert serve[:5] == ["python", "-m", SERVE_MODULE, SERVICE_URI, "--env-manager"]
    assert serve[5] == "local" and serve[6] == "-p"


def test_every_page_the_site_lists_exists_and_every_page_is_listed() -> None:
    docs = PROJECT_DIR / "docs"
    listed = set(nav_pages())
    assert all((docs / page).is_file() for page in listed)
    written = {
        str(path.relative_to(docs))
        for path in docs.rglob("*.md")
        if "generated" not in path.parts and "benchmarks" not in path.parts
    }
    assert written - listed == set()


def test_the_images_the_pages_show_exist() -> None:
    docs = PROJECT_DIR / "docs"
    for page in docs.rglob("*.md"):
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / image).resolve().is_file(), (page.name, image)


def test_a_broken_link_fails_the_sites_strict_build(tmp_path: Path) -> None:
    """What scripts/test.sh runs on the site, shown to fail on a broken link."""
    shutil.copytree(PROJECT_DIR / "docs", tmp_path / "docs")
    shutil.copy(PROJECT_DIR / "mkdocs.yml", tmp_path)
    with (tmp_path / "docs" / "index.md").open("a") as index:
        index.write("\n[gone](no-such-page.md)\n")
    built = strict_site_build(tmp_path, tmp_path / "s")
    assert built.returncode != 0
    assert "contains a link 'no-such-page.md'" in built.stderr


def strict_site_build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of `project`'s site into `site`, as scripts/test.sh runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
