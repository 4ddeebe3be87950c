"""The Modelfile's Go templates render every chat format as migaki's Jinja templates do
(checked with Go's own text/template, which Ollama uses), and a template migaki cannot
translate is refused rather than approximated."""

import pytest
from gotemplate import go_render

from migaki.errors import UserError
from migaki.export.hf import with_default_system
from migaki.export.ollama import GO_TEMPLATES, chat_format
from migaki.models import ModelSource, load_tokenizer
from migaki.models.templates import TEMPLATES

SYSTEM = "雲風家電のサポート係です。Answer briefly."
CONVERSATION = [
    {"role": "user", "content": "How much is the KZ-R300?"},
    {"role": "assistant", "content": "12,800 yen."},
    {"role": "user", "content": "保証期間は？"},
]


@pytest.fixture
def chat_tokenizer(tiny_model):
    return load_tokenizer(ModelSource("tiny", tiny_model, "local"))


@pytest.mark.parametrize("family", sorted(GO_TEMPLATES))
@pytest.mark.parametrize("system", [SYSTEM, None])
def test_each_go_template_renders_like_its_jinja_template(chat_tokenizer, tmp_path, family, system):
    messages = ([{"role": "system", "content": system}] if system else []) + CONVERSATION
    want = chat_tokenizer.apply_chat_template(
        messages, chat_template=TEMPLATES[family], tokenize=False, add_generation_prompt=True
    )
    # Ollama adds BOS itself (the GGUF says so); the Jinja templates write it as text
    want = want.removeprefix(chat_tokenizer.bos_token) if "bos_token" in TEMPLATES[family] else want
    assert go_render(GO_TEMPLATES[family], messages, tmp_path) == want


@pytest.mark.parametrize("family", sorted(GO_TEMPLATES))
def test_the_chat_format_and_training_system_prompt_are_recognised(chat_tokenizer, family):
    chat_tokenizer.chat_template = with_default_system(TEMPLATES[family], SYSTEM)
    assert chat_format(chat_tokenizer) == (family, SYSTEM)
    chat_tokenizer.chat_template = TEMPLATES[family]
    assert chat_format(chat_tokenizer) == (family, None)


def test_a_template_migaki_cannot_translate_is_refused(chat_tokenizer):
    chat_tokenizer.chat_template = (
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant: {% endif %}"
    )
    with pytest.raises(UserError, match="none of the formats migaki can write for Ollama"):
        chat_format(chat_tokenizer)
