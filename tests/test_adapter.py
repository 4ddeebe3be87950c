"""Bottleneck adapters: identity at start, only adapters train, save/load round trip, and the
paths migaki's trainer takes (decoder called directly, gradient checkpointing)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from migaki.config import MethodConfig
from migaki.errors import UserError
from migaki.methods import adapter
from migaki.objectives import causal_lm_loss
from migaki.testing import build_tiny_model

SIZE = 8
PER_LAYER = {"houlsby": 2, "pfeiffer": 1}


def load(folder, **kwargs):
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def adapted(folder, placement="houlsby", **kwargs):
    method = MethodConfig(name="adapter", adapter_size=SIZE, adapter_placement=placement)
    return adapter.apply(load(folder, **kwargs), method)


def make_batch(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def mean_loss(model, batch):
    parts = causal_lm_loss(model, batch)
    return parts.loss_sum / parts.tokens


def randomize_adapters(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if adapter.ADAPTER_ATTR in name:
                parameter.normal_(std=0.05)


@pytest.fixture(scope="module")
def trained(tiny_model):
    """A houlsby model after 20 AdamW steps on a fixed batch, its losses and the base weights
    from before training."""
    torch.manual_seed(0)
    base_before = {k: v.clone() for k, v in load(tiny_model).state_dict().items()}
    model = adapted(tiny_model)
    model.train()
    batch = make_batch(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        loss = mean_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model.eval(), losses, base_before


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_untrained_adapters_leave_logits_unchanged(tiny_model, placement):
    base = load(tiny_model).eval()
    model = adapted(tiny_model, placement).eval()
    batch = make_batch(model)
    with torch.no_grad():
        assert torch.equal(model(batch["input_ids"]).logits, base(batch["input_ids"]).logits)


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_only_adapters_are_trainable(tiny_model, placement):
    model = adapted(tiny_model, placement)
    config = model.config
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(f".{adapter.ADAPTER_ATTR}." in n for n in trainable)
    adapters = [m for m in model.modules() if isinstance(m, adapter.Bottleneck)]
    assert len(adapters) == config.num_hidden_layers * PER_LAYER[placement]
    per_adapter = 2 * config.hidden_size * SIZE + SIZE + config.hidden_size
    assert sum(p.numel() for p in trainable.values()) == len(adapters) * per_adapter
    # Base parameter names are unchanged: the adapters only add names.
    assert set(load(tiny_model).state_dict()) <= set(model.state_dict())


def test_training_changes_adapters_only_and_loss_falls(trained):
    model, losses, base_before = trained
    after = model.state_dict()
    for name, before in base_before.items():
        assert torch.equal(after[name], before), name
    assert all(not torch.equal(after[n], torch.zeros_like(after[n])) for n in after if ".up." in n)
    # The tiny model's LM head has weights of std 0.02, so even memorising one batch moves the
    # loss only a few tenths below ln(vocab) in 20 steps; it must keep falling all the same.
    assert losses[-1] < losses[10] < losses[0] - 0.2, losses


def test_save_and_load_reproduce_trained_model(trained, tiny_model, tmp_path):
    model, _, _ = trained
    adapter.save_final(model, tmp_path / "final")
    assert {p.name for p in (tmp_path / "final").iterdir()} == {
        adapter.CONFIG_NAME,
        adapter.WEIGHTS_NAME,
    }
    saved = load_file(tmp_path / "final" / adapter.WEIGHTS_NAME)
    assert set(saved) == set(adapter.adapter_state(model))
    assert len(saved) == model.config.num_hidden_layers * 2 * 4  # 2 adapters x (W, b) x 2
    config = json.loads((tmp_path / "final" / adapter.CONFIG_NAME).read_text())
    assert config == {
        "migaki_method": "adapter",
        "adapter_size": SIZE,
        "adapter_placement": "houlsby",
        "num_layers": 2,
        "hidden_size": 64,
        "base_model": str(tiny_model),
    }

    loaded = adapter.load_final(load(tiny_model), str(tmp_path / "final"))
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    input_ids = make_batch(model, seed=3)["input_ids"]
    with torch.no_grad():
        expected, actual = model(input_ids).logits, loaded(input_ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


def test_pfeiffer_round_trip(tiny_model, tmp_path):
    model = adapted(tiny_model, "pfeiffer").eval()
    randomize_adapters(model)
    adapter.save_final(model, tmp_path)
    loaded = adapter.load_final(load(tiny_model), tmp_path)
    assert json.loads((tmp_path / adapter.CONFIG_NAME).read_text())["adapter_placement"] == (
        "pfeiffer"
    )
    input_ids = make_batch(model)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits)


@pytest.fixture
def saved(tiny_model, tmp_path):
    model = adapted(tiny_model)
    randomize_adapters(model)
    adapter.save_final(model, tmp_path / "final")
    return tmp_path / "final"


def test_load_refuses_a_base_of_another_width(saved, tmp_path):
    other = build_tiny_model(tmp_path / "narrow", hidden_size=32)
    with pytest.raises(UserError, match="hidden_size 64, but this base model has hidden_size 32"):
        adapter.load_final(load(other), saved)


def test_load_refuses_a_base_of_another_depth(saved, tiny_model):
    config_path = saved / adapter.CONFIG_NAME
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(UserError, match="num_layers 3, but this base model has num_layers 2"):
        adapter.load_final(load(tiny_model), saved)


def test_load_refuses_missing_weight_and_leaves_base_clean(saved, tiny_model):
    weights = saved / adapter.WEIGHTS_NAME
    state = load_file(weights)
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, weights)
    base = load(tiny_model)
    with pytest.raises(UserError, match=f"{adapter.WEIGHTS_NAME}: lacks 1 adapter weights"):
        adapter.load_final(base, saved)
    assert adapter.adapter_state(base) == {}
    assert not base.model.layers[0].mlp._forward_hooks


def test_load_refuses_wrong_shapes(saved, tiny_model):
    config_path = saved / adapter.CONFIG_NAME
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "adapter_size": SIZE * 2}))
    with pytest.raises(UserError, match="has shape"):
        adapter.load_final(load(tiny_model), saved)


def test_gradient_checkpointing_gives_the_same_adapter_gradients(tiny_model):
    def adapter_grads(checkpointing):
        model = adapted(tiny_model)
        randomize_adapters(model)  # with `up` at zero, `down` would get no gradient at all
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.train()
        mean_loss(model, make_batch(model)).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = adapter_grads(False), adapter_grads(True)
    assert set(plain) == set(checkpointed)
    for name, grad in checkpointed.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, plain[name])


def test_decoder_called_directly_goes_through_adapters(tiny_model):
    model = adapted(tiny_model, "pfeiffer")
    input_ids = make_batch(model)["input_ids"]
    with torch.no_grad():
        before = model.model(input_ids=input_ids).last_hidden_state
        model.model.layers[0].mlp.migaki_adapter.up.bias.fill_(0.5)
        model.train()
        model.eval()  # switching modes keeps the hooks
        after = model.model(input_ids=input_ids).last_hidden_state
    assert not torch.allclose(before, after)


def test_adapters_take_the_dtype_of_their_block(tiny_model):
    model = adapted(tiny_model, dtype=torch.bfloat16)
    assert {p.dtype for p in adapter.adapter_state(model).values()} == {torch.bfloat16}


def test_refuses_other_model_shapes_and_a_second_apply(tiny_model):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(UserError, match=r"GPT2LMHeadModel has no model\.model"):
        adapter.apply(gpt2, MethodConfig(name="adapter"))
    model = adapted(tiny_model)
    with pytest.raises(UserError, match="already has adapters"):
        adapter.apply(model, MethodConfig(name="adapter"))
