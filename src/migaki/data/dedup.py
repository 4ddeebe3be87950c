"""Exact and near-duplicate detection in text data sets: de-duplication and split leakage.

Near-duplicates compare sets of CHARACTER shingles, so Japanese (no spaces) and English are
treated alike. The work grows near-linearly with the rows; no two rows are compared unless
the sketch makes them a candidate:

1. texts with equal `dedup_key` collapse to one row (they are exact duplicates);
2. each row gets a MinHash signature, computed with numpy over all rows at once;
3. LSH banding turns equal signature bands into candidate pairs;
4. every candidate is verified with the exact Jaccard of the shingle sets, so a false
   positive of the sketch never joins rows below the threshold.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

# Odd 64-bit constants: the FNV prime for the rolling shingle hash, and splitmix64's increment.
_POLY_MULTIPLIER = np.uint64(0x100000001B3)
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)

# Shingles permuted per step: (num_perm, 8192) uint32 is 4 MiB at 128 permutations, which
# stays in cache; much larger chunks were three times slower in measurements.
_CHUNK_SHINGLES = 8192
_CHUNK_PAIRS = 65536  # candidate pairs whose signatures are compared at once
_BLOCK_KEYS = 16384  # texts whose shingles are hashed at once

# Candidates are verified exactly, so a false positive only costs a set intersection while a
# false negative is a duplicate missed for good: choose bands and rows favouring recall.
_FALSE_POSITIVE_WEIGHT = 0.1
_FALSE_NEGATIVE_WEIGHT = 0.9

# In an LSH bucket each row is paired with at most this many rows before it. Buckets this small
# give every pair; a huge bucket (thousands of templated rows) still chains its rows together
# without a quadratic number of candidates.
_BUCKET_WINDOW = 16

# Shingle sets kept for verification: a set of 150 shingles takes about 15 KB, so caching
# every row of a large templated data set would take gigabytes.
_SHINGLE_SET_CACHE = 16384


def dedup_key(text: str) -> str:
    """What exact duplicates compare: `text` casefolded, whitespace runs collapsed, stripped."""
    return " ".join(text.casefold().split())


def exact_clusters(texts: Sequence[str]) -> list[list[int]]:
    """Groups of two or more indices of `texts` with the same `dedup_key`.

    Each group is ascending (its first index is the row to keep); groups are ordered by their
    first index.
    """
    groups: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        groups.setdefault(dedup_key(text), []).append(index)
    return [group for group in groups.values() if len(group) > 1]


def jaccard(a: str, b: str, shingle: int = 5) -> float:
    """Exact Jaccard similarity of the character-shingle sets of `a` and `b`, in [0, 1].

    Shingles are taken on `dedup_key`; an empty text has no shingles and similarity 0 to
    everything. Raises ValueError when `shingle` < 1.
    """
    _check_shingle(shingle)
    return _set_jaccard(_shingle_set(dedup_key(a), shingle), _shingle_set(dedup_key(b), shingle))


def near_duplicate_clusters(
    texts: Sequence[str],
    threshold: float = 0.8,
    shingle: int = 5,
    num_perm: int = 128,
    seed: int = 0,
) -> list[list[int]]:
    """Groups of two or more indices of `texts` linked by shingle Jaccard >= `threshold`.

    A group is a connected component of verified pairs, so two members may be less similar to
    each other than `threshold` when a third row links them. Exact duplicates fall in the same
    group; empty texts are in none. Groups are ascending and ordered by their first index.
    `num_perm` MinHash permutations drawn from `seed` make the (deterministic) candidates; as
    with any LSH, pairs just above the threshold can be missed (with the defaults, measured:
    about 1 in 10 pairs at Jaccard 0.80-0.85, 1 in 100 at 0.85-0.90, none above 0.90).

    Raises ValueError unless 0 < threshold <= 1, shingle >= 1 and num_perm >= 16.
    """
    _check_arguments(threshold, shingle, num_perm)
    keys = [dedup_key(text) for text in texts]
    unique_keys = list(dict.fromkeys(key for key in keys if key))
    roots = _similar_components(unique_keys, threshold, shingle, num_perm, seed)
    component_of = dict(zip(unique_keys, roots, strict=True))
    groups: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        if key:
            groups.setdefault(component_of[key], []).append(index)
    return [group for group in groups.values() if len(group) > 1]


def cross_duplicates(
    queries: Sequence[str],
    references: Sequence[str],
    threshold: float = 0.8,
    shingle: int = 5,
    num_perm: int = 128,
    seed: int = 0,
) -> dict[int, tuple[int, float]]:
    """For each query with a duplicate among `references`: (reference index, its Jaccard).

    An exact duplicate (equal `dedup_key`) wins with similarity 1.0, else the most similar
    verified near duplicate (Jaccard >= `threshold`); ties go to the lowest reference index.
    Queries with neither, and empty queries, are absent. Used to find train rows leaking into
    val/test: pass the held-out rows as `queries` and the train rows as `references`.

    Raises ValueError unless 0 < threshold <= 1, shingle >= 1 and num_perm >= 16.
    """
    _check_arguments(threshold, shingle, num_perm)
    first_reference: dict[str, int] = {}
    for index, text in enumerate(references):
        first_reference.setdefault(dedup_key(text), index)
    first_reference.pop("", None)
    found: dict[int, tuple[int, float]] = {}
    pending: dict[int, str] = {}
    for index, text in enumerate(queries):
        key = dedup_key(text)
        if key in first_reference:
            found[index] = (first_reference[key], 1.0)
        elif key:
            pending[index] = key
    near = _best_near_matches(
        list(pending.values()), list(first_reference), threshold, shingle, num_perm, seed
    )
    reference_index = list(first_reference.values())
    query_index = list(pending)
    for query, (reference, similarity) in near.items():
        found[query_index[query]] = (reference_index[reference], similarity)
    return dict(sorted(found.items()))


def _check_arguments(threshold: float, shingle: int, num_perm: int) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    _check_shingle(shingle)
    if num_perm < 16:
        raise ValueError(f"num_perm must be at least 16 for usable LSH bands, got {num_perm}")


def _check_shingle(shingle: int) -> None:
    if shingle < 1:
        raise ValueError(f"shingle must be at least 1 character, got {shingle}")


def _shingle_set(key: str, shingle: int) -> set[str]:
    if len(key) <= shingle:
        return {key} if key else set()
    return {key[start : start + shingle] for start in range(len(key) - shingle + 1)}


def _set_jaccard(a: set[str], b: set[str]) -> float:
    if not a or not b:
        return 0.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def _similar_components(
    keys: list[str], threshold: float, shingle: int, num_perm: int, seed: int
) -> list[int]:
    """Union-find root of each of the distinct, non-empty `keys` over verified similar pairs."""
    count = len(keys)
    if count < 2:
        return list(range(count))
    signatures = _signatures(keys, shingle, num_perm, seed)
    codes = _candidate_pairs(signatures, threshold)
    estimate = _estimated_jaccard(signatures, signatures, codes // count, codes % count)
    plausible = estimate >= threshold - _estimate_margin(threshold, num_perm)
    # Most similar first (Kruskal's order): strong pairs verify and grow the components, and
    # the weaker pairs then found inside one are dropped in numpy, never checked exactly.
    codes = codes[plausible][np.argsort(-estimate[plausible], kind="stable")]

    @functools.lru_cache(_SHINGLE_SET_CACHE)
    def shingles_of(row: int) -> set[str]:
        return _shingle_set(keys[row], shingle)

    parent = list(range(count))
    for start in range(0, len(codes), _CHUNK_PAIRS):
        chunk = codes[start : start + _CHUNK_PAIRS]
        left, right = chunk // count, chunk % count
        unjoined = _unjoined(parent, left, right)
        for left_row, right_row in zip(
            left[unjoined].tolist(), right[unjoined].tolist(), strict=True
        ):
            left_root, right_root = _find(parent, left_row), _find(parent, right_row)
            if left_root == right_root:
                continue
            if _set_jaccard(shingles_of(left_row), shingles_of(right_row)) >= threshold:
                parent[max(left_root, right_root)] = min(left_root, right_root)
    return _roots(parent).tolist()


def _candidate_pairs(signatures: np.ndarray, threshold: float) -> np.ndarray:
    """Distinct row pairs sharing an LSH band, as sorted codes earlier * rows + later."""
    count, num_perm = signatures.shape
    per_band = [
        earlier * count + later
        for earlier, later in map(_bucket_pairs, _band_keys(signatures, threshold, num_perm))
    ]
    return _sorted_unique(np.concatenate(per_band))


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    # A sort, not np.unique: numpy 2's hashing unique was ten times slower on these codes.
    values = np.sort(values)
    distinct = np.ones(len(values), dtype=bool)
    distinct[1:] = values[1:] != values[:-1]
    return values[distinct]


def _unjoined(parent: list[int], left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Whether each pair still lies in two different components: (pairs,) bool."""
    roots = _roots(parent)
    return roots[left] != roots[right]


def _find(parent: list[int], index: int) -> int:
    while parent[index] != index:
        parent[index] = parent[parent[index]]  # path halving keeps the trees flat
        index = parent[index]
    return index


def _roots(parent: list[int]) -> np.ndarray:
    """The root of every node of a union-find forest, by pointer jumping in numpy."""
    roots = np.array(parent)
    while True:
        jumped = roots[roots]
        if np.array_equal(jumped, roots):
            return roots
        roots = jumped


def _estimated_jaccard(
    left_signatures: np.ndarray, right_signatures: np.ndarray, left: np.ndarray, right: np.ndarray
) -> np.ndarray:
    """MinHash estimate of each pair's Jaccard, the share of equal signature entries: (pairs,)."""
    estimate = np.empty(len(left), dtype=np.float32)
    for start in range(0, len(left), _CHUNK_PAIRS):
        stop = start + _CHUNK_PAIRS
        equal = left_signatures[left[start:stop]] == right_signatures[right[start:stop]]
        estimate[start:stop] = equal.mean(axis=1)
    return estimate


def _estimate_margin(threshold: float, num_perm: int) -> float:
    """How far below the threshold a pair's MinHash estimate may fall before it is dropped.

    Four standard deviations of the estimate for a pair at the threshold (at 0.5 below 0.5,
    where the spread is widest): such a pair is dropped about once in 30,000, less as it gets
    more similar, far more rarely than LSH banding misses it. Candidates far below the
    threshold, which templated data has by the million, skip the exact check.
    """
    variance = 0.25 if threshold < 0.5 else threshold * (1 - threshold)
    return 4 * (variance / num_perm) ** 0.5


def _best_near_matches(
    queries: list[str],
    references: list[str],
    threshold: float,
    shingle: int,
    num_perm: int,
    seed: int,
) -> dict[int, tuple[int, float]]:
    """Query position -> (reference position, Jaccard) of its most similar verified match."""
    if not queries or not references:
        return {}
    query_signatures = _signatures(queries, shingle, num_perm, seed)
    reference_signatures = _signatures(references, shingle, num_perm, seed)
    query, reference = _cross_bucket_pairs(
        _band_keys(query_signatures, threshold, num_perm),
        _band_keys(reference_signatures, threshold, num_perm),
    )
    estimate = _estimated_jaccard(query_signatures, reference_signatures, query, reference)
    plausible = estimate >= threshold - _estimate_margin(threshold, num_perm)
    query_shingles = functools.lru_cache(1)(lambda row: _shingle_set(queries[row], shingle))
    reference_shingles = functools.lru_cache(_SHINGLE_SET_CACHE)(
        lambda row: _shingle_set(references[row], shingle)
    )
    best: dict[int, tuple[int, float]] = {}
    for left, right in zip(query[plausible].tolist(), reference[plausible].tolist(), strict=True):
        similarity = _set_jaccard(query_shingles(left), reference_shingles(right))
        # Pairs come sorted by query, then reference: one query set at a time is enough, and a
        # strict > keeps the lowest reference index on ties.
        if similarity >= threshold and similarity > best.get(left, (0, 0.0))[1]:
            best[left] = (right, similarity)
    return best


def _signatures(keys: list[str], shingle: int, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signature of each non-empty key's shingle set: (len(keys), num_perm) uint32."""
    multipliers, offsets = _permutations(num_perm, seed)
    signatures = np.empty((len(keys), num_perm), dtype=np.uint32)
    # Blocks of keys bound the memory of the shingle hashes (some 40 bytes per character).
    for block in range(0, len(keys), _BLOCK_KEYS):
        hashes, counts = _shingle_hashes(keys[block : block + _BLOCK_KEYS], shingle)
        ends = np.cumsum(counts)
        starts = ends - counts
        first = 0
        while first < len(counts):
            stop = int(np.searchsorted(ends, starts[first] + _CHUNK_SHINGLES, side="right"))
            stop = max(stop, first + 1)  # one text longer than a chunk is a chunk of its own
            chunk = hashes[starts[first] : ends[stop - 1]]
            # Affine permutations a*h + b wrapping mod 2**32 (datasketch's "affine32"): a
            # bijection for odd a, and uint32 lanes are several times faster than mod 2**61 - 1.
            permuted = multipliers[:, None] * chunk[None, :]  # (num_perm, shingles)
            permuted += offsets[:, None]
            minima = np.minimum.reduceat(permuted, starts[first:stop] - starts[first], axis=1)
            signatures[block + first : block + stop] = minima.T
            first = stop
    return signatures


def _shingle_hashes(keys: list[str], shingle: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hash of every shingle, key after key, and the number of shingles of each key."""
    # One rolling hash over all keys joined by NUL gaps: no window crosses two keys, and a key
    # shorter than `shingle` hashes as itself padded with NULs, its single shingle.
    gap = "\0" * (shingle - 1)
    # surrogatepass: a lone surrogate (valid in JSON strings) is still one code point.
    joined = (gap.join(keys) + gap).encode("utf-32-le", "surrogatepass")
    code_points = np.frombuffer(joined, dtype=np.uint32).astype(np.uint64)
    windows = len(code_points) - shingle + 1
    hashes = code_points[:windows].copy()
    for offset in range(1, shingle):
        hashes *= _POLY_MULTIPLIER
        hashes += code_points[offset : offset + windows]
    hashes = _mix64(hashes).astype(np.uint32)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    counts = np.maximum(lengths - shingle + 1, 1)
    key_starts = np.cumsum(lengths + shingle - 1) - (lengths + shingle - 1)
    shingle_starts = np.cumsum(counts) - counts
    positions = np.arange(counts.sum()) + np.repeat(key_starts - shingle_starts, counts)
    return hashes[positions], counts


def _mix64(values: np.ndarray) -> np.ndarray:
    """The MurmurHash3 64-bit finalizer: spreads every input bit over the output bits."""
    values = values ^ (values >> np.uint64(33))
    values *= np.uint64(0xFF51AFD7ED558CCD)
    values ^= values >> np.uint64(33)
    values *= np.uint64(0xC4CEB9FE1A85EC53)
    values ^= values >> np.uint64(33)
    return values


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multipliers (odd) and offsets of the `num_perm` permutations, both (num_perm,) uint32."""
    # splitmix64 of the seed rather than a numpy Generator, whose streams numpy may change
    # between releases: signatures must match across machines and versions.
    steps = np.arange(1, 2 * num_perm + 1, dtype=np.uint64)
    state = np.uint64(seed % 2**64) + steps * _GOLDEN_GAMMA
    state = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    state = (state ^ (state >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    words = ((state ^ (state >> np.uint64(31))) >> np.uint64(32)).astype(np.uint32)
    return words[:num_perm] | np.uint32(1), words[num_perm:]


def _band_keys(signatures: np.ndarray, threshold: float, num_perm: int) -> np.ndarray:
    """One 64-bit key per LSH band of each signature: (bands, rows of signatures) uint64."""
    bands, rows = _band_params(threshold, num_perm)
    blocks = signatures[:, : bands * rows].reshape(len(signatures), bands, rows)
    # A polynomial hash of each band; two different bands meeting on a key only make an extra
    # candidate, which verification rejects.
    keys = np.zeros((len(signatures), bands), dtype=np.uint64)
    for row in range(rows):
        keys *= _POLY_MULTIPLIER
        keys += blocks[:, :, row]
    return _mix64(keys).T.copy()


@functools.cache
def _band_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimizing the weighted false positive and negative areas under the LSH
    S-curve: the search of datasketch's `MinHashLSH(threshold, num_perm, weights)`, in numpy
    (it also allows one band at threshold 1, where the whole signature must match)."""
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands, rows = np.array(pairs, dtype=np.float64).T[:, :, None]
    below = np.linspace(0.0, threshold, 1001)
    above = np.linspace(threshold, 1.0, 1001)
    false_positive = np.trapezoid(1 - (1 - below**rows) ** bands, below, axis=1)
    false_negative = np.trapezoid((1 - above**rows) ** bands, above, axis=1)
    error = _FALSE_POSITIVE_WEIGHT * false_positive + _FALSE_NEGATIVE_WEIGHT * false_negative
    return pairs[int(np.argmin(error))]


def _bucket_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (earlier, later) sharing a key in one band: two (pairs,) int64 arrays."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    is_first = np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1]))
    position = np.arange(len(keys))
    bucket_start = np.maximum.accumulate(np.where(is_first, position, 0))
    window_start = np.maximum(bucket_start, position - _BUCKET_WINDOW)
    later, earlier = _expand_ranges(window_start, position)
    # The stable sort keeps a bucket in row order, so order[earlier] < order[later].
    return order[earlier], order[later]


def _cross_bucket_pairs(
    query_bands: np.ndarray, reference_bands: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (query, reference) pairs sharing a key in some band, sorted by query then
    reference: two (pairs,) int64 arrays."""
    count = reference_bands.shape[1]
    codes = []
    for query_keys, reference_keys in zip(query_bands, reference_bands, strict=True):
        order = np.argsort(reference_keys, kind="stable")
        sorted_keys = reference_keys[order]
        low = np.searchsorted(sorted_keys, query_keys, side="left")
        high = np.searchsorted(sorted_keys, query_keys, side="right")
        query, match = _expand_ranges(low, np.minimum(high, low + _BUCKET_WINDOW))
        codes.append(query * count + order[match])
    codes = _sorted_unique(np.concatenate(codes))
    return codes // count, codes % count


def _expand_ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j) with starts[i] <= j < stops[i], as two flat arrays (all i, all j)."""
    lengths = stops - starts
    owner = np.repeat(np.arange(len(starts)), lengths)
    first_of_owner = np.cumsum(lengths) - lengths
    return owner, np.repeat(starts, lengths) + (np.arange(lengths.sum()) - first_of_owner[owner])
