"""Passages from documents, BM25 / embedding / hybrid retrieval, and few-shot example choice."""

import json
import logging
from pathlib import Path

import pytest

from migaki.errors import UserError
from migaki.evaluate.retrieval import (
    Passage,
    Retriever,
    chunk_text,
    load_documents,
    nearest_examples,
    reciprocal_rank_fusion,
)
from migaki.models.embed import embed
from migaki.testing import build_tiny_encoder

FAQ = [
    "返品は商品到着後30日以内であれば受け付けます。",
    "配送料は全国一律500円です。",
    "営業時間は平日の午前9時から午後6時までです。",
    "The kettle comes with a two-year warranty.",
    "パスワードを忘れた場合はログイン画面から再設定してください。",
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder") / "model")


def passages(texts: list[str]) -> list[Passage]:
    return [Passage(text, f"faq:{i}") for i, text in enumerate(texts)]


# --- chunking -------------------------------------------------------------------------------


def test_short_paragraphs_are_packed_whole_up_to_the_limit():
    paragraphs = [f"Paragraph {i} " + "x" * 30 for i in range(6)]  # 43 characters each
    chunks = chunk_text("\n\n".join(paragraphs) + "\n", 100)
    # two paragraphs and their blank line are 88 characters; a third would make 133
    assert chunks == ["\n\n".join(paragraphs[i : i + 2]) for i in (0, 2, 4)]
    assert all(len(chunk) <= 100 for chunk in chunks)


def test_a_long_paragraph_is_cut_at_sentence_ends_then_hard():
    sentences = ["一文目はここで終わります。", "二文目もここで終わります。", "三文目です。"]
    chunks = chunk_text("".join(sentences), 30)
    assert chunks == [sentences[0] + sentences[1], sentences[2]]
    english = "The first sentence is here. The second one, with 3.5 litres, is here too."
    assert chunk_text(english, 40) == [
        "The first sentence is here.",
        "The second one, with 3.5 litres, is here",
        "too.",
    ]
    assert chunk_text("あ" * 125, 50) == ["あ" * 50, "あ" * 50, "あ" * 25]


def test_a_markdown_heading_stays_with_its_section():
    text = "# Returns\n\n" + "a" * 40 + "\n\n## Shipping\n\n" + "b" * 40 + "\n\n# End\n"
    chunks = chunk_text(text, 70)
    assert chunks == ["# Returns\n\n" + "a" * 40, "## Shipping\n\n" + "b" * 40 + "\n\n# End"]


# --- documents ------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")
    return path


def test_folder_walked_in_order_with_sources_and_the_rest_counted(tmp_path, caplog):
    docs = tmp_path / "docs"
    # "Second part. " * 7 is 90 characters: too many to share a chunk with the title
    write(docs / "b.md", "# Title\n\nFirst part.\n\n" + "Second part. " * 7)
    write(docs / "a.txt", "Only one paragraph.")
    rows = [{"content": "返品は30日以内です。"}, {}, {"text": "配送料は500円です。"}]
    lines = [json.dumps(rows[0], ensure_ascii=False), "", json.dumps(rows[2], ensure_ascii=False)]
    write(docs / "sub" / "c.jsonl", "\n".join(lines) + "\n")
    write(docs / "manual.pdf", "%PDF-1.4")
    with caplog.at_level(logging.INFO, logger="migaki.evaluate.retrieval"):
        found = load_documents([docs], chunk_chars=100)
    assert [p.source for p in found] == [
        f"{docs}/a.txt:chunk-1",
        f"{docs}/b.md:chunk-1",
        f"{docs}/b.md:chunk-2",
        f"{docs}/sub/c.jsonl:line-1",
        f"{docs}/sub/c.jsonl:line-3",
    ]
    assert found[1].text.startswith("# Title\n\nFirst part.")
    assert found[3].text == "返品は30日以内です。"
    assert all(len(p.text) <= 100 for p in found)
    assert f"{docs}: 3 files read, 1 skipped (not .txt/.md/.jsonl): manual.pdf" in caplog.text
    assert "1 from 'text', 1 from 'content'" in caplog.text


def test_a_long_jsonl_text_is_cut_into_numbered_pieces(tmp_path):
    path = write(tmp_path / "p.jsonl", json.dumps({"passage": "あ" * 120}) + "\n")
    found = load_documents([path], chunk_chars=50)
    assert [(p.source, len(p.text)) for p in found] == [
        (f"{path}:line-1.1", 50),
        (f"{path}:line-1.2", 50),
        (f"{path}:line-1.3", 20),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "missing.txt: compare.documents path not found"),
        ("manual.pdf", b"%PDF", "manual.pdf: compare.documents reads .txt, .md and .jsonl"),
        ("latin1.txt", "café".encode("latin-1"), "latin1.txt: not UTF-8 text (byte 3)"),
        ("blank.md", b"\n\n  \n", "blank.md: compare.documents path holds no text"),
        ("bad.jsonl", b'{"text": "ok"}\n{"title": "x"}\n', "bad.jsonl:2: a documents line needs"),
        ("broken.jsonl", b'{"text": \n', "broken.jsonl:1: invalid JSON"),
    ],
)
def test_bad_documents_are_refused_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as error:
        load_documents([path], chunk_chars=100)
    assert str(error.value).startswith(f"{tmp_path}/{message}")


def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: compare\.documents path holds no text"):
        load_documents([tmp_path / "empty"], chunk_chars=100)


# --- retrieval ------------------------------------------------------------------------------


def test_bm25_finds_the_japanese_passage_sharing_morphemes():
    # no encoder is loaded for bm25 alone: a missing one would raise
    retriever = Retriever(passages(FAQ), method="bm25", encoder="no-such-encoder")
    queries = ["返品はいつまで受け付けていますか？", "送料はいくら？", "warranty"]
    found = retriever.search(queries, k=2)
    assert found[0][0].text == FAQ[0]  # 返品, 受け付け
    assert found[2] == [Passage(FAQ[3], "faq:3")]  # only passages sharing a word are ranked
    # 送料 is one morpheme, 配送料 another word: BM25 finds no shared content word there,
    # only the particle は, which every Japanese passage has
    assert all(p.text != FAQ[3] for p in found[1])


def test_embedding_retrieval_ranks_the_same_text_first(encoder):
    retriever = Retriever(passages(FAQ), method="embedding", encoder=encoder)
    found = retriever.search([FAQ[2], FAQ[4]], k=3)
    assert [row[0].text for row in found] == [FAQ[2], FAQ[4]]
    assert all(len(row) == 3 for row in found)


def test_hybrid_fuses_both_rankings_deterministically_and_in_batches(encoder):
    queries = ["返品はいつまで受け付けていますか？", "営業時間を教えて", "kettle warranty"]
    hybrid = Retriever(passages(FAQ), method="hybrid", encoder=encoder)
    lexical = Retriever(passages(FAQ), method="bm25").ranked_indices(queries, 5)
    semantic = Retriever(passages(FAQ), method="embedding", encoder=encoder).ranked_indices(
        queries, 5
    )
    expected = [reciprocal_rank_fusion([a, b])[:3] for a, b in zip(lexical, semantic, strict=True)]
    assert hybrid.ranked_indices(queries, 3) == expected
    assert hybrid.ranked_indices(queries, 3) == expected  # the same again
    one_by_one = [hybrid.search([q], 3)[0] for q in queries]
    assert hybrid.search(queries, 3) == one_by_one


def test_reciprocal_rank_fusion_rewards_agreement_and_breaks_ties_by_index():
    # 2 is second in both lists: 2/62 beats 1/61 + 1/64 for 5 (top of one, fourth of other)
    assert reciprocal_rank_fusion([[5, 2, 7, 8], [1, 2, 9, 5]]) == [2, 5, 1, 7, 9, 8]
    assert reciprocal_rank_fusion([[3], [1]]) == [1, 3]  # equal scores: smaller index first


def test_retriever_refuses_no_passages_and_unknown_methods():
    with pytest.raises(UserError, match="no passages to retrieve from"):
        Retriever([], method="bm25")
    with pytest.raises(UserError, match=r"compare\.retrieval: unknown method 'dense'"):
        Retriever(passages(FAQ), method="dense")


def test_bm25_over_passages_without_words_returns_nothing():
    assert Retriever(passages(["。。。", "!!"]), method="bm25").search(["返品"], 2) == [[]]


# --- few-shot examples ----------------------------------------------------------------------


def test_nearest_examples_never_picks_the_question_itself(encoder):
    pool = ["配送料は全国一律500円です。", "返品は30日以内です。", "営業時間は9時からです。"]
    question = "\u3000返品は30日以内です。\n"  # the pool's second text, as the same text
    assert nearest_examples([pool[1]], pool, 2, encoder, exclude_same=False)[0][0] == 1
    chosen = nearest_examples([question, "ＡＢＣ"], [*pool, "ABC"], 3, encoder)
    assert 1 not in chosen[0] and len(chosen[0]) == 3
    assert 3 not in chosen[1]  # ＡＢＣ folds (NFKC) to ABC
    assert nearest_examples(["x"], [], 2, encoder) == [[]]


def test_nearest_examples_are_the_most_similar_in_order(encoder):
    pool = [*FAQ, "全く関係のない文章。"]
    chosen = nearest_examples(["配送料は全国一律500円です！"], pool, 6, encoder)[0]
    assert sorted(chosen) == list(range(6))
    vectors = embed(["配送料は全国一律500円です！", *pool], encoder)
    similarity = vectors[1:] @ vectors[0]
    assert [round(float(similarity[i]), 5) for i in chosen] == sorted(
        (round(float(s), 5) for s in similarity), reverse=True
    )


@pytest.mark.slow
def test_bundled_minilm_finds_paraphrases_alone_and_in_the_hybrid():
    texts = [
        "Returns are accepted within 30 days of delivery.",
        "Shipping costs 500 yen anywhere in the country.",
        "Our support desk is open on weekdays from 9 to 6.",
        *FAQ[:2],
    ]
    semantic = Retriever(passages(texts), method="embedding")
    # no word in common with the shipping passage; BM25 alone would pick "delivery" (returns)
    assert semantic.ranked_indices(["How much is delivery?"], 1) == [[1]]
    hybrid = Retriever(passages(texts))
    queries = ["What does shipping cost?", "When can I call?", "送料はいくらですか？"]
    queries.append("返品できますか？")
    assert hybrid.ranked_indices(queries, 1) == [[1], [2], [4], [3]]
