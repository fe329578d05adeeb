import pytest

from voxgraph.budget import AudioBudget
from voxgraph.errors import ServiceUnavailable


def test_budget_admits_until_full_and_releases():
    b = AudioBudget(100)
    with b.reserve(60):
        with b.reserve(40):
            assert b.in_use_s == 100
            with pytest.raises(ServiceUnavailable, match="busy with"), b.reserve(1):
                pass
        assert b.in_use_s == 60
    assert b.in_use_s == 0


def test_idle_budget_admits_one_oversized_request():
    b = AudioBudget(10)
    with b.reserve(50):
        assert b.in_use_s == 50
    assert b.in_use_s == 0


def test_budget_released_on_error():
    b = AudioBudget(10)
    with pytest.raises(RuntimeError), b.reserve(5):
        raise RuntimeError("model failed")
    assert b.in_use_s == 0


def test_estimate_corrected_to_the_decoded_length():
    b = AudioBudget(100)
    with b.reserve(90) as r:
        r.resize(30)  # the upload declared nothing; decoding found 30 s
        assert b.in_use_s == 30
        with b.reserve(70):  # fits only because the estimate shrank
            assert b.in_use_s == 100
    assert b.in_use_s == 0


def test_growth_past_the_estimate_is_released_in_full():
    b = AudioBudget(100)
    with b.reserve(10) as r:
        r.resize(25)
        assert b.in_use_s == 25
    assert b.in_use_s == 0
