"""The prompts of the systems `migaki compare` sets against a fine-tuned model: the same test
rows with k solved training examples before the question (few-shot) or with k retrieved
passages above it (RAG). The rows keep their reference and meta, so every system is scored by
the same functions on the same rows."""

from __future__ import annotations

from dataclasses import replace

from migaki.data import Example, render_prompt
from migaki.data.heuristics import language_of

# The instruction above retrieved passages, in the question's language.
RAG_HEADER = {
    "ja": "次の参考情報を使って質問に答えてください。",
    "en": "Use the following reference information to answer the question.",
}
RAG_QUESTION = {"ja": "質問:", "en": "Question:"}


def question_of(example: Example) -> str:
    """The last user turn: what retrieval and example selection search with."""
    return [m for m in example.prompt_messages if m["role"] == "user"][-1]["content"]


def with_shots(example: Example, shots: list[Example]) -> Example:
    """The row with each shot's question and answer as earlier turns of the conversation, the
    way a chat model sees solved examples; the row's own turns follow unchanged."""
    turns = []
    for shot in shots:
        turns += [
            {"role": "user", "content": question_of(shot)},
            {"role": "assistant", "content": shot.reference},
        ]
    return replace(example, messages=[*turns, *example.messages])


def with_passages(example: Example, passages: list[str]) -> Example:
    """The row with the passages numbered above its last question, under an instruction in
    the question's language."""
    question = question_of(example)
    language = "ja" if language_of(question) == "ja" else "en"
    listed = "\n".join(f"[{number}] {text}" for number, text in enumerate(passages, 1))
    content = f"{RAG_HEADER[language]}\n{listed}\n\n{RAG_QUESTION[language]} {question}"
    messages = list(example.messages)
    last_user = max(i for i, m in enumerate(example.prompt_messages) if m["role"] == "user")
    messages[last_user] = {**messages[last_user], "content": content}
    return replace(example, messages=messages)


def prompt_tokens(tokenizer, examples: list[Example], system_prompt: str | None) -> float:
    """Mean tokens of the rendered prompt per row: what each call to the system costs."""
    if not examples:
        return 0.0
    rendered = [render_prompt(tokenizer, e.prompt_messages, system_prompt) for e in examples]
    total = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered)
    return total / len(examples)
