"""Receivers: one canonical name per phone number or address, countries, the quota step."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core import receivers
from app.core.receivers import AddressError, ReceiverQuota

SECRET = b"receiver-secret-0123456789"


@pytest.mark.parametrize(
    "raw",
    [
        "+40712345678",
        "+40 712 345 678",
        "+40-712-345-678",
        "0040712345678",
        "+400712345678",
        "+40 (712) 345.678",
        " +40712345678 ",
    ],
)
def test_one_number_many_spellings(raw):
    assert receivers.phone_number(raw) == "+40712345678"


@pytest.mark.parametrize(
    "raw", ["0712345678", "+", "+12", "+40 712 345 678 999 999 9", "+４０712345678", "+40abc", ""]
)
def test_not_a_phone_number(raw):
    with pytest.raises(AddressError):
        receivers.phone_number(raw)


def test_regions_follow_the_number_not_only_its_country_code():
    assert receivers.phone_region("+14155550100") == "US"
    assert receivers.phone_region("+14165550100") == "CA"
    assert receivers.phone_region("+40712345678") == "RO"


def test_country_refusal():
    assert receivers.country_refusal("+40712345678", None) is None
    assert receivers.country_refusal("+40712345678", frozenset({"RO", "DE"})) is None
    refusal = receivers.country_refusal("+882345678901", frozenset({"RO"}))
    assert refusal is not None and "not allowed" in refusal
    assert "US" in receivers.country_refusal("+14155550100", frozenset({"CA"}))


def test_mail_is_counted_without_case_or_tag():
    key = receivers.receiver_key(SECRET, "MAIL", "ann@example.org")
    for other in ("Ann@Example.org", "ann+1@example.org", "ANN+promo@EXAMPLE.ORG"):
        assert receivers.receiver_key(SECRET, "MAIL", other) == key
    assert receivers.receiver_key(SECRET, "MAIL", "bob@example.org") != key
    assert receivers.receiver_key(SECRET, "SMS", "ann@example.org") != key


def test_receiver_key_holds_no_address():
    key = receivers.receiver_key(SECRET, "SMS", "+40712345678")
    assert "40712345678" not in key and len(key) == 32


def admit(quota, source, now=1000.0, max_sends=3):
    return receivers.admit(quota, source, now=now, max_sends=max_sends, window_seconds=100)


def test_quota_counts_then_refuses_then_frees_after_the_window():
    quota = None
    for i in range(3):
        quota, refusal = admit(quota, f"t/0/{i}", now=1000.0 + i)
        assert refusal is None
    quota, refusal = admit(quota, "t/0/3", now=1010.0)
    assert refusal == "too many codes sent to this receiver: retry in 91 s"
    quota, refusal = admit(quota, "t/0/4", now=1101.0)
    assert refusal is None


def test_redelivered_request_is_counted_once_and_answered_the_same():
    quota, _ = admit(None, "t/0/1")
    again, refusal = admit(quota, "t/0/1")
    assert refusal is None and again == quota and len(again.sends) == 1
    quota = ReceiverQuota(sends=(1000.0, 1000.0, 1000.0))
    refused, first = admit(quota, "t/0/9")
    assert first is not None
    replay, second = admit(refused, "t/0/9")
    assert second == first and replay == refused


def test_quota_round_trip_and_expiry():
    quota, _ = admit(None, "t/0/1")
    assert ReceiverQuota.from_dict(quota.to_dict()) == quota
    assert not receivers.expired(quota.sends, 1050.0, 100)
    assert receivers.expired(quota.sends, 1100.0, 100)


@given(st.lists(st.floats(min_value=0, max_value=500), max_size=40), st.integers(1, 10))
def test_never_more_admitted_than_the_limit_in_any_window(times, limit):
    quota = None
    admitted = []
    for i, now in enumerate(sorted(times)):
        quota, refusal = receivers.admit(
            quota, f"s/{i}", now=now, max_sends=limit, window_seconds=100
        )
        if refusal is None:
            admitted.append(now)
    for t in admitted:
        assert sum(1 for u in admitted if t - 100 < u <= t) <= limit
