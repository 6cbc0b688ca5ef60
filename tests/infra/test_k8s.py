"""The Kubernetes manifests (infra/k8s, issue #17): every overlay built with the real
kustomize (``scripts/kustomize``) and every document validated offline and strictly
(unknown fields are errors): the built-in kinds with kubernetes-validate against the
Kubernetes schemas, the custom resources (Strimzi KafkaTopic, prometheus-operator
ServiceMonitor and PrometheusRule), for which it has no schema, with jsonschema against
the structure below, transcribed from the operators' CRDs for the fields used here.

Then what no schema can say: the bridge's replicas, probes and drain; the budget
selecting it; the daemons' slots equal on both sides (the bridge's settings parsed by
its own ``load_settings``); every Secret and ConfigMap key a pod reads exists; the
topics are ``ingest.TOPICS``; the rules are infra/prometheus's; the generated files
are current. Without kustomize the tests skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import base64
import copy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kube_validate  # type: ignore[import-untyped]

from alb import k8s_topics
from bridge.settings import load_settings
from ingest.topics import TOPICS
from predictor.stream.settings import load_settings as load_predictor_settings
from tests.services._env import unavailable

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
OVERLAYS = ("dev", "prod")
#: The oldest Kubernetes the manifests are for (the preStop `sleep` action is on by
#: default from 1.30) and the newest kubernetes-validate has schemas for.
KUBE_VERSIONS = ("1.30", kube_validate.latest_version())
Doc = dict[str, Any]

# -- the custom resources' schemas -------------------------------------------------------

_DURATION = {
    "type": "string",
    "pattern": "^(0|"
    + "".join(rf"(([0-9]+){u})?" for u in ("y", "w", "d", "h", "m", "s", "ms"))
    + ")$",
}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _STRINGS,
        "annotations": _STRINGS,
    },
}


def _resource(api_version: str, kind: str, spec: Doc) -> Doc:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


#: Strimzi 1.x's kafkatopics.kafka.strimzi.io, version v1.
KAFKA_TOPIC = _resource(
    "kafka.strimzi.io/v1",
    "KafkaTopic",
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "topicName": {"type": "string"},
            "partitions": {"type": "integer", "minimum": 1},
            "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
            "config": {
                "type": "object",
                "additionalProperties": {"type": ["string", "integer", "boolean"]},
            },
        },
    },
)
KAFKA_TOPIC["properties"]["metadata"] = copy.deepcopy(_METADATA)
KAFKA_TOPIC["properties"]["metadata"]["required"] = ["name", "labels"]
KAFKA_TOPIC["properties"]["metadata"]["properties"]["labels"] = {
    **_STRINGS,
    "required": ["strimzi.io/cluster"],  # the topic operator ignores a topic without it
}

_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRINGS,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string"},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

#: prometheus-operator 0.93's servicemonitors.monitoring.coreos.com, v1.
SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["endpoints", "selector"],
        "properties": {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
            },
            "jobLabel": {"type": "string"},
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                    },
                },
            },
        },
    },
)

#: prometheus-operator 0.93's prometheusrules.monitoring.coreos.com, v1 (a rule is an
#: alert or a recording, as Prometheus requires).
PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": _DURATION,
                        "query_offset": _DURATION,
                        "limit": {"type": "integer"},
                        "labels": _STRINGS,
                        "rules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["expr"],
                                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                "properties": {
                                    "alert": {"type": "string"},
                                    "record": {"type": "string"},
                                    "expr": {"type": ["string", "integer"]},
                                    "for": _DURATION,
                                    "keep_firing_for": _DURATION,
                                    "labels": _STRINGS,
                                    "annotations": _STRINGS,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
)

CRD_SCHEMAS: dict[tuple[str, str], Doc] = {
    ("kafka.strimzi.io/v1", "KafkaTopic"): KAFKA_TOPIC,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}


def validation_errors(doc: Doc) -> list[str]:
    """What is wrong with one document (empty when it validates): built-in kinds against
    every version in KUBE_VERSIONS, custom resources against CRD_SCHEMAS."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    crd = CRD_SCHEMAS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if crd is not None:
        validator = jsonschema.Draft202012Validator(crd)
        return [
            f"{where}: {'.'.join(map(str, e.path))}: {e.message}"
            for e in validator.iter_errors(doc)
        ]
    errors = []
    for version in KUBE_VERSIONS:
        try:
            kube_validate.validate(doc, version, strict=True)
        except kube_validate.ValidationError as e:
            errors.append(f"{where} ({version}): {'.'.join(map(str, e.path))}: {e.message}")
        except kube_validate.SchemaNotFoundError as e:
            errors.append(f"{where}: {e.message} (and no CRD schema in this test)")
    return errors


# -- building ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kustomize() -> str:
    done = subprocess.run(
        [str(ROOT / "scripts" / "kustomize"), "path"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        unavailable("kustomize not found: run `scripts/kustomize install` (make services)")
    return done.stdout.strip()


@pytest.fixture(scope="module")
def built(kustomize: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    """Each overlay's documents, built from a copy of infra/k8s where prod's
    secrets.env is its committed example (a developer's own secrets.env is not read)."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets.env"))
    prod = tree / "overlays" / "prod"
    shutil.copy(prod / "secrets.env.example", prod / "secrets.env")
    out = {}
    for overlay in OVERLAYS:
        done = subprocess.run(
            [kustomize, "build", str(tree / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"kustomize build {overlay}: {done.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return out


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def docs(built: dict[str, list[Doc]], overlay: str) -> list[Doc]:
    return built[overlay]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def generated(docs: list[Doc], kind: str, name: str) -> Doc:
    """A ConfigMap or Secret from a kustomize generator (``name-<hash>``)."""
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"].rsplit("-", 1)[0] == name]
    assert len(found) == 1, f"{len(found)} {kind} generated as {name}"
    return found[0]


def container(workload: Doc, name: str) -> Doc:
    found: list[Doc] = [
        c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    assert len(found) == 1, f"{workload['metadata']['name']}: no container {name}"
    return found[0]


def workloads(docs: list[Doc]) -> Iterator[Doc]:
    yield from (d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))


def _data(doc: Doc) -> dict[str, str]:
    if doc["kind"] == "Secret":
        raw = {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
        return {**raw, **doc.get("stringData", {})}
    return dict(doc.get("data", {}))


def env_of(docs: list[Doc], workload: Doc, name: str) -> dict[str, str]:
    """The container's environment as the kubelet would make it: envFrom, then env, with
    every ConfigMap and Secret reference resolved; a missing one fails the test."""
    sources = {(d["kind"], d["metadata"]["name"]): _data(d) for d in docs if "data" in d}
    ref_kinds = {"configMapKeyRef": "ConfigMap", "secretKeyRef": "Secret"}
    env: dict[str, str] = {}
    c = container(workload, name)
    for src in c.get("envFrom", []):
        for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if field in src:
                ref = src[field]["name"]
                assert (kind, ref) in sources, f"{name}: envFrom {kind} {ref} is not in the build"
                env.update(sources[kind, ref])
    pod = workload["metadata"]["name"] + "-0"
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", var
            env[var["name"]] = pod
            continue
        ((field, ref),) = source.items()
        kind = ref_kinds[field]
        data = sources.get((kind, ref["name"]))
        assert data is not None, f"{var['name']}: {kind} {ref['name']} is not in the build"
        assert ref["key"] in data, f"{var['name']}: {kind} {ref['name']} has no key {ref['key']}"
        env[var["name"]] = data[ref["key"]]
    return env


# -- the tests -----------------------------------------------------------------------


def test_the_generated_files_are_current() -> None:
    for path, text in k8s_topics.renderings(ROOT).items():
        assert path.read_text() == text, f"{path} is stale: run `python -m alb.k8s_topics`"
    done = subprocess.run(
        [sys.executable, "-m", "alb.k8s_topics", "--check", "--root", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_every_document_validates_strictly(docs: list[Doc]) -> None:
    kinds = {d["kind"] for d in docs}
    assert {"KafkaTopic", "ServiceMonitor", "PrometheusRule", "StatefulSet"} <= kinds
    errors = [e for d in docs for e in validation_errors(d)]
    assert not errors, "\n".join(errors)


def test_the_validation_rejects_unknown_fields(built: dict[str, list[Doc]]) -> None:
    docs = built["prod"]
    bridge = copy.deepcopy(one(docs, "Deployment", "alb-bridge"))
    container(bridge, "bridge")["readinessProbe"]["httpget"] = {"path": "/readyz"}
    assert any("'httpget' was unexpected" in e for e in validation_errors(bridge))
    for kind in ("KafkaTopic", "ServiceMonitor", "PrometheusRule"):
        doc = copy.deepcopy(of_kind(docs, kind)[0])
        doc["spec"]["partition"] = 3
        assert validation_errors(doc), kind
    rule = copy.deepcopy(one(docs, "PrometheusRule", "alb-rules"))
    rule["spec"]["groups"][0]["rules"][0]["record"] = "both:alert:and_record"
    assert validation_errors(rule)


def test_the_bridge_runs_replicas_with_probes_and_a_drain(docs: list[Doc], overlay: str) -> None:
    bridge = one(docs, "Deployment", "alb-bridge")
    replicas = bridge["spec"]["replicas"]
    assert replicas >= 2
    if overlay == "prod":
        assert replicas == 3
    c = container(bridge, "bridge")
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = env_of(docs, bridge, "bridge")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == int(env["ALB_PORT"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", ports["http"]), probe
    # The pod leaves the endpoints during the preStop sleep, then SIGTERM drains for
    # ALB_DRAIN_TIMEOUT; the kubelet's grace period must cover both, with room for the
    # events' close and the leases handed over.
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep >= 1
    drain = float(env["ALB_DRAIN_TIMEOUT"])
    grace = bridge["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > sleep + drain, (grace, sleep, drain)
    assert env["ALB_REPLICA_ID"] == "alb-bridge-0"  # from the pod name (downward API)
    assert bridge["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind


def test_a_disruption_budget_keeps_bridges_up(docs: list[Doc], overlay: str) -> None:
    bridge = one(docs, "Deployment", "alb-bridge")
    pod_labels = bridge["spec"]["template"]["metadata"]["labels"]
    budgets = [
        p
        for p in of_kind(docs, "PodDisruptionBudget")
        if p["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ]
    assert len(budgets) == 1
    min_available = budgets[0]["spec"]["minAvailable"]
    assert 1 <= min_available < bridge["spec"]["replicas"]
    if overlay == "prod":
        assert min_available == 2


def test_the_daemons_slots_are_the_same_on_both_sides(docs: list[Doc]) -> None:
    """The bridge's own settings parser reads its environment; every daemon it gets has
    Ollama's OLLAMA_NUM_PARALLEL / OLLAMA_MAX_LOADED_MODELS, and ALB_DAEMONS names
    exactly the StatefulSet's pods."""
    ollama = one(docs, "StatefulSet", "ollama")
    ollama_env = env_of(docs, ollama, "ollama")
    bridge_env = env_of(docs, one(docs, "Deployment", "alb-bridge"), "bridge")
    assert "parallel=" not in bridge_env["ALB_DAEMONS"]  # one place: the alb-fleet ConfigMap
    assert "max_loaded=" not in bridge_env["ALB_DAEMONS"]
    settings = load_settings(bridge_env)
    specs = settings.daemon_specs()
    assert settings.parallel == int(ollama_env["OLLAMA_NUM_PARALLEL"])
    assert settings.max_loaded == int(ollama_env["OLLAMA_MAX_LOADED_MODELS"])
    for spec in specs:
        assert spec.parallel == int(ollama_env["OLLAMA_NUM_PARALLEL"]), spec.name
        assert spec.max_loaded == int(ollama_env["OLLAMA_MAX_LOADED_MODELS"]), spec.name
    service = ollama["spec"]["serviceName"]
    port = one(docs, "Service", service)["spec"]["ports"][0]["port"]
    pods = [f"ollama-{i}" for i in range(ollama["spec"]["replicas"])]
    assert [s.name for s in specs] == pods
    for spec in specs:
        url = urlsplit(spec.url)
        assert (url.hostname, url.port) == (f"{spec.name}.{service}", port), spec.url
    assert one(docs, "Service", service)["spec"]["clusterIP"] == "None"
    assert ollama_env["OLLAMA_KEEP_ALIVE"] == "-1"  # the bridge unloads idle models itself


def test_the_bridge_starts_with_keys_redis_and_kafka(docs: list[Doc]) -> None:
    bridge_env = env_of(docs, one(docs, "Deployment", "alb-bridge"), "bridge")
    settings = load_settings(bridge_env)  # refuses an open bridge on 0.0.0.0
    assert settings.auth == "keys"
    assert settings.host == "0.0.0.0"
    assert not settings.allow_open
    for secret in ("ALB_REDIS_URL", "ALB_ADMIN_TOKEN", "ALB_KEYS_PEPPER"):
        assert bridge_env[secret], secret
        value = getattr(settings, secret.removeprefix("ALB_").lower())
        assert value is not None, secret
    assert bridge_env["ALB_REDIS_URL"].startswith(("redis://", "rediss://"))
    predictor = env_of(docs, one(docs, "Deployment", "alb-predictor"), "predictor")
    predictor_settings = load_predictor_settings(predictor)
    assert predictor_settings.bootstrap_servers == settings.kafka_bootstrap_servers != ""
    assert container(one(docs, "Deployment", "alb-predictor"), "predictor")["command"] == [
        "alb",
        "predictor",
    ]


def test_every_secret_and_config_key_a_pod_reads_exists(docs: list[Doc]) -> None:
    for workload in workloads(docs):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            env_of(docs, workload, c["name"])  # asserts on a missing Secret, ConfigMap or key
    secret = generated(docs, "Secret", "alb-secrets")
    assert set(_data(secret)) >= {"ALB_REDIS_URL", "ALB_ADMIN_TOKEN", "ALB_KEYS_PEPPER"}


def test_ollama_has_a_gpu_and_a_model_volume(docs: list[Doc], overlay: str) -> None:
    ollama = one(docs, "StatefulSet", "ollama")
    c = container(ollama, "ollama")
    limits = c["resources"]["limits"]
    if overlay == "prod":
        assert limits["nvidia.com/gpu"] == 1
        affinity = ollama["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"  # one per GPU node
    else:
        assert "nvidia.com/gpu" not in limits  # dev: a kind cluster, CPU only
        assert ollama["spec"]["replicas"] == 1
    (claim,) = ollama["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/root/.ollama"
    assert c["image"].startswith("ollama/ollama:0.")


def test_every_image_is_pinned(docs: list[Doc]) -> None:
    for workload in workloads(docs):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag, image
            assert tag != "latest", image


def test_the_kafka_topics_are_ingests(docs: list[Doc], overlay: str) -> None:
    topics = {t["metadata"]["name"]: t for t in of_kind(docs, "KafkaTopic")}
    assert sorted(topics) == sorted(s.name for s in TOPICS)
    for spec in TOPICS:
        topic = topics[spec.name]
        replicas = topic["spec"]["replicas"]
        assert replicas == (3 if overlay == "prod" else 1)
        assert topic["spec"]["partitions"] == spec.partitions, spec.name
        assert topic["spec"]["config"] == k8s_topics.topic_configs(spec, replicas), spec.name
        config = dict(topic["spec"]["config"])
        assert config.pop("min.insync.replicas", None) == ("2" if replicas >= 3 else None)
        assert config == spec.configs()
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == k8s_topics.KAFKA_CLUSTER
    bridge_env = env_of(docs, one(docs, "Deployment", "alb-bridge"), "bridge")
    host = bridge_env["ALB_KAFKA_BOOTSTRAP_SERVERS"].split(":")[0]
    assert host == f"{k8s_topics.KAFKA_CLUSTER}-kafka-bootstrap"
    assert bridge_env["ALB_KAFKA_CREATE_TOPICS"] == "false"  # Strimzi owns them
    predictor = env_of(docs, one(docs, "Deployment", "alb-predictor"), "predictor")
    replicas = {t["spec"]["replicas"] for t in topics.values()}
    assert {int(predictor["ALB_PREDICTOR_REPLICATION_FACTOR"])} == replicas  # its own topics


def test_the_prometheus_rule_is_the_rule_files(docs: list[Doc]) -> None:
    rule = one(docs, "PrometheusRule", k8s_topics.PROMETHEUS_RULE_NAME)
    files = [ROOT / p for p in k8s_topics.RULE_FILES]
    expected = [g for f in files for g in yaml.safe_load(f.read_text())["groups"]]
    assert rule["spec"]["groups"] == expected
    assert sum(len(g["rules"]) for g in expected) > 20


def test_the_service_monitor_scrapes_the_bridges_metrics(docs: list[Doc]) -> None:
    (monitor,) = of_kind(docs, "ServiceMonitor")
    selected = [
        s
        for s in of_kind(docs, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items()
        <= s["metadata"].get("labels", {}).items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["alb-bridge"]
    service = selected[0]
    bridge = one(docs, "Deployment", "alb-bridge")
    pod_labels = bridge["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    target = ports[endpoint["port"]]["targetPort"]
    assert target in {p["name"] for p in container(bridge, "bridge")["ports"]}
