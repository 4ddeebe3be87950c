"""The int8 screen of a float32 LM head picks what the float32 product picks: the argmax, the
first index on a tie, whatever int8 can or cannot tell apart."""

import pytest
import torch

from migaki.evaluate import lm_head
from migaki.evaluate.lm_head import (
    ScreenedHead,
    exact_int8_products,
    greedy_tokens,
    levels_for,
    screen_for,
)

ROWS = 20_000  # three blocks of rows with their own scales
pytestmark = pytest.mark.usefixtures("exact_int8")


def linear(weight: torch.Tensor, bias: bool = False) -> torch.nn.Linear:
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    head.weight = torch.nn.Parameter(weight, requires_grad=False)
    return head


def random_head(dim: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(ROWS, dim, generator=generator) * 0.05
    weight[::7] *= 4  # rows of several sizes, as a trained head has
    return weight


def test_the_screen_picks_the_float32_argmax_with_outlier_channels():
    weight = random_head()
    states = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1)) * 4
    states[..., 5] = 150.0  # an outlier channel, as Gemma 3's final states have
    states[0, 1, 9] = -300.0
    screen = ScreenedHead(linear(weight))
    expected = (states @ weight.T).argmax(dim=-1)
    assert torch.equal(screen.greedy(states), expected)
    assert torch.equal(screen.greedy(states), greedy_tokens(linear(weight), states))
    assert screen.greedy(states[0, 0]).shape == ()  # one position, as greedy_tokens takes it
    assert screen.fallbacks == 0


def test_rows_int8_cannot_tell_apart_are_settled_in_float32_the_first_index_on_a_tie():
    weight = random_head()
    generator = torch.Generator().manual_seed(2)
    states = torch.randn(6, 64, generator=generator)
    direction = states[0] / states[0].norm()
    weight[[17_000, 500, 9_000]] = direction * 3.0  # far ahead of every other row for 0
    weight[500] *= 1 + 1e-5  # ahead of the two others by far less than an int8 step
    other = states[1] / states[1].norm()
    weight[[18_000, 600]] = other * 3.0  # an exact tie for position 1
    # 300 rows closer to each other than int8 rounds: its order of them is all but random,
    # so its first would rarely be float32's for the positions 2 to 5 that they lead.
    crowd = torch.randperm(ROWS, generator=generator)[:300]
    crowd = crowd[(crowd != 500) & (crowd != 600)]
    near = states[2:].mean(dim=0)
    noise = torch.randn(len(crowd), 64, generator=generator) * 3e-3
    weight[crowd] = near / near.norm() * 3.0 + noise
    screen = ScreenedHead(linear(weight))
    picks = screen.greedy(states)
    expected = (states @ weight.T).argmax(dim=-1)
    assert picks[:2].tolist() == [500, 600] and torch.equal(picks, expected)
    assert torch.equal(picks, greedy_tokens(linear(weight), states))
    assert screen.fallbacks == 0


def test_a_state_that_is_not_finite_is_picked_in_float32():
    weight = random_head()
    states = torch.randn(4, 64)
    states[2, 3] = float("nan")
    screen = ScreenedHead(linear(weight))
    assert torch.equal(screen.greedy(states), greedy_tokens(linear(weight), states))
    assert screen.fallbacks == 1


@pytest.mark.parametrize("dim", [640, 4096])
def test_wide_states_at_full_scale_stay_inside_int32(dim):
    levels = levels_for(dim)
    assert 127 * dim * (127 * levels + levels // 2) <= 2**31 - 1
    assert levels >= 32
    weight = torch.full((3 * 8192 + 5, dim), 0.01)  # every code 127 or -127: sums at their largest
    weight[::2] *= -1
    weight[12_345] = 0.0101
    weight[20_000, 0] = 0.0
    states = torch.full((2, dim), 3.0)
    states[1] *= -1
    picks = ScreenedHead(linear(weight)).greedy(states)
    assert picks.tolist() == (states @ weight.T).argmax(dim=-1).tolist() == [12_345, 0]


def test_a_screen_only_for_a_large_float32_head_and_kept_while_its_weight_is_unchanged(
    monkeypatch,
):
    head = linear(torch.randn(300, 16))
    assert screen_for(head) is None  # small: float32 is cheap
    monkeypatch.setattr(lm_head, "SCREEN_MIN_ROWS", 100)
    screen = screen_for(head)
    assert isinstance(screen, ScreenedHead) and screen_for(head) is screen
    with torch.no_grad():
        head.weight[0] += 1
    assert screen_for(head) is not screen  # a changed weight gets a new copy
    assert screen_for(linear(torch.randn(300, 16), bias=True)) is None
    assert screen_for(linear(torch.randn(300, 16).bfloat16())) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert screen_for(linear(torch.randn(300, 16))) is None
    assert screen_for(None) is None
    assert levels_for(70_000) == 0  # no int8 sum this wide fits int32


def test_int8_products_that_saturate_are_found_and_keep_the_head_in_float32(monkeypatch):
    def saturating(left, right):
        """oneDNN on AVX2 without VNNI: states shifted to u8 (+128), products of pairs summed
        in int16 with saturation, the shift's share taken off after."""
        shifted = left.long() + 128
        pairs = (shifted[:, :, None] * right.long()[None]).reshape(
            left.shape[0], left.shape[1] // 2, 2, right.shape[1]
        )
        sums = pairs.sum(dim=2).clamp(-(2**15), 2**15 - 1).sum(dim=1)
        return (sums - 128 * right.long().sum(dim=0)).int()

    monkeypatch.setattr(torch, "_int_mm", saturating)
    assert exact_int8_products.__wrapped__() is False
    monkeypatch.setattr(lm_head, "exact_int8_products", exact_int8_products.__wrapped__)
    monkeypatch.setattr(lm_head, "SCREEN_MIN_ROWS", 100)
    assert screen_for(linear(torch.randn(300, 16))) is None
