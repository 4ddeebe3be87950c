import math
import random

import numpy as np
import pytest

from migaki.data import dedup
from migaki.data.dedup import (
    cross_duplicates,
    dedup_key,
    exact_clusters,
    jaccard,
    near_duplicate_clusters,
)

RETURNS = "返品は購入日から30日以内であれば可能です。レシートをお持ちください。"
RETURNS_LONG = (
    "返品は購入日から30日以内であれば可能です。"
    "レシートと商品の外箱をお持ちのうえ、お近くの店舗までお越しください。"
)
REFUND = (
    "Customers can return any unopened item within thirty days of purchase "
    "for a full refund to the original payment method."
)
# The first MinHash values of "hello world" (shingle 5, 16 permutations, seed 0): a change
# here changes every stored de-duplication result, on every machine.
PINNED_HELLO_WORLD = [518547039, 1454094298, 754148686, 331502517]


@pytest.fixture
def every_pair_a_candidate(monkeypatch):
    """LSH with one-row bands and no MinHash pre-filter: about every pair of rows sharing a
    shingle reaches the exact check, so what clusters is decided by verification alone."""
    monkeypatch.setattr(dedup, "_band_params", lambda threshold, num_perm: (num_perm, 1))
    monkeypatch.setattr(dedup, "_estimate_margin", lambda threshold, num_perm: 1.0)


def planted_rows(base_count: int, planted: int, seed: int) -> tuple[list[str], list[tuple]]:
    """`base_count` unrelated sentences of made-up words, then `planted` copies of some of
    them with one character changed; returns the rows and the (original, copy) pairs."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(3000)]
    rows = [" ".join(rng.choices(vocabulary, k=rng.randint(25, 35))) for _ in range(base_count)]
    pairs = []
    for original in rng.sample(range(base_count), planted):
        text = rows[original]
        position = rng.randrange(len(text))
        changed = "#" if text[position] != "#" else "%"
        pairs.append((original, len(rows)))
        rows.append(text[:position] + changed + text[position + 1 :])
    return rows, pairs


def reference_signature(key: str, shingle: int, num_perm: int, seed: int) -> list[int]:
    """The MinHash signature written out one shingle at a time, for checking the numpy one."""
    mask64, mask32 = 2**64 - 1, 2**32 - 1

    def mix64(value: int) -> int:
        value ^= value >> 33
        value = (value * 0xFF51AFD7ED558CCD) & mask64
        value ^= value >> 33
        value = (value * 0xC4CEB9FE1A85EC53) & mask64
        return value ^ (value >> 33)

    def splitmix64(step: int) -> int:
        state = (seed + step * 0x9E3779B97F4A7C15) & mask64
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & mask64
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & mask64
        return (state ^ (state >> 31)) >> 32

    padded = key.ljust(shingle, "\0")
    hashes = []
    for start in range(len(padded) - shingle + 1):
        value = 0
        for char in padded[start : start + shingle]:
            value = (value * 0x100000001B3 + ord(char)) & mask64
        hashes.append(mix64(value) & mask32)
    multipliers = [splitmix64(step) | 1 for step in range(1, num_perm + 1)]
    offsets = [splitmix64(step) for step in range(num_perm + 1, 2 * num_perm + 1)]
    return [
        min((a * value + b) & mask32 for value in hashes)
        for a, b in zip(multipliers, offsets, strict=True)
    ]


def test_dedup_key_casefolds_and_collapses_whitespace():
    assert dedup_key("  Hello\t\n  WORLD  ") == "hello world"
    assert dedup_key("Straße") == "strasse"
    # The ideographic space of Japanese text is whitespace too.
    assert dedup_key("返品\u3000 可能 ") == "返品 可能"
    assert dedup_key(" \n ") == ""


def test_exact_clusters_group_case_and_whitespace_variants_in_order():
    texts = ["b", "Hello  World", "a", "hello world", "B ", "c", "  hello\tworld", "", " "]
    assert exact_clusters(texts) == [[0, 4], [1, 3, 6], [7, 8]]
    assert exact_clusters(["one", "two", "three"]) == []
    assert exact_clusters([]) == []


def test_jaccard_of_character_shingles():
    assert jaccard("abcdefg", "ABCDEFG") == 1.0
    # {abcde, bcdef} against {abcde, bcdef, cdefg}
    assert jaccard("abcdef", "abcdefg") == pytest.approx(2 / 3)
    # Shorter than a shingle: the text is its one shingle.
    assert jaccard("ab", "AB") == 1.0
    assert jaccard("ab", "abc") == 0.0
    assert jaccard("", "") == 0.0
    assert jaccard("abc", "abd", shingle=1) == pytest.approx(2 / 4)


def test_english_sentence_with_a_word_changed_is_a_near_duplicate():
    edited = REFUND.replace("unopened", "unused")
    assert jaccard(REFUND, edited) >= 0.8
    texts = ["An unrelated sentence about shipping times.", REFUND, "Other text.", edited]
    assert near_duplicate_clusters(texts) == [[1, 3]]


def test_japanese_sentence_with_a_character_changed_is_a_near_duplicate():
    edited = RETURNS_LONG.replace("外箱", "外装")
    assert jaccard(RETURNS_LONG, edited) >= 0.8
    assert near_duplicate_clusters([RETURNS_LONG, "送料は無料です。", edited]) == [[0, 2]]


def test_short_japanese_sentences_need_shorter_shingles():
    # One character in 35 changes 5 of 31 five-character shingles: Jaccard 26/36 < 0.8.
    edited = RETURNS.replace("購入日", "購買日")
    assert jaccard(RETURNS, edited) == pytest.approx(26 / 36)
    assert near_duplicate_clusters([RETURNS, edited]) == []
    assert jaccard(RETURNS, edited, shingle=3) >= 0.8
    assert near_duplicate_clusters([RETURNS, edited], shingle=3) == [[0, 1]]


def test_sentences_sharing_a_prefix_are_not_near_duplicates():
    other = "返品は購入日から30日以内であれば可能です。交換は店頭でのみ承ります。"
    assert jaccard(RETURNS, other) < 0.5
    assert jaccard(RETURNS, other, shingle=3) < 0.5
    assert near_duplicate_clusters([RETURNS, other]) == []
    assert near_duplicate_clusters([RETURNS, other], shingle=3) == []


def test_exact_duplicates_cluster_and_empty_texts_do_not():
    texts = ["", "Same text here", "  ", "same  TEXT here", "x"]
    assert near_duplicate_clusters(texts) == [[1, 3]]
    assert near_duplicate_clusters([]) == []
    assert near_duplicate_clusters(["only one"]) == []


def test_candidates_below_the_threshold_are_rejected_by_verification(every_pair_a_candidate):
    base = "the quick brown fox jumps over the lazy dog while seven happy otters swim"
    texts = [
        base,
        base.replace("quick brown", "slow black"),
        base.replace("lazy dog", "sleepy cat"),
        base.replace("seven happy otters", "three sad beavers"),
    ]
    similarities = [jaccard(a, b) for i, a in enumerate(texts) for b in texts[i + 1 :]]
    assert all(0.3 < similarity < 0.8 for similarity in similarities)
    signatures = dedup._signatures([dedup_key(text) for text in texts], 5, 128, 0)
    assert len(dedup._candidate_pairs(signatures, 0.8)) == 6  # LSH proposed every pair
    assert near_duplicate_clusters(texts) == []
    assert near_duplicate_clusters(texts, threshold=0.3) == [[0, 1, 2, 3]]
    assert cross_duplicates(texts[:1], texts[1:]) == {}


def test_clusters_are_connected_components(every_pair_a_candidate):
    first = (
        "the quick brown fox jumps over the lazy dog while seven happy otters swim along the river"
    )
    second = first.replace("brown", "green")
    third = second.replace("river", "canal")
    assert jaccard(first, second) >= 0.75 and jaccard(second, third) >= 0.75
    assert jaccard(first, third) < 0.75
    texts = [first, "unrelated text here", third, second]
    assert near_duplicate_clusters(texts, threshold=0.75) == [[0, 2, 3]]


def test_a_bucket_larger_than_the_window_is_chained_into_one_cluster():
    rows = [f"{REFUND} Order {number:04d}." for number in range(5 * dedup._BUCKET_WINDOW)]
    assert min(jaccard(rows[0], row) for row in rows) >= 0.8
    signatures = dedup._signatures([dedup_key(row) for row in rows], 5, 128, 0)
    largest_bucket = max(
        np.unique(keys, return_counts=True)[1].max()
        for keys in dedup._band_keys(signatures, 0.8, 128)
    )
    assert largest_bucket > 2 * dedup._BUCKET_WINDOW
    assert near_duplicate_clusters(rows) == [list(range(len(rows)))]


def test_cross_duplicates_find_exact_and_near_leaks():
    near_reference = REFUND.replace("thirty", "30")
    closer_reference = REFUND.replace("unopened", "unused")
    references = [
        "Shipping takes three to five business days.",
        "",
        f"  {RETURNS_LONG}\n",
        near_reference,
        closer_reference,
        RETURNS_LONG,
    ]
    queries = ["Completely unrelated.", REFUND, RETURNS_LONG, "", "送料は無料です。"]
    assert jaccard(REFUND, closer_reference) > jaccard(REFUND, near_reference) >= 0.8
    assert cross_duplicates(queries, references) == {
        1: (4, pytest.approx(jaccard(REFUND, closer_reference))),
        2: (2, 1.0),  # the first exact match, not the later one at index 5
    }


def test_cross_duplicates_tie_goes_to_the_lowest_reference_index():
    thirty, thirty_one = REFUND.replace("thirty", "30"), REFUND.replace("thirty", "31")
    assert jaccard(REFUND, thirty) == jaccard(REFUND, thirty_one) >= 0.8
    assert cross_duplicates([REFUND], ["x", thirty, thirty_one])[0][0] == 1
    assert cross_duplicates([REFUND], ["x", thirty_one, thirty])[0][0] == 1


def test_same_seed_same_clusters_and_signatures_pinned():
    rows, _ = planted_rows(300, 40, seed=3)
    assert near_duplicate_clusters(rows, seed=7) == near_duplicate_clusters(rows, seed=7)
    signature = dedup._signatures(["hello world"], 5, 16, 0)[0]
    assert signature[:4].tolist() == reference_signature("hello world", 5, 16, 0)[:4]
    assert signature[:4].tolist() == PINNED_HELLO_WORLD


def test_numpy_signatures_match_the_definition(monkeypatch):
    monkeypatch.setattr(dedup, "_CHUNK_SHINGLES", 7)  # several chunks, and a text longer than one
    monkeypatch.setattr(dedup, "_BLOCK_KEYS", 4)
    keys = ["hello world", "ab", "x", RETURNS, "a" * 30, "\ud800 lone surrogate"]
    for shingle in (1, 3, 5):
        signatures = dedup._signatures(keys, shingle, 16, 42)
        for key, signature in zip(keys, signatures, strict=True):
            assert signature.tolist() == reference_signature(key, shingle, 16, 42)


def test_band_parameters_match_datasketch():
    datasketch = pytest.importorskip("datasketch")
    weights = (dedup._FALSE_POSITIVE_WEIGHT, dedup._FALSE_NEGATIVE_WEIGHT)
    for threshold in (0.5, 0.7, 0.8, 0.9):
        for num_perm in (16, 128):
            lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
            assert dedup._band_params(threshold, num_perm) == (lsh.b, lsh.r)


@pytest.mark.parametrize(
    "arguments",
    [
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"threshold": math.nan},
        {"shingle": 0},
        {"num_perm": 8},
    ],
)
def test_invalid_arguments_are_rejected(arguments):
    with pytest.raises(ValueError):
        near_duplicate_clusters(["a", "b"], **arguments)
    with pytest.raises(ValueError):
        cross_duplicates(["a"], ["b"], **arguments)


def test_jaccard_rejects_an_empty_shingle():
    with pytest.raises(ValueError):
        jaccard("a", "b", shingle=0)


def test_threshold_one_finds_only_identical_shingle_sets():
    texts = [REFUND, REFUND.upper(), REFUND.replace("unopened", "unused"), "aaaaaa", "aaaaaaa"]
    # "aaaaaa" and "aaaaaaa" differ as text but both are the one shingle "aaaaa".
    assert near_duplicate_clusters(texts, threshold=1.0) == [[0, 1], [3, 4]]


def test_planted_near_duplicates_are_all_found_among_thousands_of_rows():
    rows, planted = planted_rows(2700, 300, seed=0)
    assert min(jaccard(rows[a], rows[b]) for a, b in planted) >= 0.9
    clusters = near_duplicate_clusters(rows)
    assert sorted(map(tuple, clusters)) == sorted(planted)
    assert all(jaccard(rows[a], rows[b]) >= 0.8 for a, b in clusters)
    leaks = cross_duplicates([rows[copy] for _, copy in planted], rows[:2700])
    assert leaks == {
        index: (original, pytest.approx(jaccard(rows[original], rows[copy])))
        for index, (original, copy) in enumerate(planted)
    }
    assert np.all(np.diff([cluster[0] for cluster in clusters]) > 0)
