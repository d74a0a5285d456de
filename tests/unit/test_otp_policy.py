"""The OTP policy, tested directly: no Faust, no Kafka."""

import hashlib
import hmac
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core import keys, otp
from app.core.otp import OtpPolicy, OtpRecord, Outcome, RateLimited, Status

SECRET = b"test-secret-test-secret"
POLICY = OtpPolicy(length=6, ttl_seconds=60, max_attempts=5, max_sends=3, send_window_seconds=100)


def issue(previous=None, now=1000.0, channel="MAIL", code=None):
    return otp.issue(
        POLICY,
        SECRET,
        previous,
        identifier="c1",
        channel=channel,
        process_instance_id=7,
        now=now,
        code=code,
    )


def verify(record, code, now=1001.0, channel="MAIL", identifier="c1"):
    return otp.verify(
        POLICY, SECRET, record, identifier=identifier, channel=channel, code=code, now=now
    )


def test_pure_core_imports_no_faust_or_kafka():
    """The policy and rendering modules load without Faust, aiokafka or aiohttp."""
    code = (
        "import sys, app.core.otp, app.core.render, app.core.templates; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'aiokafka', 'aiohttp', 'mode')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_new_code_length_and_alphabet():
    for length in (4, 6, 10):
        policy = OtpPolicy(length=length)
        code = otp.new_code(policy)
        assert len(code) == length and code.isdigit()
    alpha = OtpPolicy(alphabet="23456789ABCDEFGHJKMNPQRSTUVWXYZ")
    assert set(otp.new_code(alpha)) <= set(alpha.alphabet)


CODE_KEY = keys.subkey(SECRET, keys.CODE)


def test_a_derived_code_is_the_same_for_the_same_request_and_fits_the_policy():
    request = ("otp-generate-in/3/1041", 1733050000.123, "c1", "MAIL")
    code = otp.derive_code(CODE_KEY, POLICY, request)
    assert code == otp.derive_code(CODE_KEY, POLICY, request)
    assert len(code) == 6 and code.isdigit()
    alpha = OtpPolicy(length=10, alphabet="23456789ABCDEFGHJKMNPQRSTUVWXYZ")
    assert set(otp.derive_code(CODE_KEY, alpha, request)) <= set(alpha.alphabet)


def test_a_derived_code_changes_with_every_part_of_the_request_and_with_the_key():
    request = ("otp-generate-in/3/1041", 1733050000.123, "c1", "MAIL")
    variants = [
        ("otp-generate-in/3/1042", 1733050000.123, "c1", "MAIL"),  # next offset
        ("otp-generate-in/4/1041", 1733050000.123, "c1", "MAIL"),  # other partition
        ("otp-generate-in/3/1041", 1733050999.0, "c1", "MAIL"),  # reused offset, later record
        ("otp-generate-in/3/1041", 1733050000.123, "c2", "MAIL"),
        ("otp-generate-in/3/1041", 1733050000.123, "c1", "SMS"),
    ]
    codes = {otp.derive_code(CODE_KEY, OtpPolicy(length=10), r) for r in (request, *variants)}
    assert len(codes) == 6
    other_key = keys.subkey(b"another-secret-0123456789", keys.CODE)
    policy = OtpPolicy(length=10)
    assert otp.derive_code(other_key, policy, request) != otp.derive_code(CODE_KEY, policy, request)


def chi_square(counts: Counter, alphabet: str) -> float:
    expected = sum(counts.values()) / len(alphabet)
    return sum((counts[c] - expected) ** 2 / expected for c in alphabet)


# Chi-square critical values at p = 0.001: 9 degrees of freedom (10 digits), 30 (31 letters).
CRITICAL = {10: 27.877, 31: 59.703}


@pytest.mark.parametrize("alphabet", ["0123456789", "23456789ABCDEFGHJKMNPQRSTUVWXYZ"])
def test_derived_codes_are_uniform_at_every_position(alphabet: str):
    policy = OtpPolicy(length=6, alphabet=alphabet)
    per_position = [Counter() for _ in range(6)]
    for offset in range(100_000):
        code = otp.derive_code(CODE_KEY, policy, (f"in/0/{offset}", 1.5, "c1", "MAIL"))
        for counter, char in zip(per_position, code, strict=True):
            counter[char] += 1
    scores = [chi_square(counter, alphabet) for counter in per_position]
    assert max(scores) < CRITICAL[len(alphabet)], scores


def test_the_uniformity_test_sees_a_modulo_bias():
    """The same test on ``byte % 31`` (what rejection sampling avoids) fails by far."""
    alphabet = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
    counts = Counter()
    for offset in range(100_000):
        digest = hmac.new(CODE_KEY, f"in/0/{offset}".encode(), hashlib.sha256).digest()
        counts.update(alphabet[byte % len(alphabet)] for byte in digest[:6])
    assert chi_square(counts, alphabet) > 10 * CRITICAL[31]


def test_codes_are_not_repeated():
    codes = {otp.new_code(OtpPolicy(length=10)) for _ in range(2000)}
    assert len(codes) == 2000


@pytest.mark.parametrize("length", [3, 11])
def test_length_bounds(length):
    with pytest.raises(ValueError):
        OtpPolicy(length=length)


def test_record_holds_no_code():
    code, record = issue(code="482913")
    assert code == "482913"
    assert "482913" not in repr(record.to_dict())
    assert len(record.digest) == 64


def test_right_code_is_valid_once():
    code, record = issue()
    outcome, record = verify(record, code)
    assert outcome is Outcome.VALID and outcome.error is None
    assert record.status is Status.CONSUMED
    outcome, _ = verify(record, code)
    assert outcome is Outcome.CONSUMED and outcome.error == "code already used"


def test_wrong_code_counts_attempts_then_locks():
    code, record = issue(code="111111")
    for i in range(1, POLICY.max_attempts):
        outcome, record = verify(record, "222222")
        assert outcome is Outcome.INVALID
        assert record.attempts == i
    outcome, record = verify(record, "222222")
    assert outcome is Outcome.LOCKED
    outcome, _ = verify(record, code)
    assert outcome is Outcome.LOCKED


def test_expired_code_is_refused():
    code, record = issue(now=1000.0)
    outcome, _ = verify(record, code, now=1000.0 + POLICY.ttl_seconds)
    assert outcome is Outcome.EXPIRED and "expired" in outcome.error


def test_unknown_identifier():
    outcome, record = verify(None, "123456")
    assert outcome is Outcome.UNKNOWN and record is None


def test_code_is_bound_to_identifier_and_channel():
    code, record = issue(channel="MAIL")
    assert verify(record, code, channel="SMS")[0] is Outcome.INVALID
    assert verify(record, code, identifier="c2")[0] is Outcome.INVALID


def test_new_code_replaces_previous():
    first, record = issue(now=1000.0)
    second, record = issue(record, now=1001.0, code="999999" if first != "999999" else "888888")
    assert verify(record, first, now=1002.0)[0] is Outcome.INVALID
    assert verify(record, second, now=1002.0)[0] is Outcome.VALID


def test_send_limit_and_window():
    record = None
    for i in range(POLICY.max_sends):
        _, record = issue(record, now=1000.0 + i)
    with pytest.raises(RateLimited) as err:
        issue(record, now=1010.0)
    assert err.value.retry_after == pytest.approx(90.0)
    assert "retry in" in str(err.value)
    _, record = issue(record, now=1000.0 + POLICY.send_window_seconds + 0.5)
    assert len(record.sends) == POLICY.max_sends


def test_deletable_a_window_after_expiry():
    _, record = issue(now=1000.0)
    expired_at = 1000.0 + POLICY.ttl_seconds
    assert not otp.deletable(record.expires_at, POLICY, expired_at)
    assert not otp.deletable(
        record.expires_at, POLICY, expired_at + POLICY.send_window_seconds - 0.1
    )
    assert otp.deletable(record.expires_at, POLICY, expired_at + POLICY.send_window_seconds)
    # Every send counted by the limit is older than the row's expiry.
    assert not otp.recent_sends(record, POLICY, expired_at + POLICY.send_window_seconds)


def test_record_round_trip():
    _, record = issue()
    outcome, record = verify(record, "000000x")
    assert OtpRecord.from_dict(record.to_dict()) == record


@given(st.text(min_size=1, max_size=12))
def test_random_guesses_never_validate_a_different_code(guess):
    _, record = issue(code="135790")
    outcome, _ = verify(record, guess)
    assert (outcome is Outcome.VALID) == (guess == "135790")


def test_redelivered_validate_gets_its_first_answer():
    code, record = issue(code="424242")
    outcome, record = otp.verify(
        POLICY,
        SECRET,
        record,
        identifier="c1",
        channel="MAIL",
        code=code,
        now=1001.0,
        source="in/0/7",
    )
    assert outcome is Outcome.VALID
    again, same = otp.verify(
        POLICY,
        SECRET,
        record,
        identifier="c1",
        channel="MAIL",
        code=code,
        now=1002.0,
        source="in/0/7",
    )
    assert again is Outcome.VALID and same == record
    other, _ = otp.verify(
        POLICY,
        SECRET,
        record,
        identifier="c1",
        channel="MAIL",
        code=code,
        now=1002.0,
        source="in/0/8",
    )
    assert other is Outcome.CONSUMED


def test_redelivered_wrong_guess_costs_one_attempt():
    _, record = issue(code="424242")
    for _ in range(3):
        outcome, record = otp.verify(
            POLICY,
            SECRET,
            record,
            identifier="c1",
            channel="MAIL",
            code="000000",
            now=1001.0,
            source="in/0/9",
        )
        assert outcome is Outcome.INVALID
    assert record.attempts == 1


def test_replayed_recognises_redelivered_generates_even_after_later_ones():
    record = None
    for n in range(3):
        _, record = otp.issue(
            POLICY,
            SECRET,
            record,
            identifier="c1",
            channel="MAIL",
            process_instance_id=n,
            now=1.0 + n,
            source=f"in/3/{n}",
        )
    assert [otp.replayed(record, f"in/3/{n}") for n in range(3)] == [otp.SENT] * 3
    # Each keeps the expiry its own reply named, though a newer code replaced it since.
    ttl = POLICY.ttl_seconds
    expiries = [otp.sent_expiry(record, f"in/3/{n}") for n in range(3)]
    assert expiries == [1.0 + n + ttl for n in range(3)]
    # A row of the previous release (no facts) replays with no expiry, and that release reads
    # these rows unchanged: the history entries keep their form.
    older = OtpRecord.from_dict({k: v for k, v in record.to_dict().items() if k != "f"})
    assert otp.sent_expiry(older, "in/3/0") is None
    assert record.to_dict()["h"] == [[f"in/3/{n}", "sent"] for n in range(3)]
    assert otp.replayed(record, "in/3/9") is None and otp.replayed(None, "in/3/0") is None
    assert OtpRecord.from_dict(record.to_dict()) == record


def test_history_is_bounded():
    _, record = issue(code="424242")
    for n in range(otp.HISTORY_SIZE + 10):
        _, record = otp.verify(
            OtpPolicy(max_attempts=100),
            SECRET,
            record,
            identifier="c1",
            channel="MAIL",
            code="000000",
            now=1001.0,
            source=f"in/0/{n}",
        )
    assert len(record.history) == otp.HISTORY_SIZE
    assert otp.replayed(record, "in/0/0") is None


def test_refusals_are_remembered_without_a_code():
    row = otp.remember(None, "in/1/1", otp.REFUSED + "template 'x' not found", now=50.0)
    assert row.digest == "" and otp.refused(otp.replayed(row, "in/1/1")) == "template 'x' not found"
    # A row that holds only history knows no code, and is swept like any other.
    outcome, row = otp.verify(
        POLICY,
        SECRET,
        row,
        identifier="c1",
        channel="MAIL",
        code="123456",
        now=51.0,
        source="v/0/1",
    )
    assert outcome is Outcome.UNKNOWN and otp.replayed(row, "v/0/1") == "unknown"
    assert otp.deletable(row.expires_at, POLICY, 50.0 + POLICY.send_window_seconds)
    assert otp.refused(otp.SENT) is None and otp.refused(None) is None


def test_every_validation_is_remembered_for_its_redelivery():
    outcome, row = otp.verify(
        POLICY, SECRET, None, identifier="c1", channel="MAIL", code="1", now=1.0, source="v/0/1"
    )
    assert outcome is Outcome.UNKNOWN
    _, row = otp.issue(
        POLICY,
        SECRET,
        row,
        identifier="c1",
        channel="MAIL",
        process_instance_id=1,
        now=2.0,
        code="777777",
        source="g/0/1",
    )
    again, _ = otp.verify(
        POLICY, SECRET, row, identifier="c1", channel="MAIL", code="777777", now=3.0, source="v/0/1"
    )
    assert again is Outcome.UNKNOWN  # the redelivery keeps its first answer


# -- transaction binding (PSD2 dynamic linking) -------------------------------------------------

TXN = ("100", "ACME Ltd")


def issue_for(transaction, previous=None):
    return otp.issue(
        POLICY,
        SECRET,
        previous,
        identifier="c1",
        channel="MAIL",
        process_instance_id=7,
        now=1000.0,
        transaction=transaction,
    )


def verify_for(record, code, transaction):
    return otp.verify(
        POLICY,
        SECRET,
        record,
        identifier="c1",
        channel="MAIL",
        code=code,
        now=1001.0,
        transaction=transaction,
    )


def test_payment_code_validates_only_for_its_transaction():
    code, record = issue_for(TXN)
    outcome, after = verify_for(record, code, ("100", "Mallory"))
    assert outcome is Outcome.MISMATCH
    assert outcome.error == "code does not match the transaction"
    assert after.attempts == 1  # another transaction is a failed attempt
    assert verify_for(after, code, ("101", "ACME Ltd"))[0] is Outcome.MISMATCH
    assert verify_for(after, code, None)[0] is Outcome.MISMATCH
    assert verify_for(after, code, TXN)[0] is Outcome.VALID


def test_plain_code_refuses_a_transaction():
    code, record = issue_for(None)
    assert verify_for(record, code, TXN)[0] is Outcome.MISMATCH
    assert verify_for(record, code, None)[0] is Outcome.VALID


def test_mismatches_lock_the_code_like_wrong_guesses():
    code, record = issue_for(TXN)
    for _ in range(POLICY.max_attempts - 1):
        outcome, record = verify_for(record, code, ("1", "x"))
        assert outcome is Outcome.MISMATCH
    outcome, record = verify_for(record, code, ("1", "x"))
    assert outcome is Outcome.LOCKED
    assert verify_for(record, code, TXN)[0] is Outcome.LOCKED


def test_transaction_is_not_readable_from_the_record():
    _, record = issue_for(("12345.67", "Unique Payee Name"))
    stored = str(record.to_dict())
    assert "12345" not in stored and "Unique Payee" not in stored
    assert OtpRecord.from_dict(record.to_dict()) == record
