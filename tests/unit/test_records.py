"""Request parsing: what is refused, with which field, before anything is counted or sent."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import codec, records
from app.records import RequestError

MAX = 65536


def gen(**fields):
    base = {
        "processInstanceId": 7,
        "templateName": "otpMail",
        "channel": "MAIL",
        "recipient": "a@example.com",
        "clientId": "sl-3",
    }
    return codec.dumps({**base, **fields})


def refusal(raw, parse=records.parse_generate):
    with pytest.raises(RequestError) as info:
        parse(raw, MAX)
    return info.value


@pytest.mark.parametrize("client", [" sl-3", "sl-3 ", "sl-3\t", "\u00a0sl-3", "sl-3\n"])
def test_client_id_with_whitespace_around_it_is_refused(client):
    exc = refusal(gen(clientId=client))
    assert exc.field == "clientId" and "whitespace" in exc.reason
    assert exc.process_instance_id == 7


@pytest.mark.parametrize(
    "client", ["sl\u200b-3", "sl-\u00003", "sl\u202e-3", "s\x1bl-3", "sl\ufeff3"]
)
def test_client_id_with_invisible_characters_is_refused(client):
    exc = refusal(gen(clientId=client))
    assert exc.field == "clientId" and "invisible" in exc.reason


def test_client_id_given_twice_must_agree():
    exc = refusal(gen(clientId="a", data={"clientId": "b"}))
    assert exc.field == "data.clientId" and "differs from clientId" in exc.reason
    exc = refusal(gen(clientId="a", contentParams={"clientId": "c"}))
    assert exc.field == "contentParams.clientId"
    same = records.parse_generate(gen(clientId=42, data={"clientId": "42"}), MAX)
    assert same.key == "42"
    only_data = codec.loads(gen(data={"clientId": "d1"}))
    del only_data["clientId"]
    assert records.parse_generate(codec.dumps(only_data), MAX).key == "d1"


def test_validate_client_id_rules_are_the_same():
    raw = codec.dumps({"processInstanceId": 1, "clientId": " x", "channel": "MAIL", "otp": "1"})
    assert refusal(raw, records.parse_validate).field == "clientId"


def test_deeply_nested_data_gets_an_error_reply_not_a_dead_letter():
    nested = b'{"n":' * 300 + b'"leaf"' + b"}" * 300
    raw = gen(data={"deep": "X"}).replace(b'"X"', nested)
    exc = refusal(raw)
    assert exc.field == "data" and "nested" in exc.reason and exc.process_instance_id == 7


def test_sms_numbers_are_normalised_to_e164():
    req = records.parse_generate(gen(channel="SMS", recipient="0040 712-345-678"), MAX)
    assert req.recipient == "+40712345678"
    # Not a number: kept as sent, for the channel's own refusal (see agents.otp.check_generate).
    assert records.parse_generate(gen(channel="SMS", recipient="0712345678"), MAX).recipient == (
        "0712345678"
    )


def test_transaction_is_canonical_and_shown_to_the_template():
    for amount in (100, "100", "100.00", 100.0):
        req = records.parse_generate(gen(amount=amount, payee=" ACME "), MAX)
        assert req.transaction == ("100", "ACME")
        assert req.params["amount"] == "100" and req.params["payee"] == "ACME"
    assert records.parse_generate(gen(amount="99.95", payee="x"), MAX).transaction == (
        "99.95",
        "x",
    )
    assert records.parse_generate(gen(), MAX).transaction is None


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"amount": 10}, "payee"),
        ({"payee": "x"}, "amount"),
        ({"amount": -1, "payee": "x"}, "amount"),
        ({"amount": True, "payee": "x"}, "amount"),
        ({"amount": "1e9", "payee": "x"}, "amount"),
        ({"amount": "NaN", "payee": "x"}, "amount"),
        ({"amount": 1, "payee": ""}, "payee"),
        ({"amount": 1, "payee": "a\x00b"}, "payee"),
        ({"amount": 1, "payee": "p" * 141}, "payee"),
    ],
)
def test_bad_transactions_are_refused(fields, field):
    assert refusal(gen(**fields)).field == field


def test_validate_carries_the_transaction():
    raw = codec.dumps(
        {
            "processInstanceId": 1,
            "clientId": "c",
            "channel": "MAIL",
            "otp": "1",
            "amount": "5.0",
            "payee": "P",
        }
    )
    assert records.parse_validate(raw, MAX).transaction == ("5", "P")


def test_oversized_request_keeps_its_process_instance_id():
    raw = gen(padding="x" * 200_000)
    exc = refusal(raw)
    assert exc.process_instance_id == 7 and "over the 65536-byte limit" in str(exc)
    assert records.oversized(b"not json" * 100, 800, 256).process_instance_id is None


def test_record_size_counts_key_value_and_every_header():
    headers = [("a", b"12"), ("a", b"345"), ("b", None)]
    framing = 3 * records.HEADER_FRAMING_BYTES
    assert records.record_size(b"kk", b"vvv", headers) == 2 + 3 + 3 + 4 + 1 + framing
    assert records.header_list({"x": b"1"}) == [("x", b"1")]


def test_many_empty_headers_count_as_what_they_weigh_on_the_wire():
    """400,000 empty headers are 800 KB on the wire: they used to count as nothing and pass
    the request size limit, to be copied into both hops and the reply."""
    assert records.record_size(None, b"{}", [("", b"")] * 400_000) > 65536


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused_with_a_request_error(raw):
    for parse in (records.parse_generate, records.parse_validate):
        try:
            parse(raw, MAX)
        except RequestError:
            pass


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
        max_leaves=30,
    )
)
def test_any_json_parses_or_is_refused_with_a_request_error(value):
    for extra in ({"data": value}, {"clientId": value}, {"amount": value, "payee": value}):
        try:
            records.parse_generate(gen(**extra), MAX)
        except RequestError:
            pass
