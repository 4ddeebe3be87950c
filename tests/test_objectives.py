"""The fast paths compute exactly what the plain computation does."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from migaki.data import Example, tokenize_example
from migaki.data.batches import collate
from migaki.data.packing import collate_packed, pack_rows
from migaki.objectives import causal_lm_loss

QUESTIONS = [
    ("How much is the kettle?", "The kettle costs 6,980 yen."),
    ("ケトルの値段はいくらですか？", "ケトルは6,980円です。"),
    ("What are the support hours?", "Support is open from 9:30 to 17:30."),
    ("Hello", "Thank you for your question."),
]


@pytest.fixture(scope="module")
def model(tiny_model):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def items(tokenizer):
    rows = [
        tokenize_example(
            Example(
                "mem",
                i,
                messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            ),
            tokenizer,
        )
        for i, (q, a) in enumerate(QUESTIONS)
    ]
    rows.append(tokenize_example(Example("mem", 9, text="The quick brown fox jumps."), tokenizer))
    return rows


def plain_loss(model, batch):
    """The reference: full logits, shifted cross-entropy summed over labels."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False
    ).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def test_labelled_positions_only_and_chunked_loss_equal_the_plain_loss_and_gradients(model, items):
    batch = collate(items, pad_token_id=0)
    reference = plain_loss(model, batch)
    reference_grads = torch.autograd.grad(reference, list(model.parameters()))
    for chunk_rows in (4096, 7):  # one chunk, and many small ones
        parts = causal_lm_loss(model, batch, chunk_rows=chunk_rows)
        grads = torch.autograd.grad(parts.loss_sum, list(model.parameters()))
        assert parts.loss_sum.item() == pytest.approx(reference.item(), rel=1e-5)
        assert parts.tokens == int((batch["labels"][:, 1:] != -100).sum())
        for ours, theirs in zip(grads, reference_grads, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_packing_fills_rows_first_fit():
    class Item:
        def __init__(self, n):
            self.input_ids = [0] * n

    rows = pack_rows([Item(n) for n in (6, 5, 4, 3, 2, 12)], capacity=10)
    assert sorted(sorted(r) for r in rows) == [[0, 2], [1, 3, 4], [5]]


def test_packed_rows_give_each_example_the_loss_it_has_alone(model, items):
    alone = [causal_lm_loss(model, collate([item], 0)).loss_sum.item() for item in items]
    packed = collate_packed(items, capacity=80, pad_token_id=0)
    assert packed["input_ids"].shape[0] < len(items)  # really packed
    assert "attention_mask" not in packed
    total = causal_lm_loss(model, packed)
    assert total.loss_sum.item() == pytest.approx(sum(alone), rel=1e-5)
    assert total.tokens == sum(item.trainable_tokens for item in items)
    # per example: logits of every example inside a packed row equal its logits alone
    logits = model(
        input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
    ).logits
    rows = pack_rows(items, 80)
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            length = len(items[index].input_ids)
            single = model(input_ids=torch.tensor([items[index].input_ids]), use_cache=False).logits
            torch.testing.assert_close(
                logits[r, start : start + length], single[0], rtol=1e-4, atol=1e-4
            )
            start += length


def test_a_kv_cache_would_leak_across_examples(model, items):
    """Why the loss always passes use_cache=False: with a cache, packed examples see each
    other (transformers skips the packed-sequence mask). Guards against a regression there."""
    packed = collate_packed(items[:2], capacity=200, pad_token_id=0)
    leaky = model(
        input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=True
    ).logits
    clean = model(
        input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
    ).logits
    assert not torch.allclose(leaky, clean, atol=1e-3)
