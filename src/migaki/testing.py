"""Tiny random models and tokenizers for tests and examples: built in about a second, no network.

The tokenizer is a byte-level BPE trained on a few strings with a ChatML template, like
SmolLM2's; the model is a 2-layer Llama.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "How much is the kettle? The kettle costs 6,980 yen.",
    "What are the support hours? Support is open from 9:30 to 17:30.",
    "ケトルの値段はいくらですか？ケトルは6,980円です。",
    "サポートの受付時間は9時30分から17時30分です。",
    "Hello, how can I help you today? Thank you for your question.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "user assistant system",
]


def build_tiny_model(
    out: str | Path,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
    gemma_like: bool = False,
    tokenizer_from: str | Path | None = None,
) -> Path:
    """Write a tiny random Llama and its tokenizer to `out` (a Hugging Face folder).
    `gemma_like`: Gemma's special tokens (`<bos>`, `<eos>`, `<start_of_turn>`,
    `<end_of_turn>`) and no chat template, as the pre-trained Gemma 3 ships.
    `tokenizer_from`: a real model's folder whose tokenizer to use instead (llama.cpp's
    converter recognises only tokenizers of published models)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out = Path(out)
    if tokenizer_from is not None:
        hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
        hf_tokenizer.save_pretrained(out)
        return _tiny_llama(out, hf_tokenizer, hidden_size, layers, seed)
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if gemma_like:
        specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
        roles = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        roles = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
        roles["pad_token"] = "<|endoftext|>"
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=None, **roles)
    if not gemma_like:
        hf_tokenizer.chat_template = CHATML
    hf_tokenizer.save_pretrained(out)
    return _tiny_llama(out, hf_tokenizer, hidden_size, layers, seed)


def _tiny_llama(out: Path, hf_tokenizer, hidden_size: int, layers: int, seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(hf_tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=hf_tokenizer.bos_token_id,
        eos_token_id=hf_tokenizer.eos_token_id,
        pad_token_id=hf_tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def build_tiny_encoder(out: str | Path, hidden_size: int = 32, seed: int = 0) -> Path:
    """A tiny random BERT (2 layers) beside the same byte-level tokenizer: stands in for the
    bundled MiniLM encoder in classification tests."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = Path(out)
    build_tiny_model(out, hidden_size=hidden_size)
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    for stale in out.glob("model*.safetensors"):
        stale.unlink()
    BertModel(config).save_pretrained(out)
    return out
