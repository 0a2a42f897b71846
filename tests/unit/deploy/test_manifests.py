"""Kubernetes manifests and the compose file, validated offline.

Core resources are validated with kubernetes-validate (strict, oldest and newest Kubernetes it knows); the
Prometheus Operator CRDs it has no schema for are skipped with that reason in their test id and checked by hand
below. Probe paths, ports, the shutdown budget and the monitoring wiring are checked against the Dockerfiles,
the Prometheus config and the real ruthctl CLI.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import deploy_support as support
import kubernetes_validate
import monitoring_support as monitoring
import pytest
import yaml

from ruthctl import images
from ruthctl.settings import Settings

REPO = support.REPO
K8S = REPO / "deploy" / "k8s"
COMPOSE = REPO / "deploy" / "compose" / "docker-compose.yml"
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
EXIT_TIMEOUT_S = 30
PRESTOP_S = 5
MARGIN_S = 15


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.parent.name == "gpu":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


def schema_gap(doc: dict[str, Any]) -> str | None:
    """Why kubernetes-validate cannot check this resource, or None when it can."""
    try:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return f"CRD {doc['apiVersion']} {doc['kind']} has no schema in kubernetes-validate"
    except kubernetes_validate.ValidationError:
        return None
    return None


def _params() -> list[Any]:
    params = []
    for label, doc in manifests():
        gap = schema_gap(doc)
        params.append(pytest.param(doc, gap, id=f"{label} [skip: {gap}]" if gap else label))
    return params


def by_kind(kind: str, *, redis: bool = False) -> dict[str, Any]:
    """The one resource of `kind` of the runtime (or, with redis=True, of its stream store, redis.yaml)."""
    [doc] = [
        doc
        for _, doc in manifests()
        if doc["kind"] == kind and doc["metadata"]["name"].startswith("ruth-redis") is redis
    ]
    return doc


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def env_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in spec.get("env", [])}


# ------------------------------------------------------------------ schema validation


@pytest.mark.parametrize(("doc", "gap"), _params())
def test_manifest_validates_against_kubernetes_schemas(doc: dict[str, Any], gap: str | None) -> None:
    if gap:
        pytest.skip(gap)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_core_resources_are_all_validated_not_skipped() -> None:
    validated = {doc["kind"] for _, doc in manifests() if schema_gap(doc) is None}
    assert {
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
    } <= validated
    assert {doc["kind"] for _, doc in manifests() if schema_gap(doc)} == {"ServiceMonitor", "PrometheusRule"}


def test_validation_catches_a_broken_deployment() -> None:
    broken = copy.deepcopy(by_kind("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["httpGet"]["paht"] = "/typo"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomizations_list_existing_files() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        for resource in data.get("resources", []):
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"
        for patch in data.get("patches", []):
            assert (kustomization.parent / patch["path"]).exists(), f"{kustomization}: {patch['path']}"
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "prometheus-adapter-rules.yaml"}


# ------------------------------------------------------------------ probes, ports, shutdown


def test_probes_ask_serves_probe_endpoint_not_tritons_health() -> None:
    triton = container(by_kind("Deployment"), "triton")
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == dict(images.CONTAINER_PORTS)
    assert dict(images.CONTAINER_PORTS) == {"http": 8000, "grpc": 8001, "metrics": 8002, "probe": 8003}
    assert env_of(triton)["RUTH_PROBE_PORT"] == str(ports["probe"]) == str(Settings().ruth_probe_port)
    assert triton["startupProbe"]["httpGet"] == {"path": "/ready", "port": "probe"}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "probe"}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/live", "port": "probe"}
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model loading needs minutes"
    liveness = triton["livenessProbe"]
    assert liveness["timeoutSeconds"] < liveness["periodSeconds"]


def test_termination_grace_covers_prestop_drain_and_margin() -> None:
    deployment = by_kind("Deployment")
    triton = container(deployment, "triton")
    exit_timeout = int(env_of(triton)["GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS"])
    prestop = triton["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == int(prestop[1]) + exit_timeout + MARGIN_S == PRESTOP_S + EXIT_TIMEOUT_S + MARGIN_S


def test_exit_timeout_is_the_same_in_every_deployment_path() -> None:
    dockerfiles = {
        v: support.parse_dockerfile(path.read_text())[-1].args()["EXIT_TIMEOUT_SECONDS"]
        for v, (path, _, _) in support.VARIANTS.items()
    }
    assert set(dockerfiles.values()) == {str(EXIT_TIMEOUT_S)}
    assert images.DEFAULT_EXIT_TIMEOUT_S == EXIT_TIMEOUT_S
    assert images.stop_timeout_for(EXIT_TIMEOUT_S) == EXIT_TIMEOUT_S + MARGIN_S
    compose = yaml.safe_load(COMPOSE.read_text())
    for name in ("ruth-cpu", "ruth-gpu"):
        service = compose["services"][name]
        assert service["environment"]["GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS"] == str(EXIT_TIMEOUT_S)
        assert service["build"]["args"]["EXIT_TIMEOUT_SECONDS"] == str(EXIT_TIMEOUT_S)
        assert service["stop_grace_period"] == f"{EXIT_TIMEOUT_S + MARGIN_S}s"
        assert service["stop_signal"] == "SIGTERM"


def test_containers_run_commands_the_real_cli_accepts() -> None:
    deployment = by_kind("Deployment")
    for name in ("triton", "watch"):
        support.cli_accepts(container(deployment, name)["args"])


def test_pods_run_as_the_images_non_root_user_with_a_locked_down_container() -> None:
    spec = by_kind("Deployment")["spec"]["template"]["spec"]
    user = support.parse_dockerfile(support.VARIANTS["cpu"][0].read_text())[-1].last("USER").value
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}" == user
    assert spec["automountServiceAccountToken"] is False
    for one in spec["containers"]:
        assert one["securityContext"]["allowPrivilegeEscalation"] is False
        assert one["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_python_backend_gets_a_memory_backed_dev_shm_and_the_state_dir_is_shared() -> None:
    deployment = by_kind("Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(deployment, "triton")["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"] == "1Gi"
    watch_mounts = {m["mountPath"]: m["name"] for m in container(deployment, "watch")["volumeMounts"]}
    assert mounts["/var/lib/ruth"] == watch_mounts["/var/lib/ruth"], "watch reads the admin token and registry"
    assert env_of(container(deployment, "triton"))["RUTH_STATE_DIR"] == "/var/lib/ruth"


def test_no_secret_values_in_manifests() -> None:
    for label, doc in manifests():
        assert doc["kind"] != "Secret", label
        for one in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for name, value in env_of(one).items():
                if re.search(r"TOKEN|SECRET|PASSW", name) and not name.endswith("_FILE"):
                    assert isinstance(value, dict) and "secretKeyRef" in value, f"{label}: {name}"
                elif name.endswith("_FILE"):  # a path to a mounted Secret, not a value
                    mounts = {m["mountPath"] for m in one.get("volumeMounts", [])}
                    assert str(Path(value).parent) in mounts, f"{label}: {name} is not on a mounted volume"


# ------------------------------------------------------------------ service, PDB, HPA, adapter


def test_service_exposes_every_container_port_by_name() -> None:
    deployment = by_kind("Deployment")
    named = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    service = by_kind("Service")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == named
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_pdb_and_hpa_target_the_deployment() -> None:
    deployment = by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = by_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ruth-triton"}
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]


def adapter_rule() -> dict[str, Any]:
    config = yaml.safe_load(by_kind("ConfigMap")["data"]["config.yaml"])
    [rule] = config["rules"]
    return dict(rule)


def test_hpa_scales_on_the_queue_time_metric_the_adapter_serves() -> None:
    [metric] = by_kind("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    rule = adapter_rule()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_adapter_query_is_valid_promql_over_real_triton_metrics(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: install it with `apt-get install -y prometheus` (CI's .ci/run does)")
    rule = adapter_rule()
    query = (
        rule["metricsQuery"]
        .replace("<<.GroupBy>>", "namespace, pod")
        .replace("<<.LabelMatchers>>", 'namespace="ruth-ai",pod=~"ruth-triton-.*"')
    )
    assert monitoring.metric_names(query) <= monitoring.TRITON_CPU_FAMILIES
    assert monitoring.metric_names(rule["seriesQuery"]) <= monitoring.TRITON_CPU_FAMILIES
    rules_file = tmp_path / "adapter.yml"
    rules_file.write_text(yaml.safe_dump(monitoring.queries_as_rules({"adapter": query})))
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ Prometheus Operator resources (CRDs)


def test_service_monitor_scrapes_like_the_prometheus_config() -> None:
    """Same job names and relabelling as config/prometheus/prometheus.yml, so rules and dashboard work as is."""
    config = yaml.safe_load(monitoring.PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    monitor = by_kind("ServiceMonitor")
    service_ports = {p["name"]: p["port"] for p in by_kind("Service")["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= by_kind("Service")["metadata"]["labels"].items()
    endpoint_jobs = {}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        [job] = [r["replacement"] for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
        endpoint_jobs[job] = endpoint
    assert set(endpoint_jobs) == set(jobs)
    assert service_ports[endpoint_jobs["triton"]["port"]] == 8002
    camel = {"source_labels": "sourceLabels", "target_label": "targetLabel"}
    expected = [{camel.get(k, k): v for k, v in r.items()} for r in jobs["triton"]["metric_relabel_configs"]]
    assert endpoint_jobs["triton"]["metricRelabelings"] == expected


def test_prometheus_rule_holds_exactly_the_rules_of_alerts_yml() -> None:
    rule = by_kind("PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(monitoring.RULES_FILE.read_text())["groups"]


# ------------------------------------------------------------------ GPU overlay


def strategic_merge(base: Any, patch: Any) -> Any:
    """The subset of kubectl's strategic merge this overlay uses: maps merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch):
        merged_list = list(base)
        for item in patch:
            index = next((i for i, old in enumerate(merged_list) if old.get("name") == item["name"]), None)
            if index is None:
                merged_list.append(item)
            else:
                merged_list[index] = strategic_merge(merged_list[index], item)
        return merged_list
    return patch


def test_gpu_overlay_yields_a_valid_gpu_deployment() -> None:
    patch = yaml.safe_load((K8S / "gpu" / "deployment-patch.yaml").read_text())
    deployment = strategic_merge(by_kind("Deployment"), patch)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(deployment, version, strict=True)
    triton = container(deployment, "triton")
    assert triton["image"].startswith(images.VARIANTS["gpu"].repository + ":")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    for name in ("triton", "watch"):
        assert env_of(container(deployment, name))["RUTH_AI_PROFILE"] == "gpu"
        assert env_of(container(deployment, name))["RUTH_STATE_DIR"] == "/var/lib/ruth"  # base env kept
    assert triton["startupProbe"]["httpGet"] == {"path": "/ready", "port": "probe"}  # base probes kept


def test_the_watch_sidecar_shares_the_pods_process_namespace() -> None:
    """`ruthctl watch` finds dead Python-backend stubs in /proc: without a shared process namespace it can't see
    Triton's (and says so: the `stubs_unseen` violation)."""
    for deployment in (
        by_kind("Deployment"),
        strategic_merge(by_kind("Deployment"), yaml.safe_load((K8S / "gpu" / "deployment-patch.yaml").read_text())),
    ):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["shareProcessNamespace"] is True
        assert env_of(container(deployment, "watch"))["RUTH_TRITON_URL"].startswith("127.0.0.1:")


# ------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_compose_runtimes_have_healthcheck_shm_state_volume_and_profiles(compose: dict[str, Any]) -> None:
    for name, variant in (("ruth-cpu", "cpu"), ("ruth-gpu", "gpu")):
        service = compose["services"][name]
        dockerfile = support.VARIANTS[variant][0]
        assert service["profiles"] == [variant]
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == REPO
        assert (REPO / service["build"]["dockerfile"]) == dockerfile
        image_check = support.parse_dockerfile(dockerfile.read_text())[-1].last("HEALTHCHECK").exec_form()
        assert service["healthcheck"]["test"] == ["CMD", *image_check]
        assert service["shm_size"] == "1g"
        assert service["init"] is True
        assert "ruth-state:/var/lib/ruth" in service["volumes"]
        assert "triton" in service["networks"]["default"]["aliases"]
        assert all(p.startswith("127.0.0.1:") for p in service["ports"]), "published on loopback only"
    devices = compose["services"]["ruth-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "ruth-state" in compose["volumes"]


def test_compose_watch_shares_the_state_and_matches_the_scrape_target(compose: dict[str, Any]) -> None:
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"][0]
        for job in yaml.safe_load(monitoring.PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    }
    assert targets["triton"] == "triton:8002"
    host, port = targets["ruthctl-watch"].split(":")
    for name, runtime in (("watch-cpu", "ruth-cpu"), ("watch-gpu", "ruth-gpu")):
        watch = compose["services"][name]
        assert watch["profiles"] == compose["services"][runtime]["profiles"]
        assert watch["image"] == compose["services"][runtime]["image"]
        assert host in watch["networks"]["default"]["aliases"]
        assert watch["command"][watch["command"].index("--metrics-port") + 1] == port
        assert "ruth-state:/var/lib/ruth" in watch["volumes"]
        # started, not healthy: a model that fails to load keeps the server unready, and watch is what repairs it
        assert watch["depends_on"][runtime]["condition"] == "service_started"
        assert watch["environment"]["RUTH_TRITON_URL"] == "triton:8000"
        assert watch["pid"] == f"service:{runtime}"  # sees Triton's stub processes (dead ones are reloaded)
        support.cli_accepts(watch["command"])


def test_compose_monitoring_mounts_the_repository_configs(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    [config_mount] = [v for v in prometheus["volumes"] if v.endswith(":/etc/prometheus:ro")]
    assert (COMPOSE.parent / config_mount.split(":")[0]).resolve() == monitoring.PROMETHEUS_DIR
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: (COMPOSE.parent / v.split(":")[0]).resolve() for v in grafana["volumes"] if ":" in v}
    assert mounts["/etc/grafana/provisioning"] == REPO / "config/grafana/provisioning"
    provider = yaml.safe_load((REPO / "config/grafana/provisioning/dashboards/ruth.yml").read_text())
    assert mounts[provider["providers"][0]["options"]["path"]] == monitoring.DASHBOARD_FILE.parent
    assert grafana["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"
    for name in ("prometheus", "grafana"):
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", compose["services"][name]["image"]), "pin the image"
        assert "profiles" not in compose["services"][name], "monitoring runs with either profile"


def test_compose_bakes_in_no_secret(compose: dict[str, Any]) -> None:
    password = compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), "must come from the environment"
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"TOKEN|SECRET|PASSW", key) and not key.endswith("_FILE"):
                assert str(value).startswith("${"), key
            elif key.endswith("_FILE"):  # a path to a compose secret, not a value
                assert str(value).startswith("/run/secrets/"), key
                assert Path(value).name in service["secrets"], key


def test_compose_runtime_commands_are_the_images_own(compose: dict[str, Any]) -> None:
    for name in ("ruth-cpu", "ruth-gpu"):
        assert "command" not in compose["services"][name], "the image's CMD (ruthctl serve) runs"


# ------------------------------------------------------------------ stream store (Redis), both deployment paths


def _run_redis_script(script: str, conf: str | None, tmp_path: Path, password: str) -> tuple[Any, int]:
    """Run a manifest's own redis start-up script with the real redis-server, paths moved into tmp_path."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    secret = tmp_path / "password"
    secret.write_text(password + "\n")
    script = re.sub(r"/run/secrets/[\w/-]+", str(secret), script).replace("gosu redis ", "")
    extra = f" --port {port} --bind 127.0.0.1 --dir {tmp_path}"
    if conf is not None:
        conf_path = tmp_path / "redis.conf"
        conf_path.write_text(re.sub(r"(?m)^dir .*$", f"dir {tmp_path}", conf))  # /data is the pod's volume
        script = re.sub(r"/etc/ruth-redis/redis\.conf", str(conf_path), script)
    # redis-server reads stdin for "-" only as its first or last argument: keep it there
    script = script.replace(" - ", f"{extra} - " if conf is not None else f" - {extra} ", 1)
    with open(tmp_path / "redis.out", "wb") as out:
        proc = subprocess.Popen(["sh", "-c", script], stdout=out, stderr=subprocess.STDOUT)
    return proc, port


def _assert_redis_needs_the_password(port: int, password: str, out: Path) -> dict[str, str]:
    import time

    import redis

    deadline = time.monotonic() + 15
    while True:
        try:
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).ping()
            break
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline:
                raise AssertionError((out.parent / "redis.out").read_text()[-2000:]) from exc
            time.sleep(0.1)
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2, decode_responses=True)
    assert client.ping()
    config = client.config_get("*")
    client.close()
    return dict(config)


def test_k8s_replicas_share_the_redis_stream_store_with_a_mounted_password(tmp_path: Path) -> None:
    from python_backends.streams import StreamStoreSpec

    deployment, redis_set = by_kind("Deployment"), by_kind("StatefulSet", redis=True)
    service, config_map = by_kind("Service", redis=True), by_kind("ConfigMap", redis=True)
    env = env_of(container(deployment, "triton"))
    spec = StreamStoreSpec.parse(env["RUTH_STREAM_STORE"])  # what the runtime accepts at start
    assert spec.url == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    assert service["spec"]["selector"] == redis_set["spec"]["selector"]["matchLabels"]
    # the password: one Secret, mounted as a file in both pods, never an env value or an argv word
    secret_of = {
        v["name"]: v["secret"]["secretName"]
        for d in (deployment, redis_set)
        for v in d["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    mounts = {m["mountPath"]: m["name"] for m in container(deployment, "triton")["volumeMounts"]}
    password_dir = str(Path(env["RUTH_STREAM_STORE_PASSWORD_FILE"]).parent)
    assert secret_of[mounts[password_dir]] == "ruth-redis-password"
    redis_container = redis_set["spec"]["template"]["spec"]["containers"][0]
    assert {m["name"] for m in redis_container["volumeMounts"]} >= {"password", "config"}
    assert secret_of["password"] == "ruth-redis-password"
    assert not any("requirepass" in a or "--pass" in a for a in redis_container["command"])
    assert all(e.get("name") != "REDISCLI_AUTH" for e in redis_container.get("env", []))
    # bounded, ephemeral, locked down
    conf = config_map["data"]["redis.conf"]
    assert "maxmemory 256mb" in conf and 'save ""' in conf and "appendonly no" in conf
    assert redis_container["resources"]["limits"]["memory"] == "384Mi"
    assert redis_container["securityContext"]["readOnlyRootFilesystem"] is True
    assert redis_set["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # and the start-up script really gives a password-protected, bounded Redis (the real redis-server)
    password = "k8s-" + tmp_path.name
    proc, port = _run_redis_script(redis_container["args"][0], conf, tmp_path, password)
    try:
        config = _assert_redis_needs_the_password(port, password, tmp_path / "redis.out")
        assert config["maxmemory"] == str(256 * 1024 * 1024) and config["save"] == ""
        assert config["maxmemory-policy"] == "allkeys-lru"
        ps = subprocess.run(["ps", "-o", "args=", "-p", str(proc.pid)], capture_output=True, text=True).stdout
        assert password not in ps
    finally:
        proc.terminate()
        proc.wait(10)


def test_compose_runtime_uses_the_redis_service_with_a_secret_file(compose: dict[str, Any], tmp_path: Path) -> None:
    from python_backends.streams import StreamStoreSpec

    redis_service = compose["services"]["redis"]
    for name in ("ruth-cpu", "ruth-gpu"):
        env = compose["services"][name]["environment"]
        default = re.fullmatch(r"\$\{RUTH_STREAM_STORE:-([^}]+)\}", env["RUTH_STREAM_STORE"])
        assert default is not None
        assert StreamStoreSpec.parse(default.group(1)).url == "redis://redis:6379/0"
        assert compose["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert redis_service["secrets"] == ["redis_password"]
    assert re.fullmatch(r"\$\{RUTH_REDIS_PASSWORD_FILE:\?[^}]+\}", compose["secrets"]["redis_password"]["file"])
    assert re.fullmatch(r"redis:7\.[0-2]\.\d+(-\w+)?", redis_service["image"]), "pinned, BSD-licensed Redis (<= 7.2)"
    password = "compose-" + tmp_path.name
    script = redis_service["command"][0].replace("$$", "$")  # compose's escape for a literal $
    proc, port = _run_redis_script(script, None, tmp_path, password)
    try:
        config = _assert_redis_needs_the_password(port, password, tmp_path / "redis.out")
        assert config["maxmemory"] == str(256 * 1024 * 1024)
    finally:
        proc.terminate()
        proc.wait(10)
