"""One grammar for every number natra-sim reads: the CNI side's, reused.

Owns: the argparse types of natra-sim's options, built on the parsers the
CNI plugin uses for the same knobs, so a value means the same thing in a
Pod annotation, `natra-sim replay` and `natra-sim sweep`:
  * rates: a Kubernetes quantity of bit/s, as containerd reads
    `kubernetes.io/*-bandwidth` ('100M', '1Gi', '1e9'; natra.cni.quantity);
  * sizes: a quantity of bytes ('125k', '64Ki', '1e6'), a whole number;
  * durations: Go duration text ('100ms', '1.5s', '1m30s'; natra.cni.tuning's
    reader), always with a unit;
  * shares: a size, or a percentage spelled with '%' ('1%': of the window's
    volume for thresholds, of the burst for reserves), never a bare number
    that could be either;
  * counts: whole numbers, optionally as quantities ('4Ki'), within bounds.
Rule: every bad value is an argparse.ArgumentTypeError whose message is one
line naming the option's grammar; nothing here raises anything else.
Must not know: what the values are used for beyond their bounds.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from fractions import Fraction

from natra.cni.quantity import QuantityError, parse_bandwidth, parse_quantity
from natra.cni.tuning import TuningError, read_duration

DEFAULT = "default"  # list value: Natra's own rule (natra/kernel/params.py)
MAX_SIZE_BYTES = 1 << 50  # 1 PiB: anything larger is a typo, and keeps float maths exact enough
MAX_COUNT = 1 << 40
NS_PER_SEC = 1_000_000_000


def _fail(what: str, text: str, grammar: str) -> argparse.ArgumentTypeError:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return argparse.ArgumentTypeError(f"{what} {shown!r}: {grammar}")


def rate(text: str) -> int:
    """bit/s: '100M', '1Gi', '1e9' (1k .. 1P, as containerd accepts)."""
    try:
        return parse_bandwidth(text)
    except QuantityError as e:
        raise _fail("rate", text, f"{e}; a rate is bit/s as a quantity like 100M, 1G, 1Gi or 1e9") from None


def _quantity(text: str) -> Fraction | None:
    try:
        return parse_quantity(text)
    except (QuantityError, ValueError, OverflowError):
        return None


def size(text: str, *, minimum: int = 1, maximum: int = MAX_SIZE_BYTES, what: str = "size") -> int:
    """A whole number of bytes (or bits, where the option says so): '125k', '64Ki', '1e6'."""
    value = _quantity(text)
    grammar = f"a whole number in {minimum}..{maximum} as a quantity like 125k, 64Ki or 1e6"
    if value is None or value.denominator != 1 or not minimum <= value <= maximum:
        raise _fail(what, text, grammar)
    return int(value)


def duration_ns(text: str, *, minimum_ns: int = 1, maximum_ns: int = 3600 * NS_PER_SEC,
                what: str = "duration") -> int:
    """ns from '100ms', '1.5s', '2m' (a unit is required; plain numbers are refused)."""
    grammar = "a duration with a unit like 100ms, 1.5s or 2m"
    try:
        ns = read_duration(text, what)
    except (TuningError, ValueError, OverflowError):
        raise _fail(what, text, grammar) from None
    if not minimum_ns <= ns <= maximum_ns:
        raise _fail(what, text, f"{grammar}, between {format_ns(minimum_ns)} and {format_ns(maximum_ns)}")
    return ns


def format_ns(ns: int) -> str:
    for unit, scale in (("s", NS_PER_SEC), ("ms", 10**6), ("us", 10**3)):
        if ns >= scale:
            return f"{ns / scale:g}{unit}"
    return f"{ns}ns"


def count(text: str, *, minimum: int = 1, maximum: int = MAX_COUNT, what: str = "count") -> int:
    """A whole number in [minimum, maximum]: '1024', '4Ki', '1e4'."""
    value = _quantity(text)
    if value is None or value.denominator != 1 or not minimum <= value <= maximum:
        raise _fail(what, text, f"a whole number in {minimum}..{maximum}")
    return int(value)


def power_of_two(text: str, *, maximum: int, what: str = "width") -> int:
    n = count(text, minimum=1, maximum=maximum, what=what)
    if n & (n - 1):
        raise _fail(what, text, f"a power of two in 1..{maximum}")
    return n


def number(text: str, *, minimum: float = 0.0, maximum: float = math.inf, what: str = "value",
           open_below: bool = False) -> float:
    """A finite decimal number ('0.6', '1.2', '5e-3') in bounds."""
    value = _quantity(text)
    low_ok = value is not None and (value > minimum if open_below else value >= minimum)
    if value is None or not low_ok or value > maximum:
        bound = f"> {minimum:g}" if open_below else f">= {minimum:g}"
        upper = f" and <= {maximum:g}" if math.isfinite(maximum) else ""
        raise _fail(what, text, f"a number {bound}{upper}")
    return float(value)


@dataclass(frozen=True)
class Share:
    """A size in bytes or a percentage (of the window's volume, of the burst)."""

    percent: float | None = None
    bytes: int | None = None

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else f"{self.bytes}"


def share(text: str, *, what: str, of: str, max_percent: float = 100.0, minimum_bytes: int = 1) -> Share:
    """'1%' (of `of`) or a size ('125k', '64Ki'); a bare number is bytes. 0 % only where 0 bytes is."""
    if text.endswith("%"):
        value = _quantity(text[:-1])
        low_ok = value is not None and (value >= 0 if minimum_bytes == 0 else value > 0)
        if not low_ok or value > max_percent:
            low = "[0" if minimum_bytes == 0 else "(0"
            raise _fail(what, text, f"a percentage in {low}, {max_percent:g}]% of {of}, or bytes like 125k")
        return Share(percent=float(value))
    value = _quantity(text)
    if value is None or value.denominator != 1 or not minimum_bytes <= value <= MAX_SIZE_BYTES:
        raise _fail(what, text, f"bytes >= {minimum_bytes} like 125k or 64Ki, or a percentage of {of} "
                                f"like 1%")
    return Share(bytes=int(value))


def listed(parse, *, allow_default: bool = False):
    """An argparse type for a comma list of `parse` values ('default' too, as None, if allowed)."""

    def parse_list(text: str) -> list:
        items = [item.strip() for item in text.split(",")]
        if not text.strip() or any(not item for item in items):
            raise argparse.ArgumentTypeError(f"{text!r}: an empty item in a comma list")
        out = []
        for item in items:
            if allow_default and item == DEFAULT:
                out.append(None)
            else:
                out.append(parse(item))
        return list(dict.fromkeys(out))  # a repeated value is one grid point

    return parse_list


def bounded(parse, **bounds):
    """`parse` with keyword bounds fixed, for argparse's `type=`."""

    def parse_one(text: str):
        return parse(text, **bounds)

    parse_one.__name__ = getattr(parse, "__name__", "value")
    return parse_one
