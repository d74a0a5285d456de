"""The hand-built MIME mail parses back to what was meant, for any subject and body."""

import email
import email.policy

from hypothesis import given
from hypothesis import strategies as st

from app.channels.mime import build_mail


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_html_with_text_alternative():
    raw = build_mail(
        from_name="OTP Service",
        from_email="otp@example.com",
        to="user@example.com",
        subject="otp for 1234567890",
        html="<p>123456</p>",
        text="123456",
        message_id_domain="example.com",
    )
    msg = parse(raw)
    assert msg["From"] == "OTP Service <otp@example.com>"
    assert msg["To"] == "user@example.com" and msg["Subject"] == "otp for 1234567890"
    assert msg["Message-ID"].endswith("@example.com>") and msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(preferencelist=("html",)).get_content() == "<p>123456</p>"
    assert msg.get_body(preferencelist=("plain",)).get_content() == "123456"
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_a_message_key_makes_the_message_id():
    def message_id(key: str) -> str:
        raw = build_mail(
            from_name="X",
            from_email="x@example.com",
            to="u@example.com",
            subject="s",
            html=None,
            text="OTP 1",
            message_id_domain="example.com",
            message_key=key,
        )
        return parse(raw)["Message-ID"]

    assert message_id("ab12" * 8) == f"<{'ab12' * 8}@example.com>" == message_id("ab12" * 8)
    assert message_id("") != message_id("")


def test_text_only():
    msg = parse(
        build_mail(
            from_name="X",
            from_email="x@example.com",
            to="u@example.com",
            subject=None,
            html=None,
            text="OTP 1",
            message_id_domain="example.com",
        )
    )
    assert msg.get_content_type() == "text/plain" and msg.get_content() == "OTP 1"


@given(st.text(max_size=300), st.text(max_size=2000), st.text(min_size=1, max_size=40))
def test_round_trip_any_text(subject, body, name):
    msg = parse(
        build_mail(
            from_name=name,
            from_email="x@example.com",
            to="u@example.com",
            subject=subject,
            html=body,
            text=body,
            message_id_domain="example.com",
        )
    )
    assert msg["Subject"] == " ".join(subject.split())
    assert msg["From"].addresses[0].display_name == " ".join(name.split())
    html = msg.get_body(preferencelist=("html",)).get_payload(decode=True).decode("utf-8")
    plain = msg.get_body(preferencelist=("plain",)).get_payload(decode=True).decode("utf-8")
    assert html == body and plain == body
    assert len(msg["To"].addresses) == 1


def test_every_header_line_fits_in_998_bytes_whatever_the_names():
    """200 emoji as a sender's name made one From line of 1,104 bytes, which servers refuse."""
    raw = build_mail(
        from_name="\U0001f600" * 200,
        from_email="desk@example.com",
        to="u@example.com",
        subject="\U0001f600" * 998,
        html=None,
        text="x",
        message_id_domain="example.com",
    )
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert max(map(len, head.split(b"\r\n"))) <= 998
    assert b"\n" not in head.replace(b"\r\n", b"")  # folded with CRLF, never a bare LF
    sender = parse(raw)["From"].addresses[0]
    assert sender.addr_spec == "desk@example.com"
    assert sender.display_name.startswith("\U0001f600") and sender.display_name.endswith("\u2026")
