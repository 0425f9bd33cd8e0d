"""Page structure: every section has content, and numbered headings count 1, 2, 3, ….

Over every chapter notebook (``notebooks/*.ipynb``), every executable book page (the cheat sheet,
the appendix "Training fast", the results page: ``book/*.ipynb``) and the book's Markdown pages,
as the reader sees them:

- **no empty section**: a heading is never followed directly (nothing visible in between) by a
  heading of the same or a higher level, nor ends the page. Cells tagged ``remove-cell`` are not
  on the page, so they do not count as content; a visible code cell or its output does.
- **no section whose content is elsewhere**: a section with no code of its own whose text points
  at "the table above" (or figure, plot, output) reads its evidence from another section: its
  heading is in the wrong place, or its content is missing.
- **no announcement without its content**: a sentence that ends with a colon ("… and load it with
  plain ``torch.jit.load``:") is followed by what it announces, not by the next heading. This is
  the shape of a section whose code went somewhere else.
- **numbered headings are consecutive**: below the title, headings that start with a number
  (``## 1. …``, ``## Part 2: …``) count 1, 2, 3, … at each level within their parent section;
  a chapter's title number is its file's number (``# 5. …`` in ``05_*.ipynb``);
- **no page over 3,000 words of prose** (the whitespace-separated words of its Markdown cells):
  a longer chapter moves a part to an appendix page.

The checks read the source notebooks (stored without outputs), so they need no build. To check
other copies (an old version, say): ``python tests/test_headings.py PAGE.ipynb ...``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from course_utils.paths import REPO_ROOT

PAGES = sorted((REPO_ROOT / "notebooks").glob("*.ipynb")) + sorted(
    (REPO_ROOT / "book").glob("*.ipynb")
)
MARKDOWN_PAGES = sorted((REPO_ROOT / "book").glob("*.md"))

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
NUMBER = re.compile(r"^(?:Part\s+)?(\d+)[.:)]\s")
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Heading:
    """One heading: its level (number of ``#``), text, and the cell it is in."""

    level: int
    text: str
    cell: int

    @property
    def number(self) -> int | None:
        """The number the heading starts with (``2. …``, ``Part 2: …``), or None."""
        match = NUMBER.match(self.text)
        return int(match[1]) if match else None

    def __str__(self) -> str:
        return f"cell {self.cell}: {'#' * self.level} {self.text}"


@dataclass(frozen=True)
class Content:
    """Something visible that is not a heading: a line of Markdown (its text) or a code cell."""

    text: str
    cell: int


Item = Heading | Content


def page_items(cells: list[dict]) -> list[Item]:
    """What the reader sees, in order: headings and content (a Markdown line, a code cell).

    Markdown is read line by line; ``#`` lines inside fenced code blocks are code, not headings.
    A cell tagged ``remove-cell`` is not on the page and gives nothing.
    """
    items: list[Item] = []
    for index, cell in enumerate(cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if "remove-cell" in tags:
            continue
        source = cell["source"]
        source = "".join(source) if isinstance(source, list) else source
        if cell["cell_type"] != "markdown":
            if source.strip():
                items.append(Content("", index))
            continue
        fenced = False
        for line in source.splitlines():
            if FENCE.match(line):
                fenced = not fenced
                items.append(Content("", index))
                continue
            match = None if fenced else HEADING.match(line)
            if match:
                items.append(Heading(len(match[1]), match[2], index))
            elif line.strip():
                items.append(Content("" if fenced else line.strip(), index))
    return items


def empty_sections(items: list[Item]) -> list[str]:
    """Headings followed directly by a heading of the same or a higher level, or by nothing."""
    problems = []
    for here, after in zip(items, [*items[1:], None], strict=True):
        if not isinstance(here, Heading):
            continue
        if after is None:
            problems.append(f"{here} ends the page with nothing under it")
        elif isinstance(after, Heading) and after.level <= here.level:
            problems.append(f"{here} is empty: the next thing on the page is {after}")
    return problems


POINTS_BACK = re.compile(r"\b(?:table|figure|plot|output|code|cell)s? above\b", re.IGNORECASE)


def sections_pointing_elsewhere(items: list[Item]) -> list[str]:
    """Sections without a code cell or code block whose text points at a table etc. above."""
    problems = []
    sections: list[tuple[Heading, list[Content]]] = []
    for item in items:
        if isinstance(item, Heading):
            sections.append((item, []))
        elif sections:
            sections[-1][1].append(item)
    for heading, body in sections:
        if any(not content.text for content in body):  # a code cell or a fenced block
            continue
        match = POINTS_BACK.search(" ".join(content.text for content in body))
        if match:
            problems.append(
                f"{heading} has nothing of its own to show: its text points at "
                f"{match[0]!r}, in another section"
            )
    return problems


def dangling_lead_ins(items: list[Item]) -> list[str]:
    """Text ending in a colon (it announces code, a list, a table) followed by a heading."""
    return [
        f"cell {here.cell}: {here.text[-60:]!r} announces content, but {after} comes next"
        for here, after in zip(items, items[1:], strict=False)
        if isinstance(here, Content) and here.text.endswith(":") and isinstance(after, Heading)
    ]


def numbering_gaps(items: list[Item], chapter: int | None = None) -> list[str]:
    """Numbered headings that do not continue 1, 2, 3, … within their level and parent.

    ``chapter``: the number a level-1 title must carry (a chapter notebook's file number).
    """
    problems = []
    last: dict[int, int] = {}  # level -> the last number seen under the current parent
    for item in items:
        if not isinstance(item, Heading):
            continue
        for deeper in [level for level in last if level > item.level]:
            del last[deeper]  # a new parent section: numbering below it starts again
        number = item.number
        if item.level == 1:
            if chapter is not None and number is not None and number != chapter:
                problems.append(f"{item}: the title's number should be {chapter}")
            continue
        if number is None:
            continue
        expected = last.get(item.level, 0) + 1
        if number != expected:
            problems.append(f"{item}: expected number {expected}, found {number}")
        last[item.level] = number
    return problems


def structure_problems(cells: list[dict], chapter: int | None = None) -> list[str]:
    """Every structure problem of a page given as notebook cells, as readable lines."""
    items = page_items(cells)
    return (
        empty_sections(items)
        + sections_pointing_elsewhere(items)
        + dangling_lead_ins(items)
        + numbering_gaps(items, chapter)
    )


def notebook_problems(path: Path) -> list[str]:
    """Every structure problem of one notebook page (a chapter's title number: its file's)."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    stem = Path(path).name.split("_", 1)[0]
    return structure_problems(cells, int(stem) if stem.isdigit() else None)


def markdown_problems(path: Path) -> list[str]:
    """The same checks for a Markdown page (one cell)."""
    text = Path(path).read_text(encoding="utf-8")
    return structure_problems([{"cell_type": "markdown", "metadata": {}, "source": text}])


def test_the_pages_are_found() -> None:
    """The globs find the ten chapters and the book pages (an empty glob would pass vacuously)."""
    names = {p.name for p in PAGES}
    assert len([p for p in PAGES if p.parent.name == "notebooks"]) >= 10
    assert {"cheatsheet.ipynb", "training_fast.ipynb"} <= names
    assert any(p.name == "intro.md" for p in MARKDOWN_PAGES)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_structure(path: Path) -> None:
    """No empty section and no gap in the numbered headings."""
    problems = notebook_problems(path)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", MARKDOWN_PAGES, ids=lambda p: f"book/{p.name}")
def test_markdown_page_structure(path: Path) -> None:
    """The same for the book's Markdown pages."""
    problems = markdown_problems(path)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


# A page is read, not skimmed: no chapter or appendix page has more than 3,000 words of prose
# (whitespace-separated words of its Markdown cells, removed cells included).
MAX_PROSE_WORDS = 3000


def prose_words(cells: list[dict]) -> int:
    """The whitespace-separated words of a notebook's Markdown cells."""
    return sum(
        len("".join(cell["source"]).split()) for cell in cells if cell["cell_type"] == "markdown"
    )


def prose_problem(path: Path) -> str | None:
    """``None``, or a line naming the notebook and its word count when it is over the limit."""
    words = prose_words(json.loads(Path(path).read_text(encoding="utf-8"))["cells"])
    if words <= MAX_PROSE_WORDS:
        return None
    return (
        f"{Path(path).parent.name}/{Path(path).name} has {words:,} words of prose (Markdown "
        f"cells), over {MAX_PROSE_WORDS:,}: split it (an appendix page) or cut it"
    )


@pytest.mark.parametrize("path", PAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_page_has_more_than_3000_words_of_prose(path: Path) -> None:
    """Every chapter and every executable book page (the appendices) stays readable."""
    problem = prose_problem(path)
    assert problem is None, problem


def test_the_word_count_counts_markdown_cells_only(tmp_path: Path) -> None:
    """Chapter 9's old bug: 4,981 words on one page. Code cells do not count; 3,001 words fail."""
    cells = [_md("# T\n\n" + "word " * 2998), _code("x = 1 " * 5000)]
    assert prose_words(cells) == 3000
    page = tmp_path / "09_long.ipynb"
    page.write_text(json.dumps({"cells": cells}), encoding="utf-8")
    assert prose_problem(page) is None
    cells.append(_md("one more"))
    page.write_text(json.dumps({"cells": cells}), encoding="utf-8")
    assert "09_long.ipynb has 3,002 words" in prose_problem(page)


# The checker itself, on small pages with one known defect each (the defects this test exists
# for: a heading whose text moved below the next heading, a skipped number, an empty section).


def _md(text: str, tags: tuple[str, ...] = ()) -> dict:
    return {"cell_type": "markdown", "metadata": {"tags": list(tags)}, "source": text}


def _code(text: str, tags: tuple[str, ...] = ()) -> dict:
    return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": text}


def test_a_well_formed_page_passes() -> None:
    cells = [
        _md("# 3. Title\n\nIntro."),
        _md("## 1. First\n\nText.\n\n### Detail\n\nMore."),
        _code("x = 1"),
        _md("## 2. Second\n\n```python\n# a comment, not a heading\n```"),
        _md("## Summary\n\nDone."),
    ]
    assert structure_problems(cells, chapter=3) == []


def test_a_heading_followed_by_a_heading_is_an_empty_section() -> None:
    cells = [_md("# T\n\nText."), _md("## Bad files"), _md("## ONNX\n\nText.")]
    (problem,) = structure_problems(cells)
    assert "## Bad files" in problem and "empty" in problem


def test_an_announcement_followed_by_a_heading_is_caught() -> None:
    """Chapter 8's old bug: "## Bad files … we flip 16 bytes … with plain `torch.jit.load`:"
    followed by "## ONNX …", the byte-flip code much further down."""
    cells = [
        _md("# T\n\nText."),
        _md("## Bad files\n\nWe flip 16 bytes and load it\nwith plain `torch.jit.load`:"),
        _md("## ONNX\n\nText."),
        _code("x = 1"),
    ]
    (problem,) = structure_problems(cells)
    assert "torch.jit.load`:" in problem and "## ONNX" in problem
    cells.insert(2, _code("damaged = flip(path)"))  # the code where it belongs
    assert structure_problems(cells) == []


def test_an_empty_last_section_and_a_removed_cell_are_caught() -> None:
    """Chapter 4's old bug: a section whose only cell is removed from the page is empty."""
    cells = [
        _md("# T\n\nText."),
        _md("## The test set, once"),
        _code("glue('x', 1)", tags=("remove-cell",)),
    ]
    (problem,) = structure_problems(cells)
    assert "The test set, once" in problem and "ends the page" in problem


def test_a_section_that_only_points_at_a_table_above_is_caught() -> None:
    """Chapter 4's old bug: "## The test set, once" whose text was "The table above is also the
    test-set record …", the table in the section before it."""
    cells = [
        _md("# T\n\nText."),
        _md("## Results\n\nThe validation table:"),
        _code("table"),
        _md("## The test set, once\n\nThe table above is also the test-set record."),
    ]
    (problem,) = structure_problems(cells)
    assert "The test set, once" in problem and "table above" in problem
    cells.append(_code("test_table"))  # the section shows its own table
    assert structure_problems(cells) == []


def test_a_subsection_is_not_an_empty_section_but_its_parent_needs_no_text() -> None:
    cells = [_md("# T\n\nText."), _md("## Part\n### Sub\n\nText.")]
    assert structure_problems(cells) == []


def test_a_skipped_number_is_caught() -> None:
    """Chapter 9's old bug: "## 1." followed by "## 3."."""
    cells = [_md("# T\n\nText."), _md("## 1. A\n\nText."), _md("## 3. C\n\nText.")]
    (problem,) = structure_problems(cells)
    assert "expected number 2, found 3" in problem


def test_numbering_restarts_under_a_new_parent_and_counts_parts() -> None:
    cells = [
        _md("# T\n\nText."),
        _md("## Part 1: a\n\n### 1. x\n\nText.\n\n### 2. y\n\nText."),
        _md("## Part 2: b\n\n### 1. z\n\nText."),
    ]
    assert structure_problems(cells) == []
    cells.append(_md("## Part 4: d\n\nText."))
    assert len(structure_problems(cells)) == 1


def test_a_title_number_must_match_the_chapter() -> None:
    assert len(structure_problems([_md("# 4. Title\n\nText.")], chapter=5)) == 1


if __name__ == "__main__":  # python tests/test_headings.py PAGE ...: any pages, e.g. old copies
    import sys

    found = {
        page: (markdown_problems if page.endswith(".md") else notebook_problems)(Path(page))
        for page in sys.argv[1:]
    }
    for page, problems in found.items():
        print(f"{page}: " + ("ok" if not problems else "\n  " + "\n  ".join(problems)))
    sys.exit(1 if any(found.values()) else 0)
