"""report.html of a run (`migaki.evaluate.report`): sections from the files present, the
best and rising validation steps, escaping, no link outside the page, and a screenshot in
headless Chromium that is not blank."""

import json
import math
import re
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from migaki.data import report_html
from migaki.evaluate import plots
from migaki.evaluate.report import (
    ReportSources,
    best_and_rise,
    render_page,
    render_report,
    write_report,
)

EVIL = "<script>alert('x')</script>"
LONG = "保証期間は" + "あ" * 400
VAL_LOSSES = [(0, 3.0), (10, 2.0), (20, 1.5), (30, 1.2), (40, 1.4), (50, 1.6), (60, 1.5)]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.parametrize(
    ("val", "best", "rise"),
    [
        (VAL_LOSSES, 30, 40),
        ([(10, 2.0), (20, 1.5), (30, 1.7), (40, 1.4), (50, 1.6)], 40, 50),  # dips again
        ([(10, 1.0), (20, 1.2), (30, 1.0), (40, 1.1)], 10, 40),  # back to the best: after it
        ([(10, 2.0), (20, 1.0)], 20, None),  # still falling
        ([(0, 1.0), (10, 2.0), (20, 3.0)], 10, 20),  # step 0, untrained, is not a candidate
        ([(10, 1.0), (20, math.nan)], 10, 20),  # a diverged loss is above the best
        ([(0, 1.0)], None, None),
        ([], None, None),
    ],
)
def test_best_and_rise_steps(val, best, rise):
    marks = best_and_rise(val)
    assert (marks.best_step, marks.rise_step) == (best, rise)
    if best is not None:
        assert marks.best_loss == dict(val)[best]


def metrics_lines() -> list[dict]:
    lines = [
        {"step": s, "epoch": s / 60, "split": "train", "loss": 3.2 - s / 30, "lr": 1e-3}
        for s in range(1, 61)
    ]
    for step, loss in VAL_LOSSES:
        lines.append(
            {
                "step": step,
                "split": "val",
                "loss": loss,
                "perplexity": math.exp(loss),
                "token_accuracy": 1 - loss / 4,
                "tokens": 700,
            }
        )
    lines.append({"step": 60, "event": "early_stop", "best_step": 30})
    return sorted(lines, key=lambda line: line["step"])


def row_record(index: int, answer: str) -> dict:
    return {
        "index": index,
        "prompt": "返品はできますか？",
        "reference": "未開封なら30日以内に返品できます。",
        "answer": answer,
        "language": "ja",
        "kind": "open",
        "char_f1": 0.1 * index,
        "loss": 2.5 - index / 10,
        "confidence": 0.9,
    }


def eval_result() -> dict:
    return {
        "target": "runs/faq",
        "data": "test split",
        "rows": 3,
        "systems": {
            "tuned": {"loss": 1.2, "char_f1": 0.61, "fact_accuracy": 0.5},
            "base": {"loss": 3.1, "char_f1": 0.12, "fact_accuracy": 0.0},
        },
        "samples": [
            {
                "prompt": "返品はできますか？",
                "reference": "できます。",
                "tuned": EVIL,
                "base": LONG,
            },
            {"prompt": "Hours?", "reference": "9 to 5.", "tuned": "9 to 5.", "base": "?"},
        ],
        "analysis": {
            "metric": "char_f1",
            "csv": "errors.csv",
            "summary": {"rows": 3, "errors": 2, "error_rate": 0.67, "error_rule": "char_f1 < 0.5"},
            "worst_by_metric": [row_record(0, EVIL), row_record(1, LONG)],
            "worst_by_loss": [row_record(0, "え")],
            "worst_by_confidence": [row_record(2, "はい")],
            "by_label": [{"label": "返品", "rows": 2, "errors": 1, "error_rate": 0.5}],
            "by_length": [{"length": "0-50", "rows": 3, "errors": 1, "error_rate": 0.33}],
            "by_language": [{"language": "ja", "rows": 2, "errors": 1, "char_f1": 0.4}],
            "confused_pairs": [{"expected": "返品", "predicted": "交換", "count": 2}],
        },
        "slices": {
            "language": {
                "values": [
                    {"value": "ja", "rows": 2, "char_f1": 0.4},
                    {"value": "en", "rows": 1, "char_f1": 0.9},
                ],
                "metric": "char_f1",
                "gap": 0.5,
                "best": "en",
                "worst": "ja",
                "noise": 0.1,
                "flagged": True,
                "gaps": {"char_f1": {"gap": 0.5, "flagged": True}, "loss": {"gap": 0.2}},
                "too_few_rows": ["en"],
                "rule": "flagged when the gap is 0.1 or more and above the noise",
                "note": "言語で差が大きい",
            },
            "category": {
                "values": [
                    {"value": "返品", "rows": 2, "char_f1": 0.6},
                    {"value": "配送", "rows": 1, "char_f1": 0.55},
                ],
                "metric": "char_f1",
                "gap": 0.05,
                "flagged": False,
            },
        },
        "counterfactual": {
            "rows": 3,
            "changed": 1,
            "share_changed": 0.33,
            "examples": [
                {
                    "line": 2,
                    "input": "田中です",
                    "swapped_input": "佐藤です",
                    "answer": "はい",
                    "swapped_answer": EVIL,
                }
            ],
        },
        "forgetting": {
            "source": "wikitext",
            "base_loss": 2.0,
            "tuned_loss": 2.6,
            "increase": 0.3,
            "threshold": 0.2,
            "flagged": True,
        },
        "judge": {
            "model": "judge-model",
            "rubric": "正確さ",
            "scale": [1, 5],
            "rows": 3,
            "mean_score": 3.7,
            "parsed": 3,
            "unparsable": 0,
        },
        "calibration": {"ece": 0.042},  # a key the report does not know
    }


def compare_result() -> dict:
    systems = {
        "base": ({"char_f1": 0.12, "fact_accuracy": 0.0}, 0.8, 40, "ゼロショットの基盤モデル"),
        "few_shot": ({"char_f1": 0.3, "fact_accuracy": 0.2}, 1.1, 420, "k=4 examples"),
        "tuned": ({"char_f1": 0.61, "fact_accuracy": 0.5}, 0.7, 40, "the fine-tuned run"),
    }
    return {
        "target": "runs/faq",
        "data": "test split",
        "rows": 3,
        "k": 4,
        "primary": "char_f1",
        "systems": {
            name: {"metrics": m, "latency_s": t, "prompt_tokens": n, "description": d}
            for name, (m, t, n, d) in systems.items()
        },
        "training": {"minutes": 6.2, "steps": 60},
        "recommendation": "Use the tuned run: char_f1 0.61 against 0.30 for few-shot <b>.",
        "samples": [{"prompt": "返品は？", "reference": "できます", "base": "?", "tuned": EVIL}],
    }


def prepare_report() -> dict:
    return {
        "rows": {"train": 294, "val": 37, "test": 37},
        "steps": [
            {
                "step": "dedup",
                "rows_in": 400,
                "rows_out": 380,
                "changed": 0,
                "removed": 20,
                "reasons": {"exact": 15, "near": 5},
                "examples": [{"reason": "exact", "text": EVIL}],
            },
            {"step": "leakage", "rows_in": 380, "removed": 12, "reasons": {}, "threshold": 0.8},
        ],
        "hashes": {"data/faq.jsonl": "fb6f4d43"},
    }


def write_run(run: Path, metrics=True, eval_json=None, compare=None, prepare=None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    if metrics:
        text = "".join(json.dumps(line) + "\n" for line in metrics_lines())
        (run / "metrics.jsonl").write_text(text, encoding="utf-8")
    for name, value in [("eval.json", eval_json), ("compare.json", compare)]:
        if value is not None:
            (run / name).write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    if prepare is not None:
        (run / "data").mkdir(exist_ok=True)
        (run / "data" / "prepare_report.json").write_text(json.dumps(prepare), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "faq"
    write_run(run, True, eval_result(), compare_result(), prepare_report())
    write_report(run)
    return run


@pytest.fixture(scope="module")
def page(full_run) -> str:
    return (full_run / "report.html").read_text(encoding="utf-8")


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


def test_every_section_is_present(page):
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    for anchor in ("training", "metrics", "comparison", "errors", "slices", "counterfactual"):
        section(page, anchor)
    for anchor in ("forgetting", "judge", "samples", "data", "other"):
        section(page, anchor)
    top = page.split("<nav>")[0]
    assert 'class="recommendation"' in top and "few-shot &lt;b&gt;." in top


def test_training_section_marks_best_and_rise(page):
    training = section(page, "training")
    assert training.count('<img src="data:image/png;base64,') == 2  # loss, other figures
    assert '<th>Best validation step</th><td class="num">30</td>' in training
    assert 'began to rise at step</th><td class="num">40</td>' in training
    assert "stays above it at every later validation" in training
    assert "early_stop" in training


def test_page_is_self_contained_and_escaped(page):
    collector = TagCollector()
    collector.feed(page)
    assert "script" not in collector.tags
    assert all(link.startswith(("data:image/png;base64,", "#")) for link in collector.links)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    for anchor in ("comparison", "errors", "counterfactual", "samples", "data"):
        assert escaped in section(page, anchor), anchor


def test_tables_hold_the_figures(page):
    comparison = section(page, "comparison")
    assert '<tr class="primary"><th>char_f1</th>' in comparison
    assert comparison.index("<th>base</th>") < comparison.index("<th>tuned</th>")
    assert "ゼロショットの基盤モデル" in comparison and "latency (s per row)" in comparison
    assert "0.6100" in section(page, "metrics") and "3.1000" in section(page, "metrics")
    errors = section(page, "errors")
    assert "Worst rows by char_f1" in errors and "<code>errors.csv</code>" in errors
    assert errors.index("<h3>Summary</h3>") < errors.index("<h3>Worst rows by char_f1</h3>")
    assert "交換" in errors and "error_rate" in errors
    slices = section(page, "slices")
    assert slices.count("<img") == 2 and slices.count('class="flag"') == 1
    assert (
        "言語で差が大きい" in slices and "the best value (en) and the worst (ja): 0.5000" in slices
    )
    assert "above the noise" in slices and "<h4>gaps</h4>" in slices
    assert 'class="flag"' in section(page, "forgetting")
    assert "正確さ" in section(page, "judge") and "0.0420" in section(page, "other")
    data = section(page, "data")
    assert "<td>dedup</td>" in data and "exact: 15, near: 5" in data
    assert '<td class="num">368</td>' in data  # rows_out computed from rows_in - removed


def test_long_texts_are_cut_with_the_whole_text_kept(page):
    samples = section(page, "samples")
    assert "<details><summary>保証期間は" in samples
    assert ("あ" * 154 + "…</summary>") in samples
    assert ("あ" * 400 + "</details>") in samples


def test_run_with_only_metrics(tmp_path):
    page = render_report(write_run(tmp_path / "run"))
    section(page, "training")
    assert "<section" in page and page.count("<section") == 1
    assert 'class="recommendation"' not in page


def test_run_with_only_eval_json(tmp_path):
    page = render_report(write_run(tmp_path / "run", metrics=False, eval_json=eval_result()))
    assert 'id="training"' not in page and 'id="comparison"' not in page
    assert "tuned" in section(page, "metrics")


def test_classification_eval(tmp_path):
    result = {
        "task": "classification",
        "target": "runs/cls",
        "rows": 5,
        "systems": {
            "tuned": {"accuracy": 0.8, "f1_macro": 0.78},
            "majority (肯定)": {"accuracy": 0.6},
        },
        "per_label": {"肯定": {"precision": 0.75, "recall": 1.0, "f1": 0.86, "support": 3}},
        "confusion": {"labels": ["肯定", "否定"], "matrix": [[3, 0], [1, 1]]},
        "mistakes": [{"line": 4, "text": EVIL, "label": "否定", "predicted": "肯定"}],
    }
    page = render_report(write_run(tmp_path / "run", metrics=False, eval_json=result))
    metrics = section(page, "metrics")
    assert "true \\ predicted" in metrics and "<th>否定</th>" in metrics and "diag" in metrics
    assert "&lt;script&gt;" in section(page, "errors")


def test_odd_shapes_and_broken_files_do_not_raise(tmp_path):
    odd = {
        "systems": {"tuned": {"f1": None}, "broken": 3},
        "analysis": {"by_label": {"a": 1}, "worst_by_metric": "none", "new": [[1, 2]]},
        "slices": {"x": {"values": "?"}, "y": 5},
        "confusion": {"labels": ["a"], "matrix": [[1, 2], [3]]},
        "judge": {"scale": {"min": 1, "max": 5}},
    }
    run = write_run(tmp_path / "run", eval_json=odd, prepare={"rows": 3, "steps": "?"})
    (run / "compare.json").write_text("{not json", encoding="utf-8")
    with (run / "metrics.jsonl").open("a") as f:
        f.write("garbage\n")
    page = render_report(run)
    assert "compare.json could not be read" in page
    assert "metrics.jsonl: 1 lines are not step records" in page
    assert 'id="slices"' in page and 'id="judge"' in page


KEYS = ["systems", "samples", "analysis", "slices", "counterfactual", "forgetting", "judge"]
KEYS += ["per_label", "confusion", "mistakes", "metric", "values", "worst_by_metric", "primary"]
KEYS += ["metrics", "recommendation", "training", "steps", "rows", "examples", "labels"]
KEYS += ["matrix", "value", "gap", "flagged", "by_label", "step", "rows_in", "removed", "csv"]


NAMES = st.sampled_from(KEYS) | st.text(max_size=5)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    eval_json=st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6),
    compare=st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6),
    prepare=st.dictionaries(st.sampled_from(KEYS), JSON, max_size=4),
)
def test_any_json_shape_renders(eval_json, compare, prepare):
    """Files of another shape than expected lose sections, never the page."""
    page = render_page(ReportSources(eval=eval_json, compare=compare, prepare=prepare))
    assert page.endswith("</html>\n") and "<script" not in page


def test_resumed_steps_keep_the_last_record(tmp_path):
    run = write_run(tmp_path / "run")
    resumed = {"step": 40, "split": "val", "loss": 1.0}  # logged again after a resume
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(resumed) + "\n")
    assert '<th>Best validation step</th><td class="num">40</td>' in render_report(run)


def cjk_font_files() -> list[str]:
    return [
        path
        for path in font_manager.findSystemFonts()
        if any(hint in Path(path).name.lower() for hint in report_html.CJK_FILE_HINTS)
    ]


@pytest.mark.skipif(not cjk_font_files(), reason="no CJK font installed (Debian fonts-noto-cjk)")
def test_plots_draw_japanese_with_a_cjk_font():
    assert report_html.cjk_font() is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = plots.bars_png([("返品", 0.5), ("配送", 0.7)], "char_f1")
        with plots.matplotlib.rc_context(report_html.font_rc()):
            figure = Figure()
            FigureCanvasAgg(figure)
            figure.text(0.1, 0.5, "返品・交換の保証")
            figure.savefig(Path("/dev/null"), format="png")
    assert png is not None
    assert not [w for w in caught if "missing from" in str(w.message)]


def screenshot(html_file: Path, png: Path, height: int) -> None:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # tests run as root in containers, where the sandbox cannot start
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={png.parent / 'chromium-profile'}",
        f"--window-size=1280,{height}",
        f"--screenshot={png}",
        html_file.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert png.is_file(), (
        f"chromium wrote no screenshot (rc {done.returncode}): {done.stderr[-2000:]}"
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: chromium)")
def test_report_renders_in_chromium(full_run):
    png = full_run / "screenshot.png"
    screenshot(full_run / "report.html", png, 6000)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert pixels.shape == (6000, 1280)
    assert pixels.std() > 20  # a blank or single-colour page has none
    assert (pixels < 128).mean() > 0.01  # text and plots, not a few stray marks
