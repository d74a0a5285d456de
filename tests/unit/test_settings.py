"""Settings: defaults, aliases, and one clear line for every bad variable."""

import pytest

from app.settings import ENV_VARS, SPEC, TABLE_HEADER, ConfigError, Settings, markdown_table
from app.settings import main as settings_main
from devtools.support import ROOT, config_refusal

GOOD = {"OTP_HMAC_SECRET": "s" * 32, "NOTIFY_API_TOKEN": "t" * 20}


def test_defaults_follow_flowx():
    s = Settings.from_env(GOOD)
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.topic_generate_in == "ai.flowx.plugin.notification.trigger.generate.otp.v1"
    assert (
        s.topic_generate_out
        == "ai.flowx.engine.receive.plugin.notification.generate.otp.results.v1"
    )
    assert s.topic_validate_in == "ai.flowx.plugin.notification.trigger.validate.otp.v1"
    assert (
        s.topic_validate_out
        == "ai.flowx.engine.receive.plugin.notification.validate.otp.results.v1"
    )
    assert s.web_port == 6066 and s.topic_partitions == 8
    assert s.otp_length == 6 and s.otp_expire_seconds == 600
    assert s.unmatched_out_topics() == []


def test_flowx_aliases():
    s = Settings.from_env(
        {
            **GOOD,
            "SIMPLEJAVAMAIL_SMTP_HOST": "mail.example.com",
            "SIMPLEJAVAMAIL_SMTP_PORT": "2525",
            "APPLICATION_MAIL_FROM_EMAIL": "otp@example.com",
            "FLOWX_OTP_EXPIRETIMEINSECONDS": "120",
            "FLOWX_OTP_LENGTH": "8",
        }
    )
    assert (s.smtp_host, s.smtp_port, s.mail_from_email) == (
        "mail.example.com",
        2525,
        "otp@example.com",
    )
    assert s.otp_expire_seconds == 120 and s.otp_length == 8
    # The primary name wins over the alias.
    s = Settings.from_env({**GOOD, "SMTP_HOST": "a", "SIMPLEJAVAMAIL_SMTP_HOST": "b"})
    assert s.smtp_host == "a"


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("TOPIC_PARTITIONS", "abc", "integer"),
        ("WEB_PORT", "70000", "between 1 and 65535"),
        ("FLOWX_OTP_LENGTH", "3", "between 4 and 10"),
        ("SMTP_SECURITY", "ssl", "none, starttls, tls"),
        ("ENGINE_TOPIC_PATTERN", "([", "regular expression"),
        ("KAFKA_TOPIC_OTP_GENERATE_OUT", "bad topic", "topic name"),
        ("LOG_LEVEL", "loud", "DEBUG"),
        ("OTP_ALPHABET", "abc", "distinct"),
        ("RECOVERY_STALL_SECONDS", "0", "between 1 and 3600"),
        ("MAIL_FROM_EMAIL", "otp service@example.com", "not one e-mail address"),
        ("MAIL_FROM_EMAIL", "otp@exämple.com", "not ASCII"),
    ],
)
def test_bad_values_name_the_variable(variable, value, words):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**GOOD, variable: value})
    assert err.value.variable == variable
    assert str(err.value).startswith(f"{variable}: ") and words in str(err.value)


def test_secrets_required_and_never_shown():
    with pytest.raises(ConfigError, match="OTP_HMAC_SECRET"):
        Settings.from_env({"NOTIFY_API_TOKEN": "t" * 20})
    with pytest.raises(ConfigError, match="NOTIFY_API_TOKEN"):
        Settings.from_env({"OTP_HMAC_SECRET": "s" * 32})
    Settings.from_env({"OTP_HMAC_SECRET": "s" * 32, "NOTIFY_API_AUTH": "disabled"})
    s = Settings.from_env({**GOOD, "SMTP_USERNAME": "u", "SMTP_PASSWORD": "hunter2-password"})
    assert "hunter2" not in repr(s) and "s" * 32 not in repr(s) and "t" * 20 not in repr(s)


def test_unmatched_reply_topics_are_reported():
    s = Settings.from_env({**GOOD, "KAFKA_TOPIC_OTP_VALIDATE_OUT": "my.replies"})
    assert s.unmatched_out_topics() == ["my.replies"]


@pytest.mark.parametrize(
    ("variable", "value"), [("TOPIC_PARTITIONS", "abc"), ("WEB_PORT", "70000")]
)
def test_worker_exits_with_one_line(variable, value):
    line = config_refusal({"PATH": "/usr/bin:/bin", **GOOD, variable: value})
    assert variable in line


def readme_table() -> str:
    """The configuration table as it stands in README.md: its header row to the last row."""
    lines = (ROOT / "README.md").read_text().splitlines(keepends=True)
    start = lines.index(TABLE_HEADER.splitlines(keepends=True)[0])
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "".join(lines[start:end])


def test_readme_configuration_table_is_generated_from_the_settings():
    table = markdown_table()
    missing = sorted(v for v in ENV_VARS if f"`{v}`" not in table)
    assert not missing, f"the generated table lacks {missing}"
    assert readme_table() == table, (
        "README.md's configuration table differs from the settings declared in app/settings.py: "
        "run `.venv/bin/python -m app.settings table` and paste its output over the table"
    )


def test_every_setting_has_a_one_line_doc():
    for name, spec in SPEC.items():
        assert spec.doc.strip() and "\n" not in spec.doc, name
        assert spec.names and all(n == n.strip().upper() for n in spec.names), name


def test_table_command_prints_the_table(capsys):
    assert settings_main(["table"]) == 0
    assert capsys.readouterr().out == markdown_table()
    assert settings_main([]) == 2


def test_secret_values_are_every_configured_secret():
    s = Settings.from_env(
        {
            **GOOD,
            "SMTP_USERNAME": "u",
            "SMTP_PASSWORD": "smtp-password-1",
            "SMS_PROVIDER": "webhook",
            "SMS_WEBHOOK_URL": "https://hook.example/x?token=abc",
            "SMS_WEBHOOK_HEADERS": '{"X-Api-Key": "key-12345"}',
        }
    )
    values = s.secret_values()
    for expected in (
        GOOD["OTP_HMAC_SECRET"],
        GOOD["NOTIFY_API_TOKEN"],
        "smtp-password-1",
        "https://hook.example/x?token=abc",
        "key-12345",
    ):
        assert expected in values
    assert "u" not in values


def test_faust_takes_none_of_its_settings_from_the_environment(monkeypatch, tmp_path):
    """Faust would take these over what ``create_app`` passes; a worker's only settings are
    the documented ones (``STREAM_WAIT_EMPTY=false`` would lose requests on a rebalance)."""
    from app.main import create_app

    overrides = {
        "STREAM_WAIT_EMPTY": "false",
        "BROKER_COMMIT_INTERVAL": "30",
        "PRODUCER_ACKS": "0",
        "CONSUMER_AUTO_OFFSET_RESET": "latest",
    }
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env({**GOOD, "DATA_DIR": str(tmp_path)})
    conf = create_app(settings).conf
    assert conf.stream_wait_empty is True
    assert conf.broker_commit_interval == 1.0
    assert conf.producer_acks == -1
    assert conf.consumer_auto_offset_reset == "earliest"


def test_event_loop_wins_over_faust_own_loop_variable():
    """``F_LOOP`` is read when Faust is imported; ``EVENT_LOOP`` is the one that decides."""
    import subprocess
    import sys

    def policy(event_loop: str, faust_loop: str | None) -> str:
        probe = (
            "import asyncio; from app.runtime.worker import use_event_loop; "
            f"use_event_loop({event_loop!r}); "
            "print(type(asyncio.get_event_loop_policy()).__module__)"
        )
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
        if faust_loop:
            env["F_LOOP"] = faust_loop
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    assert policy("aio", "uvloop") == "asyncio.unix_events"
    assert policy("uvloop", None) == "uvloop"
    assert policy("aio", None) == "asyncio.unix_events"
