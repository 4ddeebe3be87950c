import itertools

import pytest

from migaki.train.schedule import learning_rate, warmup_steps


def test_warmup_then_cosine_to_zero():
    lrs = [learning_rate(s, 100, 10, 1.0, "cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def test_linear_and_constant():
    assert learning_rate(50, 100, 0, 2.0, "linear") == pytest.approx(1.0)
    assert learning_rate(99, 100, 0, 2.0, "constant") == 2.0


def test_warmup_share_or_steps():
    assert warmup_steps(0.1, 200) == 20
    assert warmup_steps(5, 200) == 5
    assert warmup_steps(500, 200) == 200
