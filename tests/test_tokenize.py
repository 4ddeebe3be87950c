from migaki.data import IGNORE_INDEX, Example, tokenize_all, tokenize_example
from migaki.data.tokenize import render_prompt


def chat(*turns):
    roles = {"s": "system", "u": "user", "a": "assistant"}
    return Example("mem", 1, messages=[{"role": roles[r], "content": c} for r, c in turns])


def labelled(tokenizer, item):
    return tokenizer.decode(
        [t for t, lab in zip(item.input_ids, item.labels, strict=True) if lab != IGNORE_INDEX]
    )


def test_only_the_answer_and_end_of_turn_carry_loss(tokenizer):
    item = tokenize_example(
        chat(("u", "How much is the kettle?"), ("a", "It costs 6,980 yen.")), tokenizer
    )
    assert labelled(tokenizer, item) == "It costs 6,980 yen.<|im_end|>"
    positions = [i for i, lab in enumerate(item.labels) if lab != IGNORE_INDEX]
    assert positions == list(range(positions[0], positions[-1] + 1))  # one contiguous run
    assert item.input_ids[positions[-1]] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert item.labels[positions[-1] + 1 :] == [IGNORE_INDEX]  # the template's trailing newline
    prompt = tokenizer.decode(item.input_ids[: positions[0]])
    assert prompt == "<|im_start|>user\nHow much is the kettle?<|im_end|>\n<|im_start|>assistant\n"
    assert [lab for lab in item.labels if lab != IGNORE_INDEX] == [
        t for t, lab in zip(item.input_ids, item.labels, strict=True) if lab != IGNORE_INDEX
    ]


def test_every_assistant_turn_of_a_dialogue_is_trained(tokenizer):
    item = tokenize_example(
        chat(
            ("s", "Be brief."), ("u", "Hi"), ("a", "Hello."), ("u", "Price?"), ("a", "6,980 yen.")
        ),
        tokenizer,
    )
    assert labelled(tokenizer, item) == "Hello.<|im_end|>6,980 yen.<|im_end|>"


def test_japanese_answer_is_labelled_exactly(tokenizer):
    item = tokenize_example(
        chat(("u", "ケトルの値段は？"), ("a", "ケトルは6,980円です。")), tokenizer
    )
    assert labelled(tokenizer, item) == "ケトルは6,980円です。<|im_end|>"


def test_train_on_prompt_labels_everything(tokenizer):
    item = tokenize_example(chat(("u", "Hi"), ("a", "Hello.")), tokenizer, train_on_prompt=True)
    assert item.labels == item.input_ids


def test_plain_text_is_trained_whole_with_end_token(tokenizer):
    item = tokenize_example(Example("mem", 1, text="The quick brown fox."), tokenizer)
    assert item.labels == item.input_ids
    assert item.input_ids[-1] == tokenizer.eos_token_id


def test_system_prompt_is_added_only_where_missing(tokenizer):
    plain = [{"role": "user", "content": "Hi"}]
    assert render_prompt(tokenizer, plain, "Be kind.").startswith("<|im_start|>system\nBe kind.")
    own = [{"role": "system", "content": "Mine."}, *plain]
    assert "Be kind." not in render_prompt(tokenizer, own, "Be kind.")
    item = tokenize_example(chat(("u", "Hi"), ("a", "Hello.")), tokenizer, system_prompt="Be kind.")
    assert tokenizer.decode(item.input_ids).startswith("<|im_start|>system\nBe kind.<|im_end|>")
    assert labelled(tokenizer, item) == "Hello.<|im_end|>"


def test_length_policy_is_counted_never_silent(tokenizer):
    short = chat(("u", "Hi"), ("a", "Hello."))
    long_answer = chat(("u", "Hi"), ("a", "The quick brown fox jumps over the lazy dog. " * 5))
    long_prompt = chat(("u", "The quick brown fox jumps over the lazy dog. " * 5), ("a", "Yes."))
    limit = len(tokenize_example(short, tokenizer).input_ids) + 2

    kept, report = tokenize_all([short, long_answer, long_prompt], tokenizer, max_length=limit)
    assert len(kept) == 2 and all(len(k.input_ids) <= limit for k in kept)
    assert report.truncated == 2
    assert report.dropped == {"no trainable token left": 1}
    assert "1 dropped: no trainable token left" in report.summary()

    kept, report = tokenize_all([short, long_answer], tokenizer, max_length=limit, overlong="drop")
    assert len(kept) == 1 and report.dropped == {f"longer than max_length={limit}": 1}
    assert report.summary().startswith("1/2 rows kept")


def test_tokenized_splits_are_cached_and_keyed_on_what_decides_the_tokens(
    tokenizer, tmp_path, monkeypatch
):
    import migaki.data.cache as cache

    monkeypatch.setenv("MIGAKI_CACHE", str(tmp_path))
    examples = [chat(("u", "Hi"), ("a", "Hello.")), chat(("u", "Price?"), ("a", "6,980 yen."))]
    calls = []
    real = cache.tokenize_all
    monkeypatch.setattr(cache, "tokenize_all", lambda *a, **k: calls.append(1) or real(*a, **k))

    first, report = cache.tokenize_cached(examples, tokenizer, max_length=64)
    again, report_again = cache.tokenize_cached(examples, tokenizer, max_length=64)
    assert len(calls) == 1 and len(list((tmp_path / "tokenized").glob("*.arrow"))) == 1
    assert [(r.input_ids, r.labels) for r in again] == [(r.input_ids, r.labels) for r in first]
    assert report_again.summary() == report.summary()

    cache.tokenize_cached(examples, tokenizer, max_length=8)  # another setting
    cache.tokenize_cached(examples[:1], tokenizer, max_length=64)  # other data
    assert len(calls) == 3
