"""The built book, in a real browser: headless Chromium (Debian's) driven by Playwright.

The book is built in quick mode (reusing the executed notebooks of ``test_notebooks.py``, which
runs first), served on 127.0.0.1, and every page in the table of contents is loaded. A screenshot
of each page is saved to ``_build/screenshots/`` for a reviewer to look at. axe-core, vendored in
``tests/vendor/axe-core/``, checks every page against WCAG 2.x A/AA (``test_axe_every_page``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import nbformat
import pytest
import yaml
from browser_support import SCREENSHOTS, chromium, requires_chromium, serve_directory

from course_utils.build import pipeline

# Console errors of the theme itself, not of the course: jupyter-book 1.0.4 registers
# sphinx-thebe's inline configuration script twice, so its `const` is declared twice. Thebe
# (live code cells) is not used by this book; nothing else on the page is affected.
KNOWN_THEME_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)


def toc_pages() -> list[str]:
    """Every page of ``_toc.yml`` as a path without suffix, root first."""
    toc = yaml.safe_load((pipeline.REPO / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [entry["file"] for entry in part.get("chapters", [])]
    return pages


PAGES = toc_pages()
GENERATED_PAGES = ["genindex", "search"]  # pages Sphinx writes without a source file
HIDDEN = {"remove-cell", "remove-output"}  # tags whose outputs never reach the page


def executed_figures(name: str) -> int:
    """How many ``image/png`` outputs the quick-mode executed copy of a page shows (cells whose
    output the book removes are not counted)."""
    path = pipeline.executed_dir(quick=True) / f"{name}.ipynb"
    cells = nbformat.read(path, as_version=4).cells
    return sum(
        "image/png" in out.get("data", {})
        for cell in cells
        if cell.cell_type == "code" and not HIDDEN & set(cell.metadata.get("tags", []))
        for out in cell.get("outputs", [])
    )


# The longest line of every code cell that scrolls sideways at the test's viewport (1280 px).
CLIPPED_CODE_JS = """els => els
    .filter(e => e.scrollWidth > e.clientWidth + 1)
    .map(e => e.innerText.split("\\n").reduce((a, b) => (a.length >= b.length ? a : b)))"""
IMAGE_FILE = re.compile(r"\.(png|jpe?g|svg|gif)$", re.IGNORECASE)

# axe-core (vendored from npm, see tests/vendor/axe-core/README.md) with the WCAG 2.0-2.2 A and
# AA rules, plus two best-practice rules whose violations book/_ext/course_a11y.py fixed and
# that stay fixed: content outside landmarks and empty table header cells.
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
AXE_EXTRA_RULES = ["region", "empty-table-header"]
AXE_RUN_JS = """async ({tags, rules}) => {
    const options = {
        runOnly: {type: "tag", values: tags},
        rules: Object.fromEntries(rules.map(id => [id, {enabled: true}])),
        resultTypes: ["violations"],
    };
    const result = await axe.run(document, options);
    return result.violations.map(v => ({
        id: v.id, impact: v.impact, targets: v.nodes.map(n => n.target.join(" ")),
    }));
}"""
# Saved ipywidgets render after the load: each widget's root is drawn next to its script tag,
# and each Output widget shows its saved outputs.
WIDGETS_DRAWN_JS = """() => {
    const views = document.querySelectorAll(
        'script[type="application/vnd.jupyter.widget-view+json"]');
    return Array.from(views).every(s => s.parentElement.querySelector(".jupyter-widgets"))
        && Array.from(document.querySelectorAll(".widget-output"))
            .every(o => o.querySelector(".jp-OutputArea-output"));
}"""
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [requires_chromium, pytest.mark.browser]  # Chromium


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The quick-mode book, served over HTTP on a free loopback port."""
    with serve_directory(pipeline.ensure_book(quick=True).parent) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module; requests to any other host are blocked."""
    with chromium() as instance:
        yield instance


def open_page(browser, url: str) -> tuple[object, object, list[str], list[str]]:
    """Load ``url``; return the page, the response, console errors and off-site requests."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    external: list[str] = []
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("pageerror", lambda e: None if str(e) in KNOWN_THEME_ERRORS else errors.append(str(e)))

    def route(r) -> None:
        if urlparse(r.request.url).hostname in ("127.0.0.1", None):
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    response = page.goto(url, wait_until="networkidle")
    return page, response, errors, external


LINK_STATUS: dict[str, int] = {}  # internal URL → HTTP status, shared by the pages


@pytest.mark.parametrize("name", PAGES)
def test_page(site: str, browser, name: str) -> None:
    """Loads with 200, no console errors, nothing fetched off-site, a title, no tracebacks, no
    code cell that scrolls sideways; on chapter pages every executed figure and no injected
    parameters; every internal link resolves; and axe-core finds no critical or serious
    violation."""
    page, response, errors, external = open_page(browser, urljoin(site, f"{name}.html"))
    try:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name.replace('/', '__')}.png"), full_page=True)
        assert response is not None and response.status == 200
        assert not errors, f"console errors: {errors}"
        assert not external, f"the page needs other hosts (breaks offline): {external}"
        heading = page.locator("main h1").first.inner_text().strip("#¶ \n")
        assert heading and heading.split()[0] in page.title()
        text = page.locator("main").inner_text()
        assert "Traceback" not in text and page.locator("main .output.error").count() == 0
        clipped = page.eval_on_selector_all("main .cell_input pre", CLIPPED_CODE_JS)
        assert not clipped, f"code cells scroll sideways (lines too long): {clipped}"
        # Every output figure says what it shows (WCAG 1.1.1): myst-nb's default alt is the
        # image's file name; the cell's metadata {"mystnb": {"image": {"alt": ...}}} sets it.
        alts = page.eval_on_selector_all(
            "main .cell_output img",
            "imgs => imgs.filter(i => !i.closest('.jupyter-widgets'))"
            ".map(i => (i.getAttribute('alt') || '').trim())",
        )
        unnamed = [a or "(empty)" for a in alts if len(a) < 20 or IMAGE_FILE.search(a)]
        assert not unnamed, f"figures whose alt text is empty, short or a file name: {unnamed}"
        if name.startswith("notebooks/"):
            # Figures inside cell outputs only: the launch buttons' logos are <img> too, and so
            # are the images a saved widget draws (chapter 5's explorer, tested below).
            figures = page.eval_on_selector_all(
                "main .cell_output img",
                "imgs => imgs.filter(i => !i.closest('.jupyter-widgets')).length",
            )
            expected = executed_figures(name)
            assert expected >= 1, f"{name}: the executed chapter has no figure at all"
            assert figures == expected, f"{figures} figures on the page, {expected} executed"
            # papermill's injected parameters (QUICK = True in this build) stay off the page.
            assert page.locator("main .tag_injected-parameters").count() == 0
            code = "\n".join(page.locator("main .cell_input").all_inner_texts())
            assert "QUICK = True" not in code, "the injected-parameters cell is visible"
        links = {
            urldefrag(urljoin(page.url, href))[0]
            for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        }
        internal = sorted(u for u in links if u.startswith(site))
        assert internal, "the page links nowhere: the navigation did not render"
        for url in set(internal) - set(LINK_STATUS):  # each URL fetched once for all pages
            LINK_STATUS[url] = page.request.get(url).status
        broken = [u for u in internal if LINK_STATUS[u] != 200]
        assert not broken, f"broken internal links: {broken}"
        assert_no_axe_violation(page, name)
    finally:
        page.close()


def axe_violations(page) -> list[dict[str, object]]:
    """axe-core's violations on a loaded page (after its saved widgets are drawn): each rule's
    id, impact and the CSS selectors of the elements that fail it."""
    page.wait_for_function(WIDGETS_DRAWN_JS, timeout=15_000)
    page.add_script_tag(path=str(AXE))
    return page.evaluate(AXE_RUN_JS, {"tags": AXE_TAGS, "rules": AXE_EXTRA_RULES})


def blocking(violation: dict[str, object]) -> bool:
    """A critical or serious violation, or one of the two best-practice rules kept fixed."""
    return violation["impact"] in ("critical", "serious") or violation["id"] in AXE_EXTRA_RULES


def assert_no_axe_violation(page, name: str) -> None:
    """axe-core finds no critical or serious WCAG 2.x A/AA violation on the loaded page, and no
    content outside landmarks or empty table header; the failure lists each rule, its impact
    and the first elements that fail."""
    problems = [
        f"{name}.html: {v['id']} ({v['impact']}, {len(v['targets'])} element(s)): "
        + "; ".join(v["targets"][:3])
        for v in filter(blocking, axe_violations(page))
    ]
    assert not problems, f"{len(problems)} axe violation(s):\n" + "\n".join(problems)


@pytest.mark.parametrize("name", GENERATED_PAGES)
def test_axe_generated_pages(site: str, browser, name: str) -> None:
    """The index and search pages, which Sphinx makes (every TOC page is checked by test_page)."""
    page, response, _, _ = open_page(browser, urljoin(site, f"{name}.html"))
    try:
        assert response is not None and response.status == 200, name
        assert_no_axe_violation(page, name)
    finally:
        page.close()


@pytest.mark.skipif(
    "notebooks/05_visualising" not in PAGES, reason="chapter 5 is not in the book yet"
)
def test_chapter5_widget_renders(site: str, browser) -> None:
    """The explorer's saved widget state renders in the static page, from local JavaScript."""
    page, _, errors, external = open_page(browser, urljoin(site, "notebooks/05_visualising.html"))
    try:
        widget = page.locator("main .jupyter-widgets").first
        widget.wait_for(state="visible", timeout=15_000)
        assert widget.bounding_box()["height"] > 20
        assert not errors and not external
    finally:
        page.close()


def test_search_finds_a_chapter(site: str, browser) -> None:
    """The search page returns a chapter for "BatchNorm"."""
    page, _, errors, _ = open_page(browser, urljoin(site, "search.html?q=BatchNorm"))
    try:
        results = page.locator("#search-results li a")
        results.first.wait_for(timeout=15_000)
        hrefs = [results.nth(i).get_attribute("href") for i in range(results.count())]
        assert any("notebooks/" in (h or "") for h in hrefs), hrefs
        assert not errors
    finally:
        page.close()
