"""Batched generation: rows leave the batch when they end and waiting rows join it, and every
row's greedy answer is the one it gets generated alone."""

from dataclasses import replace

import pytest
import torch
from conftest import run_cli
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from migaki.config import MethodConfig
from migaki.data.tokenize import render_prompt
from migaki.evaluate import generation, lm_head
from migaki.evaluate.generation import generate_answers, generate_tokens, load_for_generation
from migaki.methods import apply_method
from migaki.models.inference import load_for_inference

NEVER = 10**6  # a stop id no model generates
QUESTIONS = [
    "How much is the kettle?",
    "ケトルの値段はいくらですか？",
    "What are the support hours? Tell me the hours on weekdays and weekends, please.",
    "Hello",
    "サポートの受付時間は何時から何時までですか？土日も開いていますか？",
    "The quick brown fox?",
    "Thank you for your question, how can I help you today?",
]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return replace(load_for_inference(tiny_model), precision="fp32")


def prompt_ids(tokenizer) -> list[list[int]]:
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    texts = [render_prompt(tokenizer, c, None) for c in conversations]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def alone(model, prompt: list[int], stops: list[int], max_new_tokens: int):
    """The reference: transformers' generate on one unpadded row, cut at the first stop id."""
    with torch.no_grad():
        output = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=0,
        )
    tokens = output[0, len(prompt) :].tolist()
    end = next((i for i, token in enumerate(tokens) if token in stops), None)
    return (tokens, False) if end is None else (tokens[:end], True)


def stops_at_different_steps(model, prompts: list[list[int]], max_new_tokens: int) -> list[int]:
    """Stop ids that end the rows at different steps (a random model never ends its turn):
    every third row runs to the limit; each other row i ends at a token it generates from
    step 2 + i % 5 on that those rows never generate."""
    free = [alone(model, p, [NEVER], max_new_tokens)[0] for p in prompts]
    runners = {token for i, tokens in enumerate(free) if i % 3 == 2 for token in tokens}
    stops = []
    for i, tokens in enumerate(free):
        if i % 3 != 2:
            stops += [t for t in tokens[1 + i % 5 :] if t not in runners][:1]
    return stops


def check_equal_to_alone(model, prompts, max_new_tokens, batch_sizes, monkeypatch):
    stops = stops_at_different_steps(model, prompts, max_new_tokens)
    expected = [alone(model, p, stops, max_new_tokens) for p in prompts]
    ended = [stopped for _, stopped in expected]
    assert any(ended) and not all(ended)  # rows really leave the batch at different steps
    assert len({len(tokens) for tokens, _ in expected}) > 2
    joins = []
    monkeypatch.setattr(generation, "_join", spy(generation._join, joins))
    for batch_size in batch_sizes:
        assert generate_tokens(model, prompts, stops, max_new_tokens, batch_size) == expected
    return joins


def spy(function, calls: list, keep: bool = False):
    """`function`, noting each call in `calls` (its result with `keep`)."""

    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        calls.append(result if keep else 1)
        return result

    return wrapped


def test_each_rows_greedy_tokens_are_those_it_gets_alone(loaded, monkeypatch):
    prompts = prompt_ids(loaded.tokenizer)
    joins = check_equal_to_alone(loaded.model, prompts, 12, [1, 2, 3, 100], monkeypatch)
    assert joins  # waiting rows joined a running batch, left-padded


def test_a_lora_model_generates_batched_as_alone(tiny_model, loaded, monkeypatch):
    model = apply_method(load_for_inference(tiny_model).model, MethodConfig(name="lora"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    check_equal_to_alone(model.eval(), prompt_ids(loaded.tokenizer), 10, [3, 100], monkeypatch)


def tiny_gemma(vocab_size: int, sliding_window: int) -> Gemma3ForCausalLM:
    """A 2-layer random Gemma 3, one sliding-window layer and one full, as the 270M has."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
    )
    return Gemma3ForCausalLM(config).eval()


def test_sliding_window_layers_join_and_a_short_window_runs_fixed_batches(loaded, monkeypatch):
    prompts = prompt_ids(loaded.tokenizer)
    longest = max(len(p) for p in prompts) + 10
    model = tiny_gemma(len(loaded.tokenizer), sliding_window=longest + 1)
    assert check_equal_to_alone(model, prompts, 10, [3], monkeypatch)
    # a window the rows outgrow: its layers keep their last tokens only, so nothing joins
    model.config.sliding_window = longest - 20
    assert not check_equal_to_alone(model, prompts, 10, [3, 100], monkeypatch)


def test_answers_equal_one_conversation_at_a_time(loaded):
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    batched = generate_answers(loaded, conversations, max_new_tokens=8, batch_size=3)
    one_by_one = [generate_answers(loaded, [c], 8, batch_size=1)[0] for c in conversations]
    assert batched == one_by_one
    assert all(isinstance(text, str) and stopped in (True, False) for text, stopped in batched)
    assert generate_answers(loaded, [], 8) == []


def test_sampling_follows_the_seed_and_the_limit(loaded):
    prompts = prompt_ids(loaded.tokenizer)
    torch.manual_seed(1)
    first = generate_tokens(loaded.model, prompts, [2], 6, batch_size=3, temperature=1.5)
    torch.manual_seed(1)
    again = generate_tokens(loaded.model, prompts, [2], 6, batch_size=3, temperature=1.5)
    assert first == again
    greedy = generate_tokens(loaded.model, prompts, [2], 6, batch_size=3)
    assert first != greedy
    for tokens, stopped in first:
        assert len(tokens) <= 6 and 2 not in tokens
        assert stopped or len(tokens) == 6
    texts = generate_answers(loaded, [[{"role": "user", "content": "hi"}]], 6, temperature=0.8)
    assert isinstance(texts[0][0], str)


def test_prompt_learning_models_generate_through_transformers(tiny_model, loaded):
    model = apply_method(load_for_inference(tiny_model).model, MethodConfig(name="prompt"))
    tuned = replace(loaded, model=model.eval())
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS[:3]]
    answers = generate_answers(tuned, conversations, max_new_tokens=5, batch_size=2)
    # PEFT ignores position ids there, so a left-padded row is not quite the row alone
    assert len(answers) == 3 and all(isinstance(text, str) for text, _ in answers)


def with_system_prompt(tokenizer) -> list[list[int]]:
    """The questions after one long system prompt: the rows share their first tokens."""
    system = "You answer questions about the Kumokaze kettle shop, briefly and politely."
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    texts = [render_prompt(tokenizer, c, system) for c in conversations]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_a_shared_start_runs_once_and_changes_no_token(loaded, monkeypatch):
    prompts = with_system_prompt(loaded.tokenizer)
    assert generation._common_length(prompts) >= generation._SHARED_AT_LEAST
    starts = []
    original = generation._prefill

    def prefill(model, prompts, rows, pad):
        batch = original(model, prompts, rows, pad)
        if len({len(prompts[row]) for row in rows}) > 1:  # rows of different lengths
            starts.append(bool(batch.mask[:, : generation._SHARED_AT_LEAST].all()))
        return batch

    monkeypatch.setattr(generation, "_prefill", prefill)
    check_equal_to_alone(loaded.model, prompts, 10, [3, 100], monkeypatch)
    # the shared start sits at the left of every row, the padding after it
    assert starts and all(starts)


def test_drafts_right_and_wrong_leave_greedy_tokens_unchanged(loaded, monkeypatch):
    """Drafts from an oracle that knows each row's greedy answer, wrong from the second token
    every other time: accepted runs, refused tails masked in the cache, rows ending inside a
    draft; the tokens are those of each row alone."""
    model, prompts, limit = loaded.model, with_system_prompt(loaded.tokenizer), 12
    stops = stops_at_different_steps(model, prompts, limit)
    expected = [alone(model, p, stops, limit) for p in prompts]
    calls = []

    def oracle(tokens, count, sizes=(3, 2)):
        index = max(
            (i for i, p in enumerate(prompts) if tokens[: len(p)] == p),
            key=lambda i: len(prompts[i]),
        )
        done = len(tokens) - len(prompts[index])
        answer = expected[index][0] + stops[:1]
        draft = answer[done : done + count]
        calls.append(len(draft))
        if len(calls) % 2 and len(draft) > 1:
            draft[1] = (draft[1] + 1) % len(loaded.tokenizer)  # refused: the rest is masked
        return draft

    monkeypatch.setattr(generation, "_lookup", oracle)
    for batch_size in (1, 3, 100):
        assert generate_tokens(model, prompts, stops, limit, batch_size) == expected
    assert max(calls) > 1


def test_lookup_continues_the_latest_occurrence_and_loops():
    assert generation._lookup([5, 6, 7, 8, 9, 5, 6, 7], 3) == [8, 9, 5]
    # a loop of period 2 is continued periodically beyond its last occurrence
    assert generation._lookup([1, 3, 4, 3, 4, 3, 4], 5) == [3, 4, 3, 4, 3]
    assert generation._lookup([1, 2, 3], 4) == []
    assert generation._lookup([1, 2, 1, 2], 0) == []


def test_greedy_tokens_block_by_block_equal_one_argmax_ties_included(monkeypatch):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    with torch.no_grad():
        head.weight[37] = head.weight[3]  # a tie across blocks: the first index wins
        head.bias[37] = head.bias[3]
        head.weight[3] *= 40  # and wins for most positions
    states = torch.randn(3, 5, 16)
    expected = head(states).argmax(dim=-1)
    assert (expected == 3).any()
    monkeypatch.setattr(lm_head, "_HEAD_ROWS", 7)
    assert torch.equal(lm_head.greedy_tokens(head, states), expected)
    monkeypatch.setattr(lm_head, "_HEAD_ROWS", 64)
    assert torch.equal(lm_head.greedy_tokens(head, states[:, :1]), expected[:, :1])


def test_greedy_generation_over_head_blocks_is_unchanged(loaded, monkeypatch):
    prompts = prompt_ids(loaded.tokenizer)
    model = tiny_gemma(len(loaded.tokenizer), sliding_window=4096)
    monkeypatch.setattr(lm_head, "_HEAD_ROWS", 97)  # a vocabulary of several blocks
    assert lm_head.plain_head(model) is not None
    check_equal_to_alone(model, prompts, 10, [3, 100], monkeypatch)


@pytest.mark.usefixtures("exact_int8")
def test_greedy_generation_through_the_int8_screen_is_unchanged(loaded, monkeypatch):
    prompts = prompt_ids(loaded.tokenizer)
    model = tiny_gemma(len(loaded.tokenizer), sliding_window=4096)
    monkeypatch.setattr(lm_head, "SCREEN_MIN_ROWS", 0)  # a tiny head is screened too
    screens = []
    monkeypatch.setattr(generation, "screen_for", spy(lm_head.screen_for, screens, keep=True))
    check_equal_to_alone(model, prompts, 10, [3, 100], monkeypatch)
    assert screens and all(screen is screens[0] for screen in screens)  # built once
    assert screens[0].fallbacks == 0


def test_a_head_cast_once_for_bf16_picks_what_autocast_picks(monkeypatch):
    torch.manual_seed(1)
    head = torch.nn.Linear(32, 300)
    states = torch.randn(4, 3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = lm_head.cast_once(head)
        expected = lm_head.greedy_tokens(head, states)
        assert cast.weight.dtype == torch.bfloat16 and cast.bias is head.bias
        assert torch.equal(lm_head.greedy_tokens(cast, states), expected)
        assert torch.equal(lm_head.head_logits(cast, states), lm_head.head_logits(head, states))
    assert lm_head.cast_once(head) is head  # no autocast: nothing to cast


def test_a_lora_run_generates_merged_and_answers_as_with_its_adapter_apart(
    capsys, tmp_path, recipe_file
):
    code, _, err = run_cli(capsys, "train", recipe_file, "--out", tmp_path / "run")
    assert code == 0, err
    apart = replace(load_for_inference(tmp_path / "run"), precision="fp32")
    merged = replace(load_for_generation(tmp_path / "run"), precision="fp32")
    assert any("lora_" in name for name, _ in apart.model.named_parameters())
    assert not any("lora_" in name for name, _ in merged.model.named_parameters())
    ids = torch.tensor(prompt_ids(apart.tokenizer)[:1])
    with torch.no_grad():
        # the adapter is in the merged weights: logits as with it apart, not as the base's
        with apart.model.disable_adapter():
            base_logits = apart.model(input_ids=ids).logits
        apart_logits = apart.model(input_ids=ids).logits
        merged_logits = merged.model(input_ids=ids).logits
    assert not torch.allclose(apart_logits, base_logits, atol=1e-4)
    torch.testing.assert_close(merged_logits, apart_logits, atol=1e-5, rtol=1e-4)
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    assert generate_answers(merged, conversations, 12) == generate_answers(apart, conversations, 12)
