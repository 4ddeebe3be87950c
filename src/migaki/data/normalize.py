"""Text normalization: Unicode form, control characters, whitespace, optional HTML.

Each function returns the new text; `normalize_text` also says which of its steps changed
something, so the pipeline can report why a row changed.
"""

from __future__ import annotations

import html
import re
import unicodedata

from migaki.config import NormalizeConfig

# Control characters except tab and newline, DEL, C1 controls, zero-width characters and a
# stray byte-order mark: invisible, but they split tokens and defeat exact de-duplication.
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}")
TRAILING_SPACES = re.compile(r"[ \t]+$", re.MULTILINE)
BLANK_LINES = re.compile(r"\n{3,}")
TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)\b[^<>]*>|<!--.*?-->", re.DOTALL)
BLOCK_TAGS = {"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul"}


def normalize_text(text: str, config: NormalizeConfig) -> tuple[str, list[str]]:
    """The normalized text and the names of the steps that changed it."""
    changed = []
    for name, step in _steps(config):
        new = step(text)
        if new != text:
            changed.append(name)
            text = new
    return text, changed


def _steps(config: NormalizeConfig):
    if config.strip_html:
        yield "html", strip_html
    if config.control_chars:
        yield "control_chars", remove_control_chars
    if config.unicode != "none":
        form = config.unicode
        yield form.lower(), lambda text: unicodedata.normalize(form, text)
    if config.whitespace:
        yield "whitespace", tidy_whitespace


def remove_control_chars(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return CONTROL.sub("", text)


def tidy_whitespace(text: str) -> str:
    """Trailing spaces and surplus blank lines go, runs of spaces inside a line become one.
    Leading indentation stays: it carries meaning in code."""
    text = TRAILING_SPACES.sub("", text)
    text = INNER_SPACES.sub(" ", text)
    text = BLANK_LINES.sub("\n\n", text)
    return text.strip()


def strip_html(text: str) -> str:
    """Tags removed (block tags become line breaks), entities decoded."""
    if "<" not in text and "&" not in text:
        return text
    text = TAG.sub(lambda m: "\n" if (m.group(2) or "").lower() in BLOCK_TAGS else "", text)
    return html.unescape(text)
