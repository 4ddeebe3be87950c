import random

import pytest
import torch

from migaki.data import TokenizedExample
from migaki.data.batches import collate, epoch_batches

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(5, 200) for _ in range(203)]


@pytest.mark.parametrize("grouped", [False, True])
def test_each_epoch_uses_every_row_once_and_is_reproducible(grouped):
    batches = epoch_batches(LENGTHS, 8, seed=3, epoch=1, group_by_length=grouped)
    assert sorted(i for batch in batches for i in batch) == list(range(len(LENGTHS)))
    assert len(batches) == -(-len(LENGTHS) // 8)
    assert batches == epoch_batches(LENGTHS, 8, seed=3, epoch=1, group_by_length=grouped)
    assert batches != epoch_batches(LENGTHS, 8, seed=3, epoch=2, group_by_length=grouped)


def test_grouping_by_length_cuts_padding():
    def padding_efficiency(batches):
        real = sum(LENGTHS[i] for b in batches for i in b)
        return real / sum(max(LENGTHS[i] for i in b) * len(b) for b in batches)

    plain = padding_efficiency(epoch_batches(LENGTHS, 8, 0, 0))
    grouped = padding_efficiency(epoch_batches(LENGTHS, 8, 0, 0, group_by_length=True))
    assert grouped > plain + 0.2


def test_collate_pads_right_and_masks_padding():
    rows = [TokenizedExample([5, 6, 7], [-100, 6, 7]), TokenizedExample([8], [8])]
    batch = collate(rows, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
