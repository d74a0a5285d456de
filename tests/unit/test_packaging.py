"""docker-compose.yml cannot run here (no Docker engine): keep it honest by reading it."""

import yaml

from app.settings import ENV_VARS, Settings
from tests.support import ROOT


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_kafka_workers_and_mail_catcher():
    services = compose()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["worker"]["build"] == "."
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "mailpit" in services["mailcatcher"]["image"]


def test_worker_environment_names_real_settings_that_parse():
    env = compose()["services"]["worker"]["environment"]
    unknown = sorted(set(env) - ENV_VARS)
    assert not unknown, f"compose names variables the service does not read: {unknown}"
    concrete = {k: v for k, v in env.items() if "${" not in str(v)}
    settings = Settings.from_env({**concrete, "OTP_HMAC_SECRET": "x" * 32, "NOTIFY_API_TOKEN": "t"})
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.smtp_host == "mailcatcher" and settings.web_host == "0.0.0.0"


def test_worker_points_at_compose_services():
    services = compose()["services"]
    env = services["worker"]["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"].split(":")[0] in services
    assert env["SMTP_HOST"] in services


def test_dockerfile_runs_the_worker():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "app", "worker"]' in dockerfile
    for package in ("app", "agents", "tables", "web"):
        assert f"COPY {package} ./{package}" in dockerfile
