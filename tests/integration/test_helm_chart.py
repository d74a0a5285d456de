"""deploy/helm/faust-otp: rendered by the real helm (scripts/helm-local), every object checked
against the Kubernetes API schemas (kubernetes-validate), and the chart held to app/settings.py.

No cluster and no broker: `helm template` renders offline. The ServiceMonitor's CRD has no
schema in kubernetes-validate (it bundles Kubernetes' own APIs only), so its shape is checked by
hand in ``test_service_monitor_scrapes_every_worker``.
"""

from __future__ import annotations

import base64
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from app.settings import ENV_VARS, SPEC, Settings
from devtools.support import ROOT

# Only a first run ever waits for helm to be built (about 5 minutes, scripts/helm-local);
# scripts/run-tests builds it before pytest starts, and then every test here takes well under 1 s.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CHART = ROOT / "deploy" / "helm" / "faust-otp"
HELM_LOCAL = ROOT / "scripts" / "helm-local"
RELEASE, NAMESPACE = "otp", "otp-ns"
FULLNAME = "otp-faust-otp"
# The oldest Kubernetes that Chart.yaml's kubeVersion admits, and the newest whose schemas the
# installed kubernetes-validate bundles (1.37 with kubernetes-validate 1.37.0).
KUBE_VERSIONS = ("1.30", ".".join(latest_version().split(".")[:2]))


def sets(*assignments: str) -> tuple[str, ...]:
    """``--set`` arguments for helm, one per ``path=value``."""
    return tuple(arg for assignment in assignments for arg in ("--set", assignment))


# The second render: a Secret of the operator's own, the ServiceMonitor on, three workers.
CUSTOM_ARGS = sets(
    "existingSecret=otp-secrets", "metrics.serviceMonitor.enabled=true", "replicaCount=3"
)

# Variables the chart sets that the settings object does not declare (none left).
PENDING_SETTINGS: set[str] = set()
BY_NAME = {name: spec for spec in SPEC.values() for name in spec.names}
SECRET_SPECS = [spec for spec in SPEC.values() if spec.secret]
SECRET_VARIABLES = {name for spec in SECRET_SPECS for name in spec.names}


def render(*args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [HELM_LOCAL, "template", RELEASE, CHART, "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(*args: str) -> str:
    result = subprocess.run(
        [HELM_LOCAL, "template", RELEASE, CHART, *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0, f"rendered although it should not: {args}"
    return result.stderr


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name or 'anything'}"
    return found[0]


def worker(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return container


def secret_refs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The workers' variables read from a Secret, each with its ``secretKeyRef``."""
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in worker(objects)["env"]
        if "valueFrom" in e
    }


def plain_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in worker(objects)["env"] if "value" in e}


def unknown_env_names(objects: list[dict[str, Any]]) -> set[str]:
    """Variables a container is given that the service does not read (a typo, a stale name)."""
    names = {
        e["name"]
        for o in objects
        if o["kind"] == "StatefulSet"
        for c in o["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
    }
    return names - ENV_VARS - PENDING_SETTINGS


def is_subset(labels: dict[str, str], of: dict[str, str]) -> bool:
    return all(of.get(k) == v for k, v in labels.items())


@pytest.fixture(scope="module", autouse=True)
def helm_built() -> None:
    """Before any render: a no-op once cached, else the one build (see pytestmark)."""
    subprocess.run([HELM_LOCAL, "fetch"], check=True, timeout=850)


@pytest.fixture(scope="module")
def default_render() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def custom_render(default_render: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return render(*CUSTOM_ARGS)


@pytest.fixture(params=["default", "custom"])
def rendered(
    request: pytest.FixtureRequest,
    default_render: list[dict[str, Any]],
    custom_render: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    return default_render if request.param == "default" else custom_render


def values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


# ---------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_is_valid_for_kubernetes(rendered: list[dict[str, Any]], kube_version: str):
    """Strict: an unknown field (a misspelt probe key, say) fails too, not only a wrong type."""
    errors, checked = [], []
    for obj in rendered:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD's kind: no bundled schema, checked by hand below
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        checked.append(obj["kind"])
    assert not errors, "\n".join(errors)
    assert {"StatefulSet", "Service", "PodDisruptionBudget"} <= set(checked)


def test_default_render_has_the_objects_named(default_render: list[dict[str, Any]]):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in default_render)
    assert kinds == [
        ("PodDisruptionBudget", FULLNAME),
        ("Secret", FULLNAME),
        ("Service", FULLNAME),
        ("Service", f"{FULLNAME}-headless"),
        ("StatefulSet", FULLNAME),
    ]
    assert all(o["metadata"].get("namespace") in (None, NAMESPACE) for o in default_render)


def test_custom_render_uses_the_existing_secret_and_three_workers(
    custom_render: list[dict[str, Any]],
):
    assert not [o for o in custom_render if o["kind"] == "Secret"], "existingSecret: no Secret"
    sts = one(custom_render, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    # Only the chart's own Secret is hashed into the pods (to restart them when it changes).
    assert "checksum/secret" not in sts["spec"]["template"]["metadata"]["annotations"]
    one(custom_render, "ServiceMonitor")


def test_helm_lint_passes():
    result = subprocess.run(
        [HELM_LOCAL, "lint", CHART, "--strict"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------- workers


def test_probes_ask_the_worker_on_its_web_port(rendered: list[dict[str, Any]]):
    container = worker(rendered)
    env = plain_env(rendered)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(env["WEB_PORT"])}
    assert env["WEB_HOST"] == "0.0.0.0", "probes come from the kubelet, not loopback"
    for probe, path in (
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/health"),
        ("startupProbe", "/health"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == int(env["WEB_PORT"]), probe


@pytest.mark.parametrize(
    ("args", "shutdown"),
    [
        ((), None),
        (sets("env.SHUTDOWN_TIMEOUT_SECONDS=120.5"), 120.5),
        (sets("env.SHUTDOWN_TIMEOUT_SECONDS=null"), None),  # unset: the setting's default
    ],
)
def test_kubelet_waits_longer_than_the_workers_own_shutdown(args: tuple[str, ...], shutdown):
    objects = render(*args)
    grace = one(objects, "StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    default = SPEC["shutdown_timeout_seconds"]
    rendered_value = plain_env(objects).get("SHUTDOWN_TIMEOUT_SECONDS")
    if shutdown is None:
        shutdown = float(rendered_value or default.parse(default.default))
    else:
        assert float(rendered_value) == shutdown
    assert grace > shutdown
    assert grace == math.ceil(shutdown) + values()["terminationGracePaddingSeconds"]


def test_each_worker_has_its_own_volume_at_data_dir(rendered: list[dict[str, Any]]):
    sts = one(rendered, "StatefulSet")
    data_dir = plain_env(rendered)["DATA_DIR"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m["mountPath"] for m in worker(rendered)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == data_dir
    pod_volumes = {v["name"] for v in sts["spec"]["template"]["spec"].get("volumes", [])}
    assert claim["metadata"]["name"] not in pod_volumes, "the claim template, not a shared volume"


def test_without_persistence_the_data_dir_is_an_empty_dir():
    objects = render(*sets("persistence.enabled=false"))
    sts = one(objects, "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(sts, version, strict=True)


def test_worker_runs_unprivileged_on_a_read_only_root(rendered: list[dict[str, Any]]):
    """The image's user (Dockerfile: ``useradd --system ... otp``, ``USER otp``) gets uid 999 from
    useradd in python:3.11-slim. The worker writes only to DATA_DIR (seen once under strace: a
    real worker's start, a template write, a generate request and SIGTERM wrote nothing else),
    so / is read-only, with an emptyDir at /tmp for any library's temporary file."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "useradd --system --home /srv otp" in dockerfile and "\nUSER otp\n" in dockerfile
    pod = one(rendered, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 999 == pod["securityContext"]["fsGroup"]
    assert pod["automountServiceAccountToken"] is False
    context = worker(rendered)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in worker(rendered)["volumeMounts"] if not m.get("readOnly")}
    assert writable == {plain_env(rendered)["DATA_DIR"], "/tmp"}


def test_replicas_resources_and_image_come_from_values(default_render: list[dict[str, Any]]):
    given = values()
    sts = one(default_render, "StatefulSet")
    assert sts["spec"]["replicas"] == given["replicaCount"]
    container = worker(default_render)
    assert container["resources"] == given["resources"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container["image"] == f"{given['image']['repository']}:{chart['appVersion']}"
    assert container["imagePullPolicy"] == given["image"]["pullPolicy"]
    tagged = worker(render(*sets("image.tag=1.2.3", "image.repository=r.io/otp")))
    assert tagged["image"] == "r.io/otp:1.2.3"


def test_table_standby_replicas_is_passed_to_the_workers():
    assert values()["tableStandbyReplicas"] == 0
    spec = BY_NAME["TABLE_STANDBY_REPLICAS"]
    assert spec.default is not None and spec.parse(spec.default) == 0
    objects = render(*sets("replicaCount=3", "tableStandbyReplicas=1"))
    assert plain_env(objects)["TABLE_STANDBY_REPLICAS"] == "1"
    assert "must be below replicaCount" in render_error(*sets("tableStandbyReplicas=2"))


# ---------------------------------------------------------------------------- disruption, services


def test_pdb_and_services_select_the_statefulset_pods(rendered: list[dict[str, Any]]):
    sts = one(rendered, "StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert is_subset(sts["spec"]["selector"]["matchLabels"], pod_labels)
    pdb = one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    headless = one(rendered, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    http = one(rendered, "Service", FULLNAME)
    assert http["spec"].get("clusterIP") != "None"
    for service in (headless, http):
        assert is_subset(service["spec"]["selector"], pod_labels)
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_prometheus_scrapes_the_metrics_endpoint(rendered: list[dict[str, Any]]):
    annotations = one(rendered, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(worker(rendered)["ports"][0]["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_monitor_is_off_by_default(default_render: list[dict[str, Any]]):
    assert values()["metrics"]["serviceMonitor"]["enabled"] is False
    assert not [o for o in default_render if o["kind"] == "ServiceMonitor"]


def test_service_monitor_scrapes_every_worker(custom_render: list[dict[str, Any]]):
    """By hand, as no schema is bundled: the fields the Prometheus Operator's CRD requires and
    the ones this chart relies on; its selector must pick the headless Service alone (it lists
    workers still recovering, which the HTTP Service drops), else workers are scraped twice."""
    monitor = one(custom_render, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    services = [o for o in custom_render if o["kind"] == "Service"]
    chosen = [s for s in services if is_subset(selector["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in chosen] == [f"{FULLNAME}-headless"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in chosen[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    for duration in (endpoint["interval"], endpoint["scrapeTimeout"]):
        assert isinstance(duration, str) and duration[-1] in "smh" and duration[:-1].isdigit()
    for key, value in monitor["metadata"]["labels"].items():
        assert isinstance(key, str) and isinstance(value, str) and len(value) <= 63
    labelled = render(*CUSTOM_ARGS, *sets("metrics.serviceMonitor.labels.release=prom"))
    assert one(labelled, "ServiceMonitor")["metadata"]["labels"]["release"] == "prom"


# ---------------------------------------------------------------------------- secrets


def test_every_secret_setting_comes_from_the_secret(rendered: list[dict[str, Any]]):
    secret_name = "otp-secrets" if "Secret" not in {o["kind"] for o in rendered} else FULLNAME
    by_name = {e["name"]: e for e in worker(rendered)["env"]}
    for spec in SECRET_SPECS:
        variable = spec.names[0]
        assert variable in by_name, f"{variable} (secret) is not given to the workers"
        entry = by_name[variable]
        assert "value" not in entry, f"{variable} is a plain value"
        ref = entry["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (secret_name, variable)
    plain = {e["name"] for e in worker(rendered)["env"] if "value" in e}
    assert not plain & SECRET_VARIABLES
    assert not worker(rendered).get("envFrom"), "everything is named: no envFrom"
    for config_map in (o for o in rendered if o["kind"] == "ConfigMap"):
        assert not set(config_map.get("data", {})) & SECRET_VARIABLES
    required = {name for name, ref in secret_refs(rendered).items() if not ref["optional"]}
    assert required == {"OTP_HMAC_SECRET", "NOTIFY_API_TOKEN"}


def test_values_name_each_secret_setting_once():
    assert set(values()["secrets"]) == {spec.names[0] for spec in SECRET_SPECS}
    assert not set(values()["env"]) & SECRET_VARIABLES


def test_the_chart_secret_holds_the_values_given(default_render: list[dict[str, Any]]):
    assert one(default_render, "Secret").get("data") in ({}, None), "nothing given, nothing stored"
    objects = render(
        *sets("secrets.OTP_HMAC_SECRET=a-long-hmac-secret-0123456789", "secrets.SMTP_PASSWORD=pw")
    )
    secret = one(objects, "Secret")
    assert secret["type"] == "Opaque"
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"OTP_HMAC_SECRET": "a-long-hmac-secret-0123456789", "SMTP_PASSWORD": "pw"}

    def checksum(objs: list[dict[str, Any]]) -> str:
        pod = one(objs, "StatefulSet")["spec"]["template"]
        return pod["metadata"]["annotations"]["checksum/secret"]

    assert checksum(objects) != checksum(default_render), "a new secret restarts the workers"


@pytest.mark.parametrize(
    "setting",
    [
        "env.NOTIFY_API_AUTH=disabled",
        # The worker takes named tokens from a file alone (README, Access): a chart that still
        # required the single token would leave such pods in CreateContainerConfigError.
        "env.NOTIFY_API_TOKENS_FILE=/etc/faust-otp/tokens/tokens.json",
    ],
)
def test_api_token_is_optional_where_the_worker_needs_none(setting: str):
    refs = secret_refs(render(*sets(setting)))
    assert refs["NOTIFY_API_TOKEN"]["optional"] is True
    assert refs["OTP_HMAC_SECRET"]["optional"] is False


@pytest.mark.parametrize("variable", sorted(SECRET_VARIABLES))
def test_a_secret_in_plain_env_is_refused(variable: str):
    assert f"env.{variable} is a secret" in render_error(*sets(f"env.{variable}=leaked"))


def test_variables_the_chart_sets_itself_are_refused_in_env():
    for variable in ("DATA_DIR", "WEB_HOST", "WEB_PORT", "TABLE_STANDBY_REPLICAS"):
        assert "is set by the chart" in render_error(*sets(f"env.{variable}=x")), variable
    assert "is not a secret setting" in render_error(*sets("secrets.APP_ID=x"))


# ---------------------------------------------------------------------------- settings


def test_every_variable_the_chart_sets_is_a_setting(rendered: list[dict[str, Any]]):
    assert not unknown_env_names(rendered)
    assert set(values()["env"]) <= ENV_VARS
    # ... and a typo is caught:
    typo = render(*sets("env.KAFKA_BOOTSTRAP_SERVER=kafka:9092"))
    assert unknown_env_names(typo) == {"KAFKA_BOOTSTRAP_SERVER"}


def test_values_defaults_are_the_settings_defaults():
    """Like docker-compose's check (tests/unit/test_packaging.py), against the declarations:
    a default changed in app/settings.py fails here until values.yaml follows. An empty value
    means unset, which is right only for a setting whose default is unset too."""
    wrong = {}
    for variable, value in values()["env"].items():
        spec = BY_NAME[variable]
        if value in ("", None):
            if spec.default not in (None, ""):
                wrong[variable] = ("unset", spec.default)
        elif spec.default is None or spec.parse(str(value)) != spec.parse(spec.default):
            wrong[variable] = (value, spec.default)
    assert not wrong, f"values.yaml env differs from app/settings.py (values, settings): {wrong}"
    web_port = SPEC["web_port"]
    assert values()["webPort"] == web_port.parse(web_port.default)
    assert values()["service"]["port"] == values()["webPort"]


def test_rendered_configuration_is_one_the_worker_accepts(rendered: list[dict[str, Any]]):
    env = {k: v for k, v in plain_env(rendered).items() if k in ENV_VARS}
    secrets = {"OTP_HMAC_SECRET": "x" * 32, "NOTIFY_API_TOKEN": "t"}
    settings = Settings.from_env({**env, **secrets})
    assert settings.data_dir == "/data" and settings.web_host == "0.0.0.0"
    assert settings.web_port == worker(rendered)["ports"][0]["containerPort"]


def test_numbers_in_a_values_file_are_rendered_as_written(tmp_path: Path):
    """Helm reads a values file's numbers as float64 (10485760 would print as 1.048576e+07)."""
    extra = tmp_path / "numbers.yaml"
    extra.write_text("env:\n  ATTACHMENT_MAX_BYTES: 20971520\n  DELIVERY_TIMEOUT_SECONDS: 7.5\n")
    env = plain_env(render("-f", str(extra)))
    assert env["ATTACHMENT_MAX_BYTES"] == "20971520"
    assert env["DELIVERY_TIMEOUT_SECONDS"] == "7.5"


# ---------------------------------------------------------------------------- every option

EVERY_OPTION = """
imagePullSecrets: [{name: registry}]
serviceAccountName: otp
priorityClassName: high
podLabels: {team: otp}
podAnnotations: {note: all-options}
nodeSelector: {pool: workers}
tolerations: [{key: dedicated, operator: Equal, value: otp, effect: NoSchedule}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: pool, operator: In, values: [workers]}]}]
topologySpreadConstraints:
  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway,
     labelSelector: {matchLabels: {app.kubernetes.io/name: faust-otp}}}
persistence:
  storageClassName: fast
  size: 10Gi
  retentionPolicy: {whenDeleted: Retain, whenScaled: Delete}
service: {type: NodePort, annotations: {a: b}}
extraEnv:
  - name: FCM_PROJECT_ID
    valueFrom: {configMapKeyRef: {name: fcm, key: project}}
extraVolumes: [{name: fcm, secret: {secretName: fcm-key}}]
extraVolumeMounts: [{name: fcm, mountPath: /etc/faust-otp/fcm, readOnly: true}]
env:
  FCM_CREDENTIALS_FILE: /etc/faust-otp/fcm/key.json
metrics: {podAnnotations: false, serviceMonitor: {enabled: true, labels: {release: prom}}}
"""


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_option_renders_valid_objects(tmp_path: Path, kube_version: str):
    """The optional blocks (nodeSelector, extraVolumes, ...) are indented right: strict schemas
    reject a field at the wrong level."""
    options = tmp_path / "every-option.yaml"
    options.write_text(EVERY_OPTION)
    objects = render("-f", str(options))
    for obj in objects:
        if obj["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(obj, kube_version, strict=True)
    assert not unknown_env_names(objects)
    pod = one(objects, "StatefulSet")["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"pool": "workers"}
    assert "podAntiAffinity" not in pod["spec"]["affinity"], "the affinity given replaces it"
    assert "prometheus.io/scrape" not in pod["metadata"]["annotations"]
    mounts = {m["mountPath"] for m in worker(objects)["volumeMounts"]}
    assert "/etc/faust-otp/fcm" in mounts


def test_notes_render_with_their_warnings(tmp_path: Path):
    """`helm template` skips NOTES.txt (and `helm install --dry-run` needs a cluster), so a copy
    of the chart renders it through `tpl` as an ordinary template."""
    chart = tmp_path / "faust-otp"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "notes-check.yaml").write_text(
        'notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n'
    )

    def notes(*args: str) -> str:
        result = subprocess.run(
            [HELM_LOCAL, "template", RELEASE, chart, "--show-only", "templates/notes-check.yaml"]
            + list(args),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return yaml.safe_load(result.stdout)["notes"]

    first = notes()
    assert f"statefulset/{FULLNAME}" in first
    assert "OTP_HMAC_SECRET is empty" in first and "KAFKA_BOOTSTRAP_SERVERS is still" in first
    configured = notes(
        *sets("existingSecret=s", "env.KAFKA_BOOTSTRAP_SERVERS=kafka:9092", "replicaCount=10")
    )
    assert "WARNING" not in configured
    assert "10 workers for 8 partitions" in configured
