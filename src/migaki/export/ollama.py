"""The Ollama Modelfile beside a GGUF export: FROM the file, the chat TEMPLATE that renders
conversations as training did, the SYSTEM prompt of training, and a stop for every token
that ends a turn.

Ollama does not run Jinja: its templates are Go text/templates, so the template is written
here for each chat format migaki knows (models/templates.py), after checking that the
export's own template renders like that format. A template migaki cannot translate is
refused rather than approximated: a near-miss template is how other tools shipped models
that never stop."""

from __future__ import annotations

import re
from pathlib import Path

from transformers import AutoTokenizer

from migaki.errors import UserError
from migaki.models.templates import TEMPLATES, end_of_turn_ids

# Go templates, one per chat format. Ollama puts the Modelfile's SYSTEM first in .Messages
# when a request has no system message, and adds BOS itself when the GGUF asks for it, so
# neither template writes BOS.
GO_TEMPLATES = {
    "chatml": (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    ),
    "gemma": (
        '{{ $system := "" }}{{ range .Messages }}{{ if eq .Role "system" }}'
        "{{ $system = .Content }}{{ end }}{{ end }}"
        '{{ $first := true }}{{ range .Messages }}{{ if ne .Role "system" }}'
        '<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
        '{{ if and $first (eq .Role "user") (ne $system "") }}{{ $system }}\n\n{{ end }}'
        "{{ .Content }}<end_of_turn>\n{{ $first = false }}{{ end }}{{ end }}"
        "<start_of_turn>model\n"
    ),
    "llama3": (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}
_PROBE = [
    {"role": "user", "content": "probe question one"},
    {"role": "assistant", "content": "probe answer one"},
    {"role": "user", "content": "probe question two"},
]


def modelfile(gguf_name: str, hf_dir: Path) -> str:
    """The Modelfile text for the GGUF `gguf_name`, from the exported tokenizer in `hf_dir`
    (whose chat template already carries training's system prompt as its default)."""
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    family, system = chat_format(tokenizer)
    stops = [tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer)]
    lines = [
        "# Written by migaki export. Run it with: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{GO_TEMPLATES[family]}"""',
    ]
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def chat_format(tokenizer) -> tuple[str, str | None]:
    """Which of migaki's chat formats the tokenizer's template renders, and the system
    prompt it adds to a conversation without one (None when it adds none). UserError when
    the template is none of them."""
    for family in GO_TEMPLATES:
        with_system = [{"role": "system", "content": "probe system"}, *_PROBE]
        if _render(tokenizer, with_system) != _render(tokenizer, with_system, TEMPLATES[family]):
            continue
        bare = _render(tokenizer, _PROBE)
        if bare == _render(tokenizer, _PROBE, TEMPLATES[family]):
            return family, None
        system = _default_system(bare, family)
        if system is not None:
            conversation = [{"role": "system", "content": system}, *_PROBE]
            if bare == _render(tokenizer, conversation, TEMPLATES[family]):
                if '"""' in system:
                    raise UserError('the system prompt holds """, which a Modelfile cannot quote')
                return family, system
    raise UserError(
        "the chat template is none of the formats migaki can write for Ollama "
        f"({', '.join(GO_TEMPLATES)}); use --format gguf, whose file carries the template"
    )


def _render(tokenizer, messages, template: str | None = None) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )


def _default_system(rendered: str, family: str) -> str | None:
    """The system prompt a template inserted into `rendered`, read off the format's markup."""
    pattern = {
        "chatml": r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n",
        "gemma": r"<start_of_turn>user\n(.*?)\n\nprobe question one",
        "llama3": r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
    }[family]
    found = re.search(pattern, rendered, flags=re.DOTALL)
    return found.group(1) if found else None
