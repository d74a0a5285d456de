"""docker-compose.yml cannot run here (no Docker engine): keep it honest by reading it."""

import yaml

from app.settings import ENV_VARS, Settings
from devtools.support import ROOT


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
    assert "pip install --no-cache-dir -c constraints.txt ." in dockerfile
    for package in ("app", "agents", "tables", "web"):
        assert f"COPY {package} ./{package}" in dockerfile


def test_installed_versions_are_the_locked_ones():
    """``make`` installs with ``-c constraints.txt``: what runs is exactly what was tested."""
    from importlib import metadata

    locked = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            locked[name.lower().replace("_", "-")] = version
    for name in ("faust-streaming", "mode-streaming", "aiokafka"):
        assert name in locked, f"constraints.txt does not pin {name}"
    wrong = {}
    for name, version in locked.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this venv was not installed with (bench)
        if installed != version:
            wrong[name] = (installed, version)
    assert not wrong, f"installed differs from constraints.txt (installed, locked): {wrong}"


def test_every_bench_script_imports():
    """The bench scripts run only by hand (``make bench``, ``bench/*.py -h``): a helper moved
    elsewhere must not leave one of them failing at its first line."""
    import importlib

    for path in sorted((ROOT / "bench").glob("*.py")):
        try:
            importlib.import_module(f"bench.{path.stem}")
        except ModuleNotFoundError as exc:
            if exc.name != "matplotlib":  # the bench extra, which make test does not install
                raise
