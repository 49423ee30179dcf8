"""Milliseconds as messages print them: enough significant digits that small budgets are not "0.00 ms".

A fixed `:.2f` turns a budget of 0.001 ms into "0.00 ms", and a floor of 12.345 ms over a budget of
12.34 ms into two equal-looking numbers. Messages that print latencies use these helpers.
"""

from __future__ import annotations

import math

__all__ = ["format_ms", "format_ms_apart"]

SIGNIFICANT = 3
MAX_SIGNIFICANT = 9


def format_ms(value: float, significant: int = SIGNIFICANT) -> str:
    """`value` with `significant` digits (more left of the point are kept), no exponent, no trailing zeros."""
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    decimals = max(0, significant - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_ms_apart(*values: float) -> list[str]:
    """`values` formatted alike, with more digits where needed so that different values print differently.

    ("12.3 ms is over the budget of 12.3 ms" would help no one.)
    """
    for significant in range(SIGNIFICANT, MAX_SIGNIFICANT + 1):
        texts = [format_ms(v, significant) for v in values]
        if len(set(texts)) == len(set(values)):
            break
    return texts
