"""Tests for replay_middleware.sampling: the SDK's sampling rule (SPEC S1, PROTOCOL §3)."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from replay_middleware.sampling import is_session_in_sample, js_string, session_hash
from replay_middleware.sdk import SDK_VERSION

ROOT = Path(__file__).resolve().parents[1]
SDK_SAMPLING_JS = (
    (ROOT / ".cache" / "npm" / f"session-replay-browser-{SDK_VERSION}" / "package")
    / "lib"
    / "cjs"
    / "sampling.js"
)

# PROTOCOL §3.3: produced by the real SDK 1.51.6 (lib/cjs/sampling.js) under Node 20.
# (session id as passed, String(id), xxHash32, in@0.01, in@0.1, in@0.5)
SDK_VECTORS: list[tuple[int | float | str, str, int, bool, bool, bool]] = [
    (1700000000000, "1700000000000", 1072223047, False, False, True),
    (1700000000001, "1700000000001", 1638570550, False, False, False),
    (1700000000002, "1700000000002", 3120979568, False, False, False),
    (1700000000003, "1700000000003", 3582565480, False, False, False),
    (1700000000004, "1700000000004", 859128587, False, False, True),
    (1700000000005, "1700000000005", 2190151093, False, False, True),
    (1700000000006, "1700000000006", 411646569, False, False, False),
    (1700000000007, "1700000000007", 2317881796, False, False, False),
    (1700000000008, "1700000000008", 685535745, False, False, False),
    (1700000000009, "1700000000009", 16683793, False, False, False),
    (1699922971244, "1699922971244", 3325347034, False, False, True),
    (1735689600000, "1735689600000", 1739001045, True, True, True),
    (0, "0", 1212501170, False, False, False),
    (1, "1", 3068971186, False, False, False),
    (-1, "-1", 602628616, False, False, False),
    (9007199254740991, "9007199254740991", 1940221548, False, False, True),
    (1e21, "1e+21", 2635380570, False, False, True),
    (1.5, "1.5", 3154121854, False, False, True),
    ("1700000000000", "1700000000000", 1072223047, False, False, True),
    ("abc", "abc", 852579327, False, False, False),
    ("héllo", "héllo", 1644681334, False, False, False),
    ("日本語", "日本語", 3366854845, False, False, False),
    ("😀", "😀", 1127825596, False, False, False),
    (
        "a-very-long-session-identifier-1234567890",
        "a-very-long-session-identifier-1234567890",
        250639409,
        False,
        False,
        False,
    ),
]

PARITY_RATES = [0, 0.000001, 0.01, 0.1, 0.128587, 0.5, 0.999999, 1]
# Timestamps whose hash % 1e6 is 0, 1, 999998, 999999: the only ids on which the extreme rates
# 0.000001 and 0.999999 can differ from 0 and 1 (found by a search over consecutive ms).
EDGE_IDS = {1700000347126: 0, 1700000605826: 1, 1700000296698: 999998, 1700001937247: 999999}


@pytest.mark.parametrize(
    ("session_id", "string", "xxh32", "in_001", "in_01", "in_05"),
    [pytest.param(*row, id=f"{i + 1}-{row[1][:20]}") for i, row in enumerate(SDK_VECTORS)],
)
def test_sdk_vector(
    session_id: int | float | str,
    string: str,
    xxh32: int,
    in_001: bool,
    in_01: bool,
    in_05: bool,
) -> None:
    assert js_string(session_id) == string
    assert session_hash(session_id) == xxh32
    assert is_session_in_sample(session_id, 0.01) is in_001
    assert is_session_in_sample(session_id, 0.1) is in_01
    assert is_session_in_sample(session_id, 0.5) is in_05


def test_boundary_is_strictly_less_than() -> None:
    # 1700000000004 hashes to mod 128587 (PROTOCOL §3.1, observed in jsdom).
    assert session_hash(1700000000004) % 1_000_000 == 128587
    assert is_session_in_sample(1700000000004, 0.128587) is False
    assert is_session_in_sample(1700000000004, 0.128588) is True


@pytest.mark.parametrize(("session_id", "mod"), list(EDGE_IDS.items()))
def test_extreme_rates(session_id: int, mod: int) -> None:
    assert session_hash(session_id) % 1_000_000 == mod
    assert is_session_in_sample(session_id, 0.000001) is (mod == 0)
    assert is_session_in_sample(session_id, 0.999999) is (mod != 999999)


def test_number_and_numeric_string_hash_the_same() -> None:
    assert session_hash(1700000000000) == session_hash("1700000000000")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(0, "0", id="zero"),
        pytest.param(-42, "-42", id="negative"),
        pytest.param(2**53, "9007199254740992", id="2**53"),
        pytest.param(2**53 + 1, "9007199254740992", id="2**53+1-rounds-down"),
        pytest.param(2**53 + 3, "9007199254740996", id="2**53+3-ties-to-even"),
        pytest.param(-(2**53) - 1, "-9007199254740992", id="negative-beyond-safe"),
        pytest.param(10**20, "100000000000000000000", id="1e20-plain"),
        pytest.param(10**21 - 1, "1e+21", id="1e21-minus-1-rounds-up"),
        pytest.param(10**21, "1e+21", id="1e21-exponent"),
        pytest.param(-(10**21), "-1e+21", id="-1e21"),
        pytest.param(2**70, "1.1805916207174113e+21", id="2**70"),
        pytest.param(10**400, "Infinity", id="beyond-double-range"),
        pytest.param(-(10**400), "-Infinity", id="beyond-double-range-negative"),
        pytest.param(1.5, "1.5", id="1.5"),
        pytest.param(1.0, "1", id="1.0"),
        pytest.param(-0.0, "0", id="negative-zero"),
        pytest.param(100.0, "100", id="100.0"),
        pytest.param(0.1, "0.1", id="0.1"),
        pytest.param(1e20, "100000000000000000000", id="1e20"),
        pytest.param(1e21, "1e+21", id="1e21"),
        pytest.param(1.5e300, "1.5e+300", id="1.5e300"),
        pytest.param(1e-6, "0.000001", id="1e-6"),
        pytest.param(1.234e-6, "0.000001234", id="1.234e-6"),
        pytest.param(1e-7, "1e-7", id="1e-7"),
        pytest.param(1.2345e-7, "1.2345e-7", id="1.2345e-7"),
        pytest.param(5e-324, "5e-324", id="smallest-denormal"),
        pytest.param(math.nan, "NaN", id="nan"),
        pytest.param(math.inf, "Infinity", id="inf"),
        pytest.param(-math.inf, "-Infinity", id="-inf"),
        pytest.param("", "", id="empty-string"),
        pytest.param(" 1 ", " 1 ", id="string-as-is"),
    ],
)
def test_js_string(value: int | float | str, expected: str) -> None:
    assert js_string(value) == expected


@pytest.mark.parametrize("value", [True, False])
def test_bool_session_id_is_rejected(value: bool) -> None:
    with pytest.raises(TypeError, match="not bool"):
        js_string(value)
    with pytest.raises(TypeError, match="not bool"):
        is_session_in_sample(value, 0.5)


def test_other_session_id_types_are_rejected() -> None:
    with pytest.raises(TypeError, match="not bytes"):
        is_session_in_sample(b"123", 0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [-0.000001, 1.000001, -1, 2, math.nan, math.inf, -math.inf])
def test_rate_outside_range_is_rejected(rate: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1 inclusive"):
        is_session_in_sample(1700000000000, rate)


@pytest.mark.parametrize("rate", [True, "0.5", None])
def test_non_numeric_rate_is_rejected(rate: object) -> None:
    with pytest.raises(TypeError, match="sample_rate must be a number"):
        is_session_in_sample(1700000000000, rate)  # type: ignore[arg-type]


def test_rate_zero_records_nothing_and_one_records_everything() -> None:
    ids = [1700000000000 + i for i in range(200)]
    assert not any(is_session_in_sample(sid, 0) for sid in ids)
    assert all(is_session_in_sample(sid, 1) for sid in ids)
    assert all(is_session_in_sample(sid, 1.0) for sid in ids)


def test_split_surrogate_pair_hashes_as_the_astral_character() -> None:
    # In JS, "\ud83d\ude00" *is* "😀"; a Python str holding the two halves means the same.
    assert session_hash("\ud83d\ude00") == session_hash("😀") == 1127825596


def test_lone_surrogate_hashes_as_three_bytes() -> None:
    import xxhash

    assert session_hash("a\ud800b") == xxhash.xxh32_intdigest(b"a\xed\xa0\x80b", seed=0)


# --- parity with the SDK's own code, run under node --------------------------------------------

_NODE_DRIVER = r"""
'use strict';
const sampling = require(process.argv[2]);
const chunks = [];
process.stdin.on('data', (c) => chunks.push(c));
process.stdin.on('end', () => {
  const { rates, inputs } = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const specials = { NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity };
  const out = inputs.map(([kind, raw]) => {
    const sid = kind === 'x' ? specials[raw] : raw;  // 'n' numbers and 's' strings as parsed
    const str = String(sid);
    const bits = rates.map((r) => (sampling.isSessionInSample(sid, r) ? '1' : '0')).join('');
    return [str, sampling.xxHash32(str), bits];
  });
  process.stdout.write(JSON.stringify(out));
});
"""


def _random_string(rng: random.Random) -> str:
    kind = rng.randrange(6)
    length = rng.choice([0, 1, 2, 3, 4, 5, 7, 15, 16, 17, 31, 32, 33, rng.randrange(1, 80)])
    if kind == 0:  # printable ASCII
        return "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(length))
    if kind == 1:  # BMP, surrogates excluded
        return "".join(
            chr(rng.choice([rng.randrange(0x80, 0xD800), rng.randrange(0xE000, 0x10000)]))
            for _ in range(length)
        )
    if kind == 2:  # astral characters mixed with ASCII
        return "".join(
            chr(rng.randrange(0x10000, 0x110000)) if rng.random() < 0.5 else rng.choice("ab9-")
            for _ in range(length)
        )
    if kind == 3:  # lone surrogates (high, low, reversed pairs) among other characters
        pool = [0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0xD83D, 0xDE00, 0x61, 0xE9, 0x65E5]
        return "".join(chr(rng.choice(pool)) for _ in range(length or 1))
    if kind == 4:  # UUID-like identifiers
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return str(rng.randrange(1_500_000_000_000, 2_100_000_000_000))  # numeric strings


def _random_float(rng: random.Random) -> float:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.uniform(-1e6, 1e6)
    if kind == 1:
        return math.copysign(math.pow(10, rng.uniform(-30, 30)), rng.random() - 0.5)
    if kind == 2:
        return float(rng.randrange(-(10**6), 10**6))  # integral floats print without ".0"
    if kind == 3:
        return rng.randrange(1, 10**6) / 10.0 ** rng.randrange(1, 9)
    return rng.uniform(1.5e12, 2.1e12)  # a timestamp with a fractional part


def _parity_inputs(rng: random.Random) -> list[int | float | str]:
    inputs: list[int | float | str] = []
    inputs += [rng.randrange(1_500_000_000_000, 2_100_000_000_000) for _ in range(1500)]
    inputs += [rng.randrange(-1000, 1001) for _ in range(300)]
    inputs += [rng.randrange(-(2**53), 2**53) for _ in range(200)]
    inputs += [2**53 + rng.randrange(-5, 100) for _ in range(100)]
    inputs += [rng.randrange(2**53, 2**80) * rng.choice([1, -1]) for _ in range(200)]
    inputs += [10**21 + rng.randrange(-(10**7), 10**7) for _ in range(50)]
    inputs += [rng.randrange(10**21, 10**40) * rng.choice([1, -1]) for _ in range(100)]
    inputs += list(EDGE_IDS) + [str(sid) for sid in EDGE_IDS]
    inputs += [0, -0, 1, -1, 2**53, 2**53 + 1, 10**21, 10**21 - 1, -(10**21), 10**309, -(10**309)]
    inputs += [_random_float(rng) for _ in range(800)]
    inputs += [0.0, -0.0, 1.0, 1.5, 0.1, 1e21, 1e20, 1e-6, 1e-7, 5e-324, 1.7976931348623157e308]
    inputs += [math.nan, math.inf, -math.inf]
    inputs += [_random_string(rng) for _ in range(1900)]
    inputs += ["", "\ud800", "\udc00", "\udc00\ud800", "\ud83d\ude00", "😀", "日本語", "héllo"]
    return inputs


def _encode_for_node(value: int | float | str) -> list[object]:
    if isinstance(value, str):
        return ["s", value]  # json.dumps escapes lone surrogates as \udXXX, which JS reads back
    if isinstance(value, float) and not math.isfinite(value):
        return ["x", js_string(value)]
    return ["n", value]  # Python ints are written in full; JSON.parse rounds them like JS does


def _js_units(text: str) -> bytes:
    """A string's UTF-16 code units: equal iff the two strings are the same JS string."""
    return text.encode("utf-16-le", "surrogatepass")


def test_parity_with_sdk_sampling_js_under_node(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: the parity test runs the SDK under node; run `make setup`")
    if not SDK_SAMPLING_JS.is_file():
        pytest.fail(f"{SDK_SAMPLING_JS} is missing: run `make setup` to fetch the SDK package")

    inputs = _parity_inputs(random.Random(20261126))
    assert len(inputs) >= 5000
    driver = tmp_path / "driver.js"
    driver.write_text(_NODE_DRIVER, encoding="utf-8")
    payload = json.dumps({"rates": PARITY_RATES, "inputs": [_encode_for_node(v) for v in inputs]})
    completed = subprocess.run(
        [node, str(driver), str(SDK_SAMPLING_JS)],
        input=payload.encode("ascii"),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode("utf-8", "replace")
    results = json.loads(completed.stdout)
    assert len(results) == len(inputs)

    mismatches = []
    for value, (js_str, js_hash, js_bits) in zip(inputs, results, strict=True):
        py_str, py_hash = js_string(value), session_hash(value)
        py_bits = "".join("1" if is_session_in_sample(value, r) else "0" for r in PARITY_RATES)
        if (_js_units(py_str), py_hash, py_bits) != (_js_units(js_str), js_hash, js_bits):
            mismatches.append((value, py_str, js_str, py_hash, js_hash, py_bits, js_bits))
    assert mismatches == [], f"{len(mismatches)} of {len(inputs)} differ, first: {mismatches[:5]}"
    # The inputs must exercise both outcomes at every rate but 0 and 1 (EDGE_IDS make the
    # extreme ones vary), or the comparison proves little.
    for column, rate in enumerate(PARITY_RATES[1:-1], start=1):
        outcomes = {bits[column] for _, _, bits in results}
        assert outcomes == {"0", "1"}, f"rate {rate} never varied"
