"""The built book's launch, repository, issue and download links all derive from one setting:
``repository.url`` + ``repository.branch`` in ``_config.yml`` (plus the launch-button hosts).

Each page of the quick-mode site (``_build/html``, built by ``tests/test_notebooks.py`` earlier in
the same run, or here if missing; the file is named to sort after ``test_notebooks.py`` and
``test_site.py``, as pytest runs files in name order) is read with an HTML parser, and every link
that points at a launch service or at the course's repository is compared with the URL the
setting implies for that page.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from bs4 import BeautifulSoup

from course_utils.build import pipeline
from course_utils.paths import REPO_ROOT

pytestmark = pytest.mark.slow  # reads the site that test_notebooks builds

SOURCE_SUFFIXES = (".ipynb", ".md")
# Pages Sphinx generates without a source file: they still carry the repository and issue buttons.
GENERATED_PAGES = ("genindex.html", "search.html")


@dataclass(frozen=True)
class LinkSetting:
    """What ``_config.yml`` says the links are made of."""

    owner: str
    repo: str
    branch: str
    binderhub: str  # e.g. "mybinder.org"
    colab: str  # e.g. "colab.research.google.com"

    @property
    def repo_url(self) -> str:
        return f"https://github.com/{self.owner}/{self.repo}"


def link_setting(config: dict) -> LinkSetting:
    """The setting from a parsed ``_config.yml``; a malformed ``repository.url`` raises."""
    url = urlsplit(config["repository"]["url"])
    parts = [p for p in url.path.split("/") if p]
    if url.scheme != "https" or url.netloc != "github.com" or len(parts) != 2:
        raise ValueError(f"repository.url {config['repository']['url']!r} is not a GitHub repo")
    launch = config["launch_buttons"]
    return LinkSetting(
        owner=parts[0],
        repo=parts[1].removesuffix(".git"),
        branch=config["repository"]["branch"],
        binderhub=urlsplit(launch["binderhub_url"]).netloc,
        colab=urlsplit(launch["colab_url"]).netloc,
    )


def config_setting() -> LinkSetting:
    """The setting in the repository's ``_config.yml``."""
    return link_setting(yaml.safe_load((REPO_ROOT / "_config.yml").read_text()))


def page_source(page: str) -> str | None:
    """The repository path of the file a built page (``notebooks/01_x.html``) comes from."""
    for suffix in SOURCE_SUFFIXES:
        source = posixpath.splitext(page)[0] + suffix
        if (REPO_ROOT / source).is_file():
            return source
    return None


def link_problems(html: str, page: str, source: str | None, setting: LinkSetting) -> list[str]:
    """Every way the links of one built page (``html``, at ``page`` in the site, built from the
    repository file ``source``) disagree with ``setting``; empty when they all agree."""
    soup = BeautifulSoup(html, "html.parser")
    hrefs = [a["href"] for a in soup.find_all("a", href=True)]
    problems: list[str] = []
    found = {"binder": 0, "colab": 0, "repository": 0, "issues": 0, "download": 0}
    repo_path = f"/{setting.owner}/{setting.repo}"

    for href in hrefs:
        if any(ch.isspace() for ch in href):
            problems.append(f"whitespace in link {href!r}")
            continue
        url = urlsplit(href)
        if "_sources/" in href and not url.scheme:
            found["download"] += 1
            target = posixpath.normpath(posixpath.join(posixpath.dirname(page), url.path))
            if source is None or target != f"_sources/{source}":
                problems.append(f"download link {href!r} is not _sources/{source}")
            continue
        if not url.scheme:
            continue  # a link inside the site
        host = url.netloc.lower()
        if host == setting.binderhub:
            found["binder"] += 1
            want_path = f"/v2/gh{repo_path}/{setting.branch}"
            urlpath = parse_qs(url.query).get("urlpath")
            if url.scheme != "https" or url.path != want_path or urlpath != [f"lab/tree/{source}"]:
                problems.append(
                    f"Binder link {href!r}: want https://{host}{want_path}"
                    f"?urlpath=lab/tree/{source}"
                )
        elif host == setting.colab:
            found["colab"] += 1
            want = f"https://{host}/github{repo_path}/blob/{setting.branch}/{source}"
            if href != want:
                problems.append(f"Colab link {href!r}: want {want!r}")
        elif host == "github.com":
            parts = [p for p in url.path.split("/") if p]
            if len(parts) < 2 or parts[1].lower() != setting.repo.lower():
                continue  # another project (a reference, a dataset)
            if url.scheme != "https" or parts[:2] != [setting.owner, setting.repo]:
                problems.append(f"link {href!r} is not to {setting.repo_url}")
            elif len(parts) == 2 and not url.query:
                found["repository"] += 1
            elif parts[2:] == ["issues", "new"]:
                found["issues"] += 1
                title = parse_qs(url.query).get("title")
                if title != [f"Issue on page /{page}"]:
                    problems.append(f"issue link {href!r}: title {title} names another page")
            elif len(parts) > 4 and parts[2] in ("blob", "tree"):
                if parts[3] != setting.branch:
                    problems.append(f"link {href!r} is not on branch {setting.branch!r}")
                elif not (REPO_ROOT / "/".join(parts[4:])).exists():
                    problems.append(f"link {href!r}: no such file in the repository")
            else:
                problems.append(f"link {href!r}: an unexpected repository address")

    expected = {"repository": 1, "issues": 1}
    if source is not None:
        expected["download"] = 1
        if source.endswith(".ipynb"):
            expected |= {"binder": 1, "colab": 1}
    for kind, count in found.items():
        if count != expected.get(kind, 0):
            problems.append(f"{count} {kind} link(s), expected {expected.get(kind, 0)}")
    return problems


def built_pages(html_dir: Path) -> list[str]:
    """The pages a reader can open: every built page with a source, plus the generated ones."""
    pages = [p.relative_to(html_dir).as_posix() for p in sorted(html_dir.rglob("*.html"))]
    return [p for p in pages if p in GENERATED_PAGES or page_source(p) is not None]


@pytest.fixture(scope="module")
def html_dir() -> Path:
    """The quick-mode site (built by tests/test_notebooks.py; built here only if missing)."""
    html = pipeline.BUILD / "html"
    if not (html / "index.html").exists():
        pipeline.ensure_book(quick=True)
    return html


def test_config_names_a_github_repository_and_branch() -> None:
    """The setting parses: a GitHub repository, a branch name, and the two launch hosts."""
    setting = config_setting()
    assert setting.branch.strip() == setting.branch != "", f"branch {setting.branch!r}"
    assert "." in setting.binderhub and "." in setting.colab, setting


def test_every_page_links_from_the_one_setting(html_dir: Path) -> None:
    """Binder, Colab, repository, issue and download links of every page match the setting."""
    setting = config_setting()
    pages = built_pages(html_dir)
    sources = [page_source(p) for p in pages]
    assert sum(s is not None and s.endswith(".ipynb") for s in sources) >= 30, pages
    problems = {
        page: found
        for page, source in zip(pages, sources, strict=True)
        if (found := link_problems((html_dir / page).read_text(), page, source, setting))
    }
    assert not problems, "\n".join(f"{p}: {'; '.join(found)}" for p, found in problems.items())


SETTING = LinkSetting("course-org", "course", "main", "mybinder.org", "colab.research.google.com")
SOURCE = "notebooks/01_baseline_cnn.ipynb"
PAGE = "notebooks/01_baseline_cnn.html"
GOOD_LINKS = {
    "binder": "https://mybinder.org/v2/gh/course-org/course/main"
    "?urlpath=lab/tree/notebooks/01_baseline_cnn.ipynb",
    "colab": "https://colab.research.google.com/github/course-org/course/blob/main/"
    "notebooks/01_baseline_cnn.ipynb",
    "repository": "https://github.com/course-org/course",
    "issues": "https://github.com/course-org/course/issues/new"
    "?title=Issue%20on%20page%20%2Fnotebooks/01_baseline_cnn.html&body=Text",
    "download": "../_sources/notebooks/01_baseline_cnn.ipynb",
}


def page_with(links: dict[str, str]) -> str:
    return "".join(f'<a class="btn" href="{href}">{kind}</a>' for kind, href in links.items())


def test_a_page_with_the_right_links_passes() -> None:
    assert link_problems(page_with(GOOD_LINKS), PAGE, SOURCE, SETTING) == []


@pytest.mark.parametrize(
    ("kind", "href", "complaint"),
    [
        ("binder", GOOD_LINKS["binder"].replace("/main", "/master"), "Binder link"),
        ("binder", GOOD_LINKS["binder"].replace("01_baseline", "02_baseline"), "Binder link"),
        ("colab", GOOD_LINKS["colab"].replace("course-org", "other-org"), "Colab link"),
        ("repository", "https://github.com/placeholder/course", "is not to"),
        ("issues", GOOD_LINKS["issues"].replace("01_baseline", "02_baseline"), "names another"),
        ("download", "../_sources/notebooks/02_batchnorm.ipynb", "download link"),
        ("colab", "https://colab.research.google.com/github/course-org/c ourse", "whitespace"),
    ],
)
def test_a_wrong_link_is_reported(kind: str, href: str, complaint: str) -> None:
    problems = link_problems(page_with(GOOD_LINKS | {kind: href}), PAGE, SOURCE, SETTING)
    assert any(complaint in p for p in problems), problems


def test_a_missing_launch_button_is_reported() -> None:
    links = {k: v for k, v in GOOD_LINKS.items() if k != "colab"}
    assert "0 colab link(s), expected 1" in link_problems(page_with(links), PAGE, SOURCE, SETTING)


def test_a_malformed_repository_url_is_refused() -> None:
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    config["repository"]["url"] = "https://gitlab.com/owner/repo/extra"
    with pytest.raises(ValueError, match="not a GitHub repo"):
        link_setting(config)
