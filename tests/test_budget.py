import pytest

from voxgraph.budget import AudioBudget
from voxgraph.errors import ServiceUnavailable


def test_budget_admits_until_full_and_releases():
    b = AudioBudget(100)
    with b.hold(60):
        with b.hold(40):
            assert b.in_use_s == 100
            with pytest.raises(ServiceUnavailable, match="busy with"), b.hold(1):
                pass
        assert b.in_use_s == 60
    assert b.in_use_s == 0


def test_idle_budget_admits_one_oversized_request():
    b = AudioBudget(10)
    with b.hold(50):
        assert b.in_use_s == 50
    assert b.in_use_s == 0


def test_budget_released_on_error():
    b = AudioBudget(10)
    with pytest.raises(RuntimeError), b.hold(5):
        raise RuntimeError("model failed")
    assert b.in_use_s == 0
