import re
import warnings
from html.parser import HTMLParser

import pytest

from migaki.data.report_html import pick_cjk_font, render_data_report

EVIL = "<script>alert(1)</script>"
PLOT_SECTIONS = ("lengths", "labels", "languages", "pii")


def full_report() -> dict:
    edges = list(range(0, 1100, 100))
    return {
        "file": "data/train.jsonl",
        "generated": "2026-11-25T10:00:00+0900",
        "rows": 1200,
        "valid_rows": 1190,
        "format": "messages",
        "errors": {
            "by_kind": {"invalid_json": 3, "no_assistant": 7},
            "examples": [
                {"line": 12, "kind": "invalid_json", "message": "data/train.jsonl:12: invalid"}
            ],
        },
        "char_lengths": {
            "percentiles": {"p50": 120, "p90": 300, "p99": 800, "max": 1500},
            "histogram": {"edges": edges, "counts": [3, 10, 40, 30, 20, 9, 5, 2, 1, 1]},
        },
        "token_lengths": {
            "tokenizer": "smollm2-135m-instruct",
            "max_length": 512,
            "over_max_length": 4,
            "percentiles": {"p50": 60.5, "p90": 150, "p99": 400, "max": 900},
            "histogram": {"edges": edges, "counts": [30, 40, 20, 5, 3, 1, 0, 0, 1, 0]},
        },
        "labels": {"field": "label", "counts": {"肯定": 700, "否定": 490}, "imbalance_ratio": 1.43},
        "languages": {"ja": 800, "en": 380, "other": 10},
        "duplicates": {
            "exact_rows": 12,
            "near_rows": 30,
            "threshold": 0.8,
            "clusters": [
                {"kind": "exact", "size": 3, "lines": [4, 90, 311], "examples": [EVIL, EVIL]},
                {
                    "kind": "near",
                    "size": 2,
                    "lines": [5, 6],
                    "examples": ["返品はできますか？", "返品はできますか"],
                    "similarity": 0.86,
                },
            ],
        },
        "pii": {
            "rows": 25,
            "by_type": {"email": 10, "phone": 12, "マイナンバー": 1},
            "examples": [{"line": 7, "type": "email", "excerpt": "連絡先は <EMAIL> です"}],
        },
        "filters": {
            "steps": [
                {
                    "step": "normalize",
                    "changed": 40,
                    "removed": 0,
                    "reasons": {"nfkc": 30, "whitespace": 12},
                    "examples": [{"line": 3, "reason": "nfkc", "before": "ＡＢＣ", "after": "ABC"}],
                },
                {
                    "step": "filter",
                    "changed": 0,
                    "removed": 9,
                    "reasons": {"too_short": 5, "language": 4},
                    "examples": [{"line": 8, "reason": "too_short", "text": "ok"}] * 15,
                },
            ]
        },
    }


class TagCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"section {anchor} missing"
    return match.group(1)


@pytest.fixture(scope="module")
def page() -> str:
    return render_data_report(full_report())


def test_full_report_has_a_plot_per_plot_section(page):
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in page
    for anchor in PLOT_SECTIONS:
        assert section(page, anchor).count('<img src="data:image/png;base64,') == 1
    for anchor in ("errors", "duplicates", "filters"):
        assert "<img" not in section(page, anchor)


def test_page_is_self_contained_and_escaped(page):
    collector = TagCollector()
    collector.feed(page)
    assert "script" not in collector.tags
    assert all(link.startswith(("data:image/png;base64,", "#")) for link in collector.links)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section(page, "duplicates")
    assert "連絡先は &lt;EMAIL&gt; です" in section(page, "pii")


def test_japanese_text_and_numbers_appear(page):
    labels = section(page, "labels")
    assert "肯定" in labels and "否定" in labels and "58.8%" in labels and "1.43" in labels
    assert "ＡＢＣ" in section(page, "filters") and "マイナンバー" in section(page, "pii")
    summary = page.split("<nav>")[0]
    for text in ("data/train.jsonl", "1,190", "messages", ">10<", "12 exact, 30 near", ">25<"):
        assert text in summary


def test_long_lists_and_texts_are_cut():
    report = full_report()
    report["duplicates"]["clusters"] = [
        {"kind": "exact", "size": 40, "lines": list(range(1, 41)), "examples": ["あ" * 500]}
    ] * 25
    page = render_data_report(report)
    duplicates = section(page, "duplicates")
    assert duplicates.count("<tr><td>exact</td>") == 20
    assert "Showing 20 of 25 clusters." in duplicates
    assert "あ" * 199 + "…" in duplicates and "あ" * 200 not in duplicates
    assert "… (+30)" in duplicates
    filters = section(page, "filters")
    assert filters.count("too_short</td><td>ok</td>") == 10
    assert "Showing 10 of 15 examples." in filters


def test_minimal_report_renders_without_plots():
    page = render_data_report({"file": "x.jsonl", "rows": 0})
    assert "x.jsonl" in page and "<section" not in page and "<img" not in page


def test_char_histogram_is_used_without_tokens():
    report = {"file": "x.jsonl", "rows": 5, "char_lengths": full_report()["char_lengths"]}
    lengths = section(render_data_report(report), "lengths")
    assert lengths.count("<img") == 1 and "Characters" in lengths and "Tokens" not in lengths


def test_rendering_emits_no_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render_data_report(full_report())
    # Only matter if they would reach a user; deprecations from dependencies are not ours.
    shown = [w for w in caught if not issubclass(w.category, DeprecationWarning | FutureWarning)]
    assert shown == [], [str(w.message) for w in shown]


def test_cjk_font_is_picked_by_preference():
    assert pick_cjk_font(["DejaVu Sans", "TakaoGothic", "IPAexGothic"]) == "IPAexGothic"
    assert pick_cjk_font(["DejaVu Sans", "Noto Sans CJK JP"]) == "Noto Sans CJK JP"
    assert pick_cjk_font(["DejaVu Sans"]) is None
