"""Chat templates for models that ship none or the wrong one (`model.chat_template`): a named
template or a Jinja file. The token a template puts right after an assistant's answer is the
end-of-turn token: training puts loss on it (data/tokenize.py labels each answer up to the end
of its turn) and generation stops at it (`end_of_turn_ids`)."""

from __future__ import annotations

from pathlib import Path

from migaki.errors import UserError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Gemma's turn format: roles user and model; a system message opens the first user turn, as
# Google's own template does (Gemma has no system role).
GEMMA = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first and role == 'user' else '')"
    " + message['content'] + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
TEMPLATES = {"chatml": CHATML, "gemma": GEMMA, "llama3": LLAMA3}
END_OF_TURN = {"chatml": "<|im_end|>", "gemma": "<end_of_turn>", "llama3": "<|eot_id|>"}
ANSWER = "migaki-answer-marker"  # stands for an answer when a template is probed


def template_text(name_or_file: str) -> str:
    """The Jinja text of a named template or of a template file. Raises UserError naming
    `model.chat_template` for an unknown name or an unreadable file."""
    if name_or_file in TEMPLATES:
        return TEMPLATES[name_or_file]
    path = Path(name_or_file).expanduser()
    if path.suffix in (".jinja", ".j2", ".txt") or path.exists():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"model.chat_template: cannot read {path} ({exc})") from None
    raise UserError(
        f"model.chat_template: unknown template '{name_or_file}' (use one of "
        f"{', '.join(TEMPLATES)}, or a Jinja file)"
    )


def apply_template(tokenizer, name_or_file: str, model_name: str) -> None:
    """Give `tokenizer` the template, after checking that it marks where an assistant turn
    starts and that its end-of-turn token is one token of the model's vocabulary."""
    tokenizer.chat_template = template_text(name_or_file)
    where = f"model.chat_template: {name_or_file}"
    try:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        bare = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        whole = _one_exchange(tokenizer)
    except Exception as exc:  # Jinja raises many kinds: syntax, undefined names
        raise UserError(f"{where}: the template does not render ({exc})") from None
    if prompt == bare or not whole.startswith(prompt):
        raise UserError(
            f"{where}: the template has no assistant marker (add_generation_prompt adds "
            "nothing before the answer), so answers cannot be told from prompts"
        )
    marker = END_OF_TURN.get(name_or_file)
    if marker is not None and marker not in tokenizer.get_vocab():
        raise UserError(
            f"{where}: its end-of-turn token {marker} is not in {model_name}'s vocabulary; "
            "use the template the model was trained with"
        )


def end_of_turn_ids(tokenizer) -> list[int]:
    """The token ids that end an assistant turn: the special token the chat template writes
    right after an answer (`<end_of_turn>` for Gemma, `<|im_end|>` for ChatML), then EOS."""
    stops = []
    marker = _end_marker(_one_exchange(tokenizer), tokenizer)
    if marker is not None:
        stops.append(tokenizer.convert_tokens_to_ids(marker))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    return stops


def _one_exchange(tokenizer) -> str:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ANSWER}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _end_marker(rendered: str, tokenizer) -> str | None:
    """The special token that follows the answer in `rendered`, or None when none does."""
    after = rendered[rendered.index(ANSWER) + len(ANSWER) :] if ANSWER in rendered else ""
    specials = {*tokenizer.get_added_vocab(), *tokenizer.all_special_tokens}
    return max((t for t in specials if t and after.startswith(t)), key=len, default=None)
