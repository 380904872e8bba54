"""The pieces every self-contained report shares (audit, compare, sweep report): one page
head with inline CSS, and Markdown table cells. No scripts, no links out: the files open
offline, as one file."""

from __future__ import annotations

import html

BASE_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:.9em}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.note{color:#555}img{max-width:100%}code{font-size:.9em}"""


def page_head(title: str, extra_css: str = "") -> str:
    """`<!doctype html>` up to and including the page's <h1>."""
    title = html.escape(title)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{BASE_CSS}{extra_css}</style></head><body><h1>{title}</h1>")


def md_cell(text: object) -> str:
    """A value as one Markdown table cell: pipes escaped, line breaks folded."""
    return str(text).replace("|", "\\|").replace("\n", " ")
