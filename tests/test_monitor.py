"""`migaki monitor`: drift of served traffic against a run's training data, on a run built by
hand (tiny tokenizer, tiny random BERT as the encoder) and logs written by serve's RequestLog."""

import itertools
import json
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_jsonl, write_recipe

from migaki.models.embed import embed
from migaki.monitor.drift import (
    THRESHOLDS,
    ks_distance,
    mmd_test,
    monitor_run,
    permutation_p,
    total_variation,
)
from migaki.monitor.report import render_monitor_report
from migaki.serve.log import RequestLog
from migaki.testing import build_tiny_encoder

PRODUCTS = ["kettle", "toaster", "blender", "rice cooker", "fan", "heater", "lamp", "mixer"]
TEMPLATES = [
    "How much is the {}?",
    "Is the {} in stock?",
    "What colours does the {} come in?",
    "How long is the warranty on the {}?",
    "Can I return the {}?",
    "Does the {} ship today?",
]
SHIFTED = (
    "お世話になっております。先日購入した{}について、返金の手続きをお願いしたいのですが、"
    "担当の方からご連絡いただけますでしょうか。メールは taro{}@example.com、電話は "
    "090-1234-{:04d} です。よろしくお願いいたします。"
)


def questions() -> list[str]:
    """96 short English shop questions in a fixed random order: one distribution to split."""
    pool = [
        template.format(product) + ending
        for template, product, ending in itertools.product(TEMPLATES, PRODUCTS, ("", " Thanks."))
    ]
    random.Random(0).shuffle(pool)
    return pool


def shifted(count: int) -> list[str]:
    """Long Japanese requests, each with an e-mail address and a phone number."""
    return [SHIFTED.format(PRODUCTS[i % 8], i, 1000 + i) for i in range(count)]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder") / "model")


@pytest.fixture
def run(tmp_path, tiny_model) -> Path:
    """A run directory as training leaves it, as far as monitor reads it: recipe.yaml and
    data/train.jsonl (60 chat rows)."""
    run = tmp_path / "runs" / "faq"
    (run / "data").mkdir(parents=True)
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Yes."}]}
        for q in questions()[:60]
    ]
    train = write_jsonl(run / "data" / "train.jsonl", rows)
    write_recipe(run / "recipe.yaml", tiny_model, train)
    return run


def write_log(log_dir: Path, texts: list[str], run: Path | None, model: str = "faq") -> Path:
    log = RequestLog(log_dir)
    for i, text in enumerate(texts):
        log.append(
            request_id=f"chatcmpl-{model}-{i}",
            model=model,
            run=None if run is None else str(run.resolve()),
            base="tiny",
            endpoint="chat.completions",
            response="Yes.",
            finish_reason="stop",
            prompt_tokens=10,
            completion_tokens=2,
            latency_s=0.1,
            messages=[{"role": "user", "content": text}],
        )
    return log_dir


def monitor(capsys, run: Path, log_dir: Path, encoder: Path, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, "monitor", run, "--log", log_dir, "--encoder", encoder, *extra)


# --- statistics ---


def test_statistics_on_known_samples():
    a, b = np.arange(100.0), np.arange(100.0) + 1000
    assert ks_distance(a, a) == 0.0
    assert ks_distance(a, b) == 1.0
    assert ks_distance(np.array([1.0, 2, 3, 4]), np.array([3.0, 4, 5, 6])) == 0.5
    assert total_variation(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])) == 0.5
    assert permutation_p(ks_distance, a, b, seed=0) == pytest.approx(1 / 501)
    same = permutation_p(ks_distance, a[::2], a[1::2], seed=0)
    assert same > 0.5
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 8)), rng.normal(size=(80, 8))
    _, p_same = mmd_test(x, y, seed=0)
    mmd2, p_shifted = mmd_test(x, y + 1.0, seed=0)
    assert p_same > 0.05
    assert p_shifted == pytest.approx(1 / 501)
    assert mmd2 > 0.1


# --- the encoder ---


def test_embed_unit_vectors_independent_of_batching(encoder):
    texts = ["How much is the kettle?", "ケトルの値段は？", "a", "How much is the kettle?"]
    one_by_one = embed(texts, encoder, batch_size=1)
    together = embed(texts, encoder, batch_size=64)
    assert together.shape == (4, 32)
    assert together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # mean pooling over the attention mask: padding in a batch changes nothing
    np.testing.assert_allclose(one_by_one, together, atol=1e-5)
    np.testing.assert_array_equal(together[0], together[3])
    assert embed([], encoder).shape == (0, 32)


def test_embed_loads_the_model_once(encoder):
    from migaki.models.embed import _load

    embed(["one"], encoder)
    before = _load.cache_info()
    embed(["two"], encoder)
    assert _load.cache_info().hits == before.hits + 1
    assert _load.cache_info().misses == before.misses


# --- figures ---


def test_same_distribution_is_not_flagged(capsys, run, tmp_path, encoder):
    log_dir = write_log(tmp_path / "logs", questions()[60:90], run)
    code, out, err = monitor(capsys, run, log_dir, encoder, "--json", tmp_path / "m.json")
    assert code == 0, out + err
    report = json.loads((tmp_path / "m.json").read_text())
    figures = report["figures"]
    assert report["flagged"] == []
    assert (report["training_rows"], report["requests"]) == (60, 30)
    assert figures["lengths"]["value"] < 0.2
    assert figures["lengths"]["p_value"] > 0.05
    assert figures["languages"]["train"]["en"] == figures["languages"]["traffic"]["en"] == 1.0
    assert figures["languages"]["value"] == 0.0
    assert figures["rare_tokens"]["traffic"]["unknown"] == 0.0
    assert figures["personal_data"]["train"]["rate"] == figures["personal_data"]["traffic"]["rate"]
    assert figures["embeddings"]["p_value"] > THRESHOLDS["p_value"]
    assert "flagged" not in out
    assert (log_dir / "monitor-faq.html").is_file()


def test_shifted_traffic_is_flagged_and_listed_first(capsys, run, tmp_path, encoder):
    normal, odd = questions()[60:80], shifted(20)
    log_dir = write_log(
        tmp_path / "logs", [t for pair in zip(normal, odd, strict=True) for t in pair], run
    )
    html = tmp_path / "report" / "drift.html"
    code, out, _ = monitor(capsys, run, log_dir, encoder, "-o", html, "--json", tmp_path / "m.json")
    assert code == 3
    report = json.loads((tmp_path / "m.json").read_text())
    figures = report["figures"]
    # the random tiny encoder puts every text in a narrow cone: its drift is real (p) but
    # small; test_embedding_drift_with_an_injected_encoder checks that figure's threshold
    assert report["flagged"] == ["lengths", "languages", "rare_tokens", "personal_data"]
    assert figures["embeddings"]["p_value"] < THRESHOLDS["p_value"]
    assert figures["lengths"]["value"] >= 0.5  # half the requests are longer than any row
    assert figures["lengths"]["traffic"]["p90"] > 3 * figures["lengths"]["train"]["p90"]
    assert figures["languages"]["traffic"] == {"ja": 0.5, "en": 0.5, "other": 0.0}
    assert figures["languages"]["value"] == 0.5
    assert figures["personal_data"]["traffic"]["rate"] == 0.5
    assert figures["personal_data"]["traffic"]["by_type"] == {"email": 20, "phone": 20}
    assert figures["personal_data"]["train"]["rate"] == 0.0
    assert figures["rare_tokens"]["traffic"]["unknown"] > 0.5  # Japanese: bytes never seen
    for key in report["flagged"]:
        assert figures[key]["value"] > figures[key]["threshold"]
        assert figures[key]["p_value"] < THRESHOLDS["p_value"]
    # the ten farthest requests are shifted ones (even log lines), with their log lines
    assert len(report["farthest"]) == 10
    assert all(entry["line"] % 2 == 0 for entry in report["farthest"])
    assert all("<EMAIL>" in entry["question"] for entry in report["farthest"])
    assert out.count("<< flagged") == 4
    assert f"requests.jsonl:{report['farthest'][0]['line']}" in out
    page = html.read_text("utf-8")
    assert page.count("data:image/png;base64,") == 4
    assert page.count('<td class="flag">flagged</td>') == 4
    assert "Drift flagged: lengths, languages, rare_tokens, personal_data." in page
    assert "お世話になっております" in page and "&lt;EMAIL&gt;" in page
    assert "Input length (tokens), KS distance" in page


def trigram_embedder(texts) -> np.ndarray:
    """Hashed character trigrams, L2-normalized: texts sharing words lie close, texts in
    another script far apart (a stand-in encoder whose geometry is known)."""
    vectors = np.zeros((len(texts), 512))
    for row, text in enumerate(texts):
        for start in range(len(text) - 2):
            vectors[row, zlib.crc32(text[start : start + 3].encode()) % 512] += 1
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def test_embedding_drift_with_an_injected_encoder(run, tmp_path):
    same = write_log(tmp_path / "same", questions()[60:90], run)
    report = monitor_run(run, same, embedder=trigram_embedder)
    assert report["encoder"] == "custom"
    drift = report["figures"]["embeddings"]
    assert drift["value"] < THRESHOLDS["centroid_distance"]  # 30 requests: sampling noise
    assert drift["p_value"] > 0.1
    assert not drift["flagged"]
    assert report["farthest"][0]["similarity"] > 0.5  # every request has a close training row
    mixed = [t for pair in zip(questions()[60:80], shifted(20), strict=True) for t in pair]
    report = monitor_run(run, write_log(tmp_path / "mixed", mixed, run), embedder=trigram_embedder)
    drift = report["figures"]["embeddings"]
    assert drift["value"] > 0.3  # half the traffic shares no trigram with the training rows
    assert drift["p_value"] == round(1 / 501, 4)  # no shuffle came close
    assert drift["flagged"]
    assert drift["embedded"] == {"train": 60, "traffic": 40}
    assert all(entry["line"] % 2 == 0 for entry in report["farthest"])
    assert max(entry["similarity"] for entry in report["farthest"]) < 0.2


def test_rare_tokens_flagged_against_the_training_rows_own_rate(run, tmp_path, encoder):
    # English, short, no personal data: only words the training data never had
    words = ["zebra quokka axolotl", "xylophone jukebox quiz", "wombat kiwi vexed zap"]
    log_dir = write_log(tmp_path / "logs", [f"{w} {i}?" for i in range(10) for w in words], run)
    report = monitor_run(run, log_dir, encoder=encoder)
    rare = report["figures"]["rare_tokens"]
    assert rare["train"]["rare"] < 0.01
    assert rare["traffic"]["rare"] > 0.2  # the tiny tokenizer splits new words into letters
    assert rare["flagged"]


def test_mixed_log_leaves_other_models_out_and_counts_them(capsys, run, tmp_path, encoder):
    log_dir = tmp_path / "logs"
    write_log(log_dir, questions()[60:75], run)
    write_log(log_dir, shifted(7), Path("/elsewhere/other-run"), model="other")
    write_log(log_dir, questions()[75:90], None, model="faq")  # no run: matched by its name
    report = monitor_run(run, log_dir, encoder=encoder)
    assert report["requests"] == 30
    assert report["left_out"] == {"other models": {"other": 7}, "no user text": 0}
    assert report["figures"]["personal_data"]["traffic"]["rate"] == 0.0
    code, out, _ = monitor(capsys, run, log_dir, encoder)
    assert code == 0
    assert "(7 requests of other models left out)" in out


def test_report_html_escapes_requests(run, tmp_path, encoder):
    log_dir = write_log(tmp_path / "logs", [*questions()[60:70], "<script>alert(1)</script>"], run)
    page = render_monitor_report(monitor_run(run, log_dir, encoder=encoder))
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for section in ("Input length", "Languages", "Rare tokens", "Personal data", "Embeddings"):
        assert f"<h2>{section}</h2>" in page


# --- bad input: one line, exit 2 ---


def one_error_line(capsys, *args) -> str:
    code, _, err = run_cli(capsys, "monitor", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_bad_input_exits_2_with_one_line(capsys, run, tmp_path, encoder):
    logs = write_log(tmp_path / "logs", questions()[60:65], run)
    missing = one_error_line(capsys, tmp_path / "nope", "--log", logs)
    assert missing == f"error: {tmp_path / 'nope'}: no such run directory"
    not_a_run = tmp_path / "folder"
    not_a_run.mkdir()
    assert "not a migaki run directory" in one_error_line(capsys, not_a_run, "--log", logs)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "requests.jsonl").write_text("\n")
    assert "the log is empty" in one_error_line(capsys, run, "--log", empty)
    assert "no request log here" in one_error_line(capsys, run, "--log", tmp_path)
    with open(logs / "requests.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"id": "broken"\n')
    corrupt = one_error_line(capsys, run, "--log", logs)
    assert f"{logs / 'requests.jsonl'}:6: not JSON" in corrupt
    (run / "data" / "train.jsonl").unlink()
    no_split = one_error_line(capsys, run, "--log", write_log(tmp_path / "ok", ["Hi?"], run))
    assert f"{run / 'data' / 'train.jsonl'}: the run has no training split" in no_split


def test_log_of_another_run_names_the_file_and_models(capsys, run, tmp_path):
    logs = write_log(tmp_path / "logs", questions()[:3], Path("/srv/runs/faq"), model="faq")
    write_log(logs, questions()[:2], None, model="support")
    line = one_error_line(capsys, run, "--log", logs)
    assert line.startswith(f"error: {logs / 'requests.jsonl'}: no request was served by {run}")
    assert "models in the log: faq (3), support (2)" in line


def test_monitor_help_loads_no_torch():
    import subprocess
    import sys

    code = "import sys; from migaki.cli import main\ntry: main(['monitor', '--help'])\n"
    code += "except SystemExit: pass\nassert 'torch' not in sys.modules, 'torch loaded'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "exit status 3" in result.stdout


@pytest.mark.slow
def test_bundled_minilm_ranks_a_paraphrase_above_another_topic():
    vectors = embed(
        ["How much is the kettle?", "What does the kettle cost?", "The train leaves at noon."]
    )
    assert vectors.shape == (3, 384)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.6
    assert similarity[0, 1] > similarity[0, 2] + 0.3
