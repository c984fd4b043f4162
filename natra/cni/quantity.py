"""Kubernetes resource quantities, parsed exactly as the apiserver and runtimes do.

Owns: the Quantity grammar (signed decimal number, then one suffix: decimal SI
n u m "" k M G T P E, binary Ki Mi Gi Ti Pi Ei, or a decimal exponent e/E with
a signed integer) and the bandwidth rule containerd applies to
`kubernetes.io/*-bandwidth` (a whole number of bit/s in [1k, 1P], rounded up).
Rule: exact arithmetic only (Fraction); anything the grammar does not allow,
such as an uppercase `K`, `KiB` or surrounding spaces, is an error.
Must not know: CNI, annotations, the data path.
"""

from __future__ import annotations

import re
from fractions import Fraction
from math import ceil

DECIMAL_SI = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
}
BINARY_SI = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}

# A number: digits, digits., .digits or digits.digits, with an optional sign.
_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_QUANTITY = re.compile(rf"(?P<number>{_NUMBER})(?P<suffix>[eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)")
# Kubernetes keeps quantity text short; an exponent this large is not a bandwidth.
MAX_EXPONENT = 1000

# containerd (and kubelet before it) refuse bandwidths outside these bounds.
MIN_BANDWIDTH_BPS = 1000  # 1k: "resource is unreasonably small (< 1kbit)"
MAX_BANDWIDTH_BPS = 10**15  # 1P: "resource is unreasonably large (> 1Pbit)"


class QuantityError(ValueError):
    """Text that is not a Kubernetes quantity, or a bandwidth out of bounds."""


# Kubernetes' own parser keeps at most 18 significant digits (int64); a few
# hundred is already beyond any rate; Python refuses ints over 4300 digits.
MAX_DIGITS = 256


def parse_quantity(text: str) -> Fraction:
    """The exact value of a quantity string: '10M' -> 10000000, '10m' -> 1/100."""
    if not isinstance(text, str):
        raise QuantityError(f"quantity must be a string, not {type(text).__name__}")
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise QuantityError(f"quantities must match the regular expression "
                            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}")
    number, suffix = match["number"], match["suffix"]
    if len(number) > MAX_DIGITS:
        raise QuantityError(f"quantity has {len(number)} digits, more than {MAX_DIGITS}")
    try:
        value = Fraction(number.lstrip("+"))  # Fraction reads '1.', '.5' and '-3' exactly
    except ValueError as exc:  # '1.2.3' matches the grammar's character class
        raise QuantityError(f"not a number: {text!r}") from exc
    if suffix in DECIMAL_SI:
        return value * DECIMAL_SI[suffix]
    if suffix in BINARY_SI:
        return value * BINARY_SI[suffix]
    exponent = int(suffix[1:])
    if abs(exponent) > MAX_EXPONENT:
        raise QuantityError(f"exponent of {text!r} is out of range")
    return value * Fraction(10) ** exponent


def parse_bandwidth(text: str) -> int:
    """bit/s from a bandwidth annotation, as containerd reads it: rounded up, in [1k, 1P]."""
    value = parse_quantity(text)
    bps = ceil(value)
    if bps < MIN_BANDWIDTH_BPS:
        raise QuantityError("resource is unreasonably small (< 1kbit)")
    if bps > MAX_BANDWIDTH_BPS:
        raise QuantityError("resource is unreasonably large (> 1Pbit)")
    return bps
