"""Kubernetes quantity grammar and containerd's bandwidth bounds."""

import re
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natra.cni.quantity import (
    BINARY_SI,
    DECIMAL_SI,
    QuantityError,
    parse_bandwidth,
    parse_quantity,
)


@pytest.mark.parametrize("text, value", [
    ("10M", 10_000_000), ("10Mi", 10_485_760), ("10m", Fraction(1, 100)), ("1k", 1000),
    ("1Ki", 1024), ("1.5Gi", 1_610_612_736), ("1e3", 1000), ("1E3", 1000), ("1E", 10**18),
    ("2e+3", 2000), ("1e-3", Fraction(1, 1000)), ("+.5k", 500), ("1.", 1), ("-1", -1),
    ("100n", Fraction(1, 10**7)), ("5u", Fraction(5, 10**6)), ("0", 0), ("1P", 10**15),
    ("0.1", Fraction(1, 10)), ("007", 7), ("1Ei", 2**60),
])
def test_valid_quantities(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", [
    "10K", "1KiB", " 1", "1 ", "", ".", "e3", "1e", "1.5.3", "1Mi3", "1ki", "1mi", "M", "1MM",
    "1e1.5", "--1", "1,000", "1_000", "0x10", "1b", "1 M", "+", "1e+", "١",
])
def test_invalid_quantities(text):
    with pytest.raises(QuantityError):
        parse_quantity(text)


def test_non_string_is_refused():
    with pytest.raises(QuantityError):
        parse_quantity(10)


@pytest.mark.parametrize("text, bps", [("1k", 1000), ("10M", 10_000_000), ("1P", 10**15),
                                       ("1000", 1000), ("1.0001k", 1001), ("10Mi", 10_485_760)])
def test_bandwidth_in_bounds_rounds_up(text, bps):
    assert parse_bandwidth(text) == bps


@pytest.mark.parametrize("text, message", [
    ("999", "unreasonably small"), ("10m", "unreasonably small"), ("-10M", "unreasonably small"),
    ("1001T", "unreasonably large"), ("1Pi", "unreasonably large"), ("2P", "unreasonably large"),
])
def test_bandwidth_out_of_bounds(text, message):
    with pytest.raises(QuantityError, match=message):
        parse_bandwidth(text)


suffixes = st.sampled_from(sorted(DECIMAL_SI) + sorted(BINARY_SI))


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**6),
       st.integers(min_value=0, max_value=6), suffixes, st.sampled_from(["", "+", "-"]))
def test_decimal_and_suffix_are_exact(whole, frac, frac_digits, suffix, sign):
    fraction_text = str(frac).zfill(frac_digits)[:frac_digits] if frac_digits else ""
    number = f"{whole}.{fraction_text}" if frac_digits else str(whole)
    expected = Fraction(number) * (DECIMAL_SI.get(suffix) or BINARY_SI.get(suffix))
    if sign == "-":
        expected = -expected
    assert parse_quantity(f"{sign}{number}{suffix}") == expected


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=-30, max_value=30),
       st.sampled_from("eE"))
def test_exponent_form(mantissa, exponent, letter):
    assert parse_quantity(f"{mantissa}{letter}{exponent}") == mantissa * Fraction(10) ** exponent


@given(st.text(alphabet="0123456789.eEiKkMGTPnumb+- ", max_size=8))
def test_never_crashes_and_agrees_with_grammar(text):
    """Any text either parses to an exact value or raises QuantityError, nothing else."""
    try:
        value = parse_quantity(text)
    except QuantityError:
        return
    assert isinstance(value, Fraction)
    # Upper-case K exists only in the binary suffix Ki ("0Ki" is a quantity).
    assert re.search("K(?!i)", text) is None and " " not in text
