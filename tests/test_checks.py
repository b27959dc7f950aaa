"""The shared argument checks: one rule for bools, NumPy integers and bounds everywhere."""

import numpy as np
import pytest

from keras_topomap import checks


def test_integers_accept_numpy_and_refuse_bool_and_float():
    assert checks.positive_int(np.int64(3), "n") == 3
    assert type(checks.positive_int(np.int32(3), "n")) is int
    for bad in (True, False, np.bool_(True), 3.0, "3", None, 0, -1):
        with pytest.raises(ValueError, match=r"n must be an integer >= 1\. Received: n="):
            checks.positive_int(bad, "n")
    assert checks.positive_int(None, "n", allow_none=True) is None
    assert checks.non_negative_int(0, "n") == 0


def test_integer_bounds_odd_and_owner_in_message():
    assert checks.odd_int(5, "size", minimum=3) == 5
    with pytest.raises(ValueError, match=r"size must be an odd integer >= 3\. Received: size=4"):
        checks.odd_int(4, "size", minimum=3)
    message = r"^Thing: k must be an integer in \[0, 2\]\. Received: k=3$"
    with pytest.raises(ValueError, match=message):
        checks.integer(3, "k", minimum=0, maximum=2, owner="Thing")


def test_numbers_refuse_bool_nan_inf_and_out_of_range():
    assert checks.number(np.float32(0.5), "x") == 0.5
    assert checks.fraction(0, "rate") == 0.0
    for bad in (True, float("nan"), float("inf"), "0.5", None):
        with pytest.raises(ValueError, match="x must be a finite number"):
            checks.number(bad, "x")
    with pytest.raises(ValueError, match=r"rate must be a finite number >= 0 and < 1\. Received"):
        checks.fraction(1.0, "rate")
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0\. Received: lr=0"):
        checks.positive_number(0, "lr")
    assert checks.positive_number(None, "lr", allow_none=True) is None


def test_choice_does_not_confuse_bool_with_int():
    assert checks.choice("mean", "reduction", ("sum", "mean")) == "mean"
    assert checks.choice(True, "flag", (True, False, "auto")) is True
    with pytest.raises(ValueError, match=r"mode must be one of \[1, 2\]\. Received: mode=True"):
        checks.choice(True, "mode", (1, 2))
    with pytest.raises(ValueError, match="one of"):
        checks.choice(np.zeros(3), "mode", ("a",))


def test_callers_share_the_rules():
    """Modules that used to disagree now refuse ``True`` and accept NumPy integers alike."""
    from keras_topomap import ctc, grid, receptive_field

    with pytest.raises(ValueError, match="stride must be an integer"):
        ctc.output_lengths(10, stride=True)
    assert ctc.output_lengths(10, stride=np.int64(2)) == 5
    with pytest.raises(ValueError, match="size must be an odd integer"):
        grid.smooth(np.zeros((3, 3)), size=True)
    with pytest.raises(ValueError, match="n_frames must be an integer >= 1"):
        receptive_field.receptive_fields(None, n_frames=True)
