"""Sans-IO: the Session Replay SDK's sampling rule, reproduced exactly on the server (SPEC S1).

Use :func:`is_session_in_sample` to decide server-side whether a session is recorded, so that
unsampled visitors get no SDK bytes at all (SPEC D2) while the browser SDK, running the same rule
on the same session id, agrees.

The rule is the one in ``@amplitude/session-replay-browser`` 1.35.0 and later (PROTOCOL §3.1,
SR ``src/sampling.ts``)::

    hash = xxHash32(utf8(String(sessionId)), seed=0)          # unsigned 32-bit
    inSample = (hash % 1_000_000) / 1_000_000 < sampleRate     # strict <, IEEE double division

``String(sessionId)`` is JavaScript's conversion, which differs from Python's ``str()`` for
numbers; :func:`js_string` reproduces it so that any id the SDK could be given hashes the same.
"""

from __future__ import annotations

import math
from decimal import Decimal

import xxhash

__all__ = ["is_session_in_sample", "js_string", "session_hash"]

# The SDK reduces the hash modulo one million, so rates have at most 6 useful decimals.
_SAMPLE_MODULUS = 1_000_000

# Integers up to 2**53 are exact doubles, and below 1e21 JS prints them in plain digits
# (ECMA-262 Number::toString, step "k ≤ n ≤ 21"): for those, str() already is String().
_MAX_SAFE_INTEGER = 2**53


def js_string(value: int | float | str) -> str:
    """Return what JavaScript's ``String(value)`` gives for the equivalent JS value.

    - ``str``: returned as is.
    - ``int``: first rounded to the nearest IEEE double, as JS does when it parses the number
      (``2**53 + 1`` → ``"9007199254740992"``); then formatted like a JS number, so
      ``10**21`` → ``"1e+21"`` and ints beyond the double range → ``"Infinity"``.
    - ``float``: ``Number.prototype.toString()``: ``1.0`` → ``"1"``, ``1.5`` → ``"1.5"``,
      ``1e21`` → ``"1e+21"``, ``1e-7`` → ``"1e-7"``, ``-0.0`` → ``"0"``, ``nan`` → ``"NaN"``,
      ``inf`` → ``"Infinity"``.

    Raises ``TypeError`` for ``bool`` (a JS ``true`` is never a session id, and Python's
    ``True == 1`` would silently hash as ``"1"``) and for any other type.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise TypeError("session id must be an int, float or str, not bool")
    if isinstance(value, int):
        if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            return str(value)
        try:
            as_double = float(value)  # correctly rounded, ties to even: same as JS parsing
        except OverflowError:
            return "Infinity" if value > 0 else "-Infinity"
        return _js_number_to_string(as_double)
    if isinstance(value, float):
        return _js_number_to_string(value)
    raise TypeError(f"session id must be an int, float or str, not {type(value).__name__}")


def _js_number_to_string(x: float) -> str:
    """ECMA-262 ``Number::toString(x)`` with radix 10 (§6.1.6.1.20)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"  # also for -0
    if x < 0:
        return "-" + _js_number_to_string(-x)
    # repr() gives the shortest digit string that round-trips, choosing the closest when
    # several have that length: the same digits ECMA-262 asks for (k as small as possible).
    _sign, digit_tuple, exponent = Decimal(repr(x)).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    assert isinstance(exponent, int)  # finite: not 'n'/'N'/'F' (NaN and inf returned above)
    k = len(digits)
    # x = 0.<digits> × 10**n, i.e. digits × 10**(n - k)
    n = exponent + len(digit_tuple)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = n - 1
    exp = f"e{'+' if e >= 0 else '-'}{abs(e)}"
    if k == 1:
        return digits + exp
    return digits[0] + "." + digits[1:] + exp


def _utf8(text: str) -> bytes:
    """UTF-8 as the SDK's ``toUTF8Bytes`` makes it from a UTF-16 string.

    Surrogate pairs become one 4-byte sequence; a lone surrogate becomes 3 bytes (what
    ``surrogatepass`` does). A Python ``str`` holding a surrogate *pair* as two code points is,
    seen from JS, the astral character, so pairs are joined first.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return joined.encode("utf-8", "surrogatepass")


def session_hash(session_id: int | float | str) -> int:
    """The SDK's ``xxHash32(String(sessionId))``, seed 0, as an unsigned 32-bit int."""
    return xxhash.xxh32_intdigest(_utf8(js_string(session_id)), seed=0)


def is_session_in_sample(session_id: int | float | str, sample_rate: float) -> bool:
    """Whether the SDK records ``session_id`` at ``sample_rate`` (SPEC S1, PROTOCOL §3.1).

    ``session_id`` is what the browser SDK is given as ``sessionId``: normally the session's
    start time in ms since the epoch (an int), or a string. ``sample_rate`` must be within
    0..1 inclusive: 0 records nothing, 1 records every session. Note that the rule alone does
    not decide recording: the SDK never records a falsy session id (``0``, ``""``) and obeys
    the remote config first (PROTOCOL §3.4); that is the decision's job, not this function's.

    Raises ``ValueError`` for a rate outside 0..1 (or NaN), ``TypeError`` for a non-numeric
    rate or a session id that is not an int, float or str.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)):
        raise TypeError(f"sample_rate must be a number in 0..1, not {type(sample_rate).__name__}")
    if not 0 <= sample_rate <= 1:  # also rejects NaN
        raise ValueError(f"sample_rate must be between 0 and 1 inclusive, got {sample_rate!r}")
    if sample_rate == 0 or sample_rate == 1:
        # h / M is in [0, 1): below 1 always, below 0 never; the hash cannot change that
        # (the session id is still checked, so the errors below are the same).
        js_string(session_id)
        return sample_rate == 1
    # int / int true division is correctly rounded, like JS's double division of two exact
    # doubles (both operands are < 2**53), so the comparison is bit-for-bit the SDK's.
    return session_hash(session_id) % _SAMPLE_MODULUS / _SAMPLE_MODULUS < sample_rate
