"""The growing key/value cache returns what transformers' dynamic layers return, writing into
a buffer with room instead of concatenating a new tensor each step."""

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from migaki.evaluate.growing_cache import GrowingLayer, GrowingSlidingWindowLayer, grow_in_place


def steps(count: int, batch: int = 3, width: int = 1, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        yield (
            torch.randn(batch, 1, width, 4, generator=generator),
            torch.randn(batch, 1, width, 4, generator=generator),
        )


def run(layer, updates, select_at: int | None = None):
    """Every update's returned keys and values, rows 0 and 2 kept after step `select_at`."""
    returned = []
    for step, (keys, values) in enumerate(updates):
        if step == select_at:
            layer.batch_select_indices(torch.tensor([0, 2]))
        if select_at is not None and step >= select_at:
            keys, values = keys[[0, 2]], values[[0, 2]]
        got = layer.update(keys, values)
        returned.append((got[0].clone(), got[1].clone()))
    return returned


def same(first, second) -> bool:
    if len(first) != len(second):
        return False
    pairs = zip(first, second, strict=True)
    return all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)


def test_a_growing_layer_returns_what_a_dynamic_layer_returns_in_one_buffer():
    updates = [(k, v) for k, v in steps(1, width=5)] + list(steps(40, seed=1))
    reference = run(DynamicLayer(), updates, select_at=20)
    growing = GrowingLayer()
    assert same(run(growing, updates, select_at=20), reference)
    # the last steps wrote into the buffer the one before them returned
    pointer = growing.keys.data_ptr()
    growing.update(*next(steps(1, batch=2, seed=2)))
    assert growing.keys.data_ptr() == pointer and growing.keys.shape[-2] == 46


def test_a_sliding_layer_grows_inside_its_window_and_slides_as_before_past_it():
    updates = [(k, v) for k, v in steps(1, width=3)] + list(steps(30, seed=1))
    reference_layer = DynamicSlidingWindowLayer(sliding_window=12)
    reference = run(reference_layer, updates, select_at=5)
    growing = GrowingSlidingWindowLayer(sliding_window=12)
    assert same(run(growing, updates, select_at=5), reference)
    assert growing.get_seq_length() == reference_layer.get_seq_length() == 33
    assert growing.get_mask_sizes(1) == reference_layer.get_mask_sizes(1)


def test_grow_in_place_changes_plain_and_sliding_layers_only():
    cache = DynamicCache()
    other = DynamicLayer()
    other.__class__ = type("Other", (DynamicLayer,), {})
    cache.layers = [DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=4), other]
    grow_in_place(cache)
    kinds = [type(layer) for layer in cache.layers]
    assert kinds[:2] == [GrowingLayer, GrowingSlidingWindowLayer] and kinds[2].__name__ == "Other"
