"""Milliseconds in messages: small budgets keep their digits, and different values never print alike."""

from __future__ import annotations

import pytest

from search.units import format_ms, format_ms_apart


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0.001, "0.001"), (0.0001, "0.0001"), (0.01234, "0.0123"), (1.5, "1.5"), (12.345, "12.3"), (250.0, "250")],
)
def test_milliseconds_keep_three_significant_digits(ms, text):
    assert format_ms(ms) == text


def test_large_values_keep_their_whole_digits_without_an_exponent():
    assert format_ms(1234.5) in ("1234", "1235") and format_ms(0) == "0"


def test_different_values_print_differently():
    assert format_ms_apart(12.341, 12.34) == ["12.341", "12.34"]
    assert format_ms_apart(0.0537, 0.001) == ["0.0537", "0.001"]
    assert format_ms_apart(5.0, 5.0) == ["5", "5"]
