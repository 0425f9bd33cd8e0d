"""Accessibility fixes for what the theme and myst-nb write into every page of the book.

``tests/test_site.py`` runs axe-core (WCAG 2.x A/AA) on every page; these are the fixes
for what it found in HTML that the course does not write itself, each made where that
HTML is produced:

- ``templates/``: copies of three pydata-sphinx-theme components (the header's
  colour-mode and search buttons, the book title in the sidebar), found before the
  theme's own; each says what it changes (axe: label-content-name-mismatch, region);
- :func:`visit_hide_input`: myst-nb's "Show code cell source" toggle without the
  ``aria-label="Toggle hidden content"`` that kept its visible text out of its name
  (label-content-name-mismatch);
- :class:`EmptyTableHeaders`: the empty corner ``<th>`` of pandas tables becomes a
  ``<td>``, as in the W3C tables tutorial (empty-table-header);
- ``book/_static/widget-a11y.js``: names for the sliders of saved ipywidgets and alt
  text for the figures they show (aria-input-field-name, image-alt).
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

from docutils import nodes
from myst_nb.sphinx_ import HideCodeCellNode, depart_HideCellInput
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.transforms.post_transforms import SphinxPostTransform

TEMPLATES = Path(__file__).resolve().parent / "templates"
# An empty header cell as pandas writes it: DataFrame.to_html's `<th></th>` and the
# Styler's `<th class="blank level0" >&nbsp;</th>` (`<thead>` does not match).
EMPTY_HEADER = re.compile(r"<th(\s[^>]*)?>(?:\s|&nbsp;|&#160;)*</th>", re.IGNORECASE)


def empty_headers_to_cells(html: str) -> str:
    """``html`` with every empty ``<th>`` written as a ``<td>`` (same attributes): a
    cell that heads nothing is a data cell. The table looks the same: the theme styles
    the header row, not its cells."""
    return EMPTY_HEADER.sub(lambda m: f"<td{m.group(1) or ''}></td>", html)


class EmptyTableHeaders(SphinxPostTransform):
    """Rewrite the empty header cells of each HTML table an output (or glue) shows."""

    # After myst-nb has chosen each output's MIME type (priority 4) and glued (5).
    default_priority = 500
    formats = ("html",)

    def run(self, **kwargs: object) -> None:
        for node in self.document.findall(nodes.raw):
            text = node.astext()
            if "html" in node.get("format", "").split() and "<table" in text:
                fixed = empty_headers_to_cells(text)
                if fixed != text:
                    node[:] = [nodes.Text(fixed)]


def visit_hide_input(self: nodes.NodeVisitor, node: HideCodeCellNode) -> None:
    """myst-nb 1.4's ``visit_HideCellInput`` without an ``aria-label`` on the
    ``<summary>``: its visible text ("Show code cell source") is its name."""
    show, hide = escape(node["prompt_show"]), escape(node["prompt_hide"])
    self.body.append(f'<details class="admonition hide {" ".join(node["classes"])}">\n')
    self.body.append("<summary>\n")
    self.body.append(f'<p class="collapsed admonition-title">{show}</p>\n')
    self.body.append(f'<p class="expanded admonition-title">{hide}</p>\n')
    self.body.append("</summary>\n")


def add_templates(app: Sphinx, config: Config) -> None:
    """Put the course's theme components first on the template path."""
    if str(TEMPLATES) not in config.templates_path:
        config.templates_path.insert(0, str(TEMPLATES))


def setup(app: Sphinx) -> dict[str, object]:
    # myst-nb registers the node first; this replaces its HTML visitor.
    app.setup_extension("myst_nb")
    html = (visit_hide_input, depart_HideCellInput)
    app.add_node(HideCodeCellNode, override=True, html=html)
    app.add_post_transform(EmptyTableHeaders)
    app.add_js_file("widget-a11y.js")
    app.connect("config-inited", add_templates)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
