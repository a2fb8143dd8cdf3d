"""The Kubernetes manifests (deploy/): every overlay renders with `kubectl kustomize`, every object
validates strictly against its schema, and the manifests agree with the service they deploy
(settings, endpoints, ports, metrics), so renaming any of those breaks this build, not production.
"""

from __future__ import annotations

import copy
import re
import tomllib
from urllib.parse import urlparse

import kubernetes_validate
import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

from tests.deploy.conftest import (
    DEPLOY_DIR,
    OVERLAYS,
    REPO_ROOT,
    exported_metric_series,
    service_endpoints,
    settings_env_names,
    settings_from_env,
)

# Oldest Kubernetes the manifests support (the preStop `sleep` action is on by default from 1.30)
# and the newest schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())

# Custom resources, checked against models generated from their CRDs (PyPI: cloudcoil-models-keda,
# cloudcoil-models-prometheus-operator).
CRD_MODELS = {"ScaledObject": ScaledObject, "ServiceMonitor": ServiceMonitor}

# Secrets the operator creates before applying an overlay (deploy/README.md says how).
OPERATOR_SECRETS = {"tipo-api-keys", "tipo-vllm-api-key"}

GPU_OVERLAYS = {"gpu", "split"}


# ---------------------------------------------------------------- helpers


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: list[dict], kind: str, name: str) -> dict:
    matches = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} named {name}, found {len(matches)}"
    return matches[0]


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def all_containers(deployment: dict) -> list[dict]:
    spec = pod_spec(deployment)
    return spec.get("initContainers", []) + spec["containers"]


def is_service_container(container: dict) -> bool:
    return container["image"].split(":")[0].endswith("tipo-service") and "fetch" not in container["command"]


def service_containers(objects: list[dict]) -> list[tuple[dict, dict]]:
    """(deployment, container) for every container running `python -m service`."""
    found = [(d, c) for d in of_kind(objects, "Deployment") for c in pod_spec(d)["containers"] if is_service_container(c)]
    assert found, "no container runs the service"
    return found


def vllm_server_containers(objects: list[dict]) -> list[tuple[dict, dict]]:
    return [
        (d, c)
        for d in of_kind(objects, "Deployment")
        for c in pod_spec(d)["containers"]
        if c["image"].split(":")[0].endswith("vllm-openai")
    ]


def container_env(container: dict, objects: list[dict]) -> dict[str, str | None]:
    """The container's environment: ConfigMaps from envFrom, then env (None for valueFrom)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        config_map = named(objects, "ConfigMap", source["configMapRef"]["name"])
        env.update(config_map.get("data", {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def service_settings(container: dict, objects: list[dict]):
    env = container_env(container, objects)
    return settings_from_env({k: v for k, v in env.items() if v is not None})


def volume_for_path(deployment: dict, container: dict, path: str) -> tuple[dict, dict]:
    """(volumeMount, volume) of the mount that holds `path` in this container."""
    mounts = [m for m in container.get("volumeMounts", []) if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{container['name']}: nothing is mounted at {path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    return mount, volume


def flag_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def fetch_destination(init_container: dict) -> str | None:
    command = init_container.get("command", [])
    if "model_store" in command and "fetch" in command:
        return flag_value(command, "--dest")
    return None


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def model_path_of(container: dict, objects: list[dict]) -> str | None:
    """The local model directory a container loads: TIPO_MODEL (in-process engine) or --model."""
    if is_service_container(container):
        settings = service_settings(container, objects)
        return settings.model if settings.engine == "vllm" else None
    if container["image"].split(":")[0].endswith("vllm-openai"):
        return flag_value(container["args"], "--model")
    return None


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_a_deployment_in_its_namespace(rendered, overlay):
    objects = rendered[overlay]
    assert of_kind(objects, "Deployment")
    namespaces = {obj["metadata"]["name"] for obj in of_kind(objects, "Namespace")}
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") in namespaces, f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_objects_validate_strictly(rendered, overlay, version):
    for obj in rendered[overlay]:
        if obj["kind"] in CRD_MODELS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} (k8s {version}): {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"no schema for {obj['kind']}: {error.message}")


def crd_problems(obj: dict) -> list[str]:
    """Validate a custom resource against its CRD's model. A field the model does not know is dropped
    by the round trip, and a value of the wrong type is converted: either shows as a difference."""
    model = CRD_MODELS[obj["kind"]].model_validate(obj)
    round_trip = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    if round_trip == obj:
        return []
    return [f"{obj['kind']}/{obj['metadata']['name']}: schema round trip differs:\n{round_trip}\n!=\n{obj}"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_their_crds(rendered, overlay):
    for obj in rendered[overlay]:
        if obj["kind"] in CRD_MODELS:
            assert crd_problems(obj) == []


def test_validators_reject_what_the_apiserver_would(rendered):
    """The checks above are strict: an unknown field or a wrongly typed value fails them."""
    deployment = copy.deepcopy(of_kind(rendered["gpu"], "Deployment")[0])
    pod_spec(deployment)["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)

    scaled_object = copy.deepcopy(of_kind(rendered["gpu"], "ScaledObject")[0])
    scaled_object["spec"]["minReplicas"] = 2  # HPA's spelling; KEDA's is minReplicaCount
    assert crd_problems(scaled_object)
    scaled_object = copy.deepcopy(of_kind(rendered["gpu"], "ScaledObject")[0])
    scaled_object["spec"]["maxReplicaCount"] = "8"
    assert crd_problems(scaled_object)

    monitor = copy.deepcopy(of_kind(rendered["gpu"], "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["metricsPath"] = "/metrics"
    assert crd_problems(monitor)


# ---------------------------------------------------------------- agreement with the service


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_environment_names_and_values_are_settings(rendered, overlay):
    objects = rendered[overlay]
    known = settings_env_names()
    for _, container in service_containers(objects):
        env = container_env(container, objects)
        tipo_names = {name for name in env if name.startswith("TIPO_")}
        assert tipo_names - known == set(), f"not settings of service/settings.py: {sorted(tipo_names - known)}"
        settings = service_settings(container, objects)  # raises on an invalid value
        assert settings.host == "0.0.0.0", "the service must listen on all interfaces in a pod"
    for config_map in of_kind(objects, "ConfigMap"):
        assert set(config_map["data"]) <= known, f"{config_map['metadata']['name']}: {set(config_map['data']) - known}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports_match_the_service_endpoints(rendered, overlay):
    objects = rendered[overlay]
    endpoints = service_endpoints()
    for _, container in service_containers(objects):
        settings = service_settings(container, objects)
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {"http": settings.port}
        assert container["startupProbe"]["httpGet"]["path"] == endpoints["ready"]
        assert container["readinessProbe"]["httpGet"]["path"] == endpoints["ready"]
        assert container["livenessProbe"]["httpGet"]["path"] == endpoints["live"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == "http"
        # Loading a model takes minutes: the startup probe must allow at least 5 of them.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    for _, container in vllm_server_containers(objects):
        assert flag_value(container["args"], "--port") == str(container["ports"][0]["containerPort"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_service_monitors_reach_the_pods(rendered, overlay):
    objects = rendered[overlay]
    for service in of_kind(objects, "Service"):
        pods = [d for d in of_kind(objects, "Deployment") if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert pods, f"Service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            for deployment in pods:
                names = {p["name"] for c in pod_spec(deployment)["containers"] for p in c.get("ports", [])}
                assert port["targetPort"] in names
    metrics_path = service_endpoints()["metrics"]
    for monitor in of_kind(objects, "ServiceMonitor"):
        services = [s for s in of_kind(objects, "Service") if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert len(services) == 1, f"ServiceMonitor {monitor['metadata']['name']} selects {len(services)} Services"
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
            assert endpoint["path"] == metrics_path  # the service's and vLLM's both live at /metrics


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_in_flight_requests_can_finish_on_shutdown(rendered, overlay):
    objects = rendered[overlay]
    for deployment, container in service_containers(objects) + vllm_server_containers(objects):
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = service_settings(container, objects).shutdown_grace_s if is_service_container(container) else 30
        assert grace >= pre_stop + drain + 5, f"{deployment['metadata']['name']}: {grace} s < {pre_stop} + {drain} + 5"


# ---------------------------------------------------------------- pods


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(rendered, overlay):
    for deployment in of_kind(rendered[overlay], "Deployment"):
        spec = pod_spec(deployment)
        name = deployment["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        # Kubernetes' service links would inject TIPO_PORT=tcp://... (Service `tipo`) into the settings.
        assert spec["enableServiceLinks"] is False
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler owns the replica count"
        for container in all_containers(deployment):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, f"{name}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, f"{name}/{container['name']}"
            assert context["capabilities"] == {"drop": ["ALL"]}, f"{name}/{container['name']}"
            assert context.get("privileged", False) is False
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name}/{container['name']} {bound}"
            # With a read-only root filesystem, /tmp must be a volume (HOME=/tmp holds the caches).
            volume_for_path(deployment, container, "/tmp")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_are_requested_where_vllm_runs_on_cuda(rendered, overlay):
    objects = rendered[overlay]
    gpu_containers = []
    for deployment in of_kind(objects, "Deployment"):
        for container in pod_spec(deployment)["containers"]:
            requests = container["resources"]["requests"]
            limits = container["resources"]["limits"]
            if "nvidia.com/gpu" in requests or "nvidia.com/gpu" in limits:
                assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"] == "1"
                assert any(t.get("key") == "nvidia.com/gpu" for t in pod_spec(deployment).get("tolerations", []))
                gpu_containers.append(container)
            if is_service_container(container):
                settings = service_settings(container, objects)
                on_gpu = settings.engine == "vllm" and settings.device != "cpu"
                assert on_gpu == ("nvidia.com/gpu" in requests), container["name"]
    assert bool(gpu_containers) == (overlay in GPU_OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vllm_gets_shared_memory(rendered, overlay):
    objects = rendered[overlay]
    for deployment in of_kind(objects, "Deployment"):
        for container in pod_spec(deployment)["containers"]:
            if model_path_of(container, objects) is None:
                continue
            _, volume = volume_for_path(deployment, container, "/dev/shm")
            assert volume["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_comes_from_a_volume_filled_by_model_store_fetch(rendered, overlay):
    objects = rendered[overlay]
    claims = {pvc["metadata"]["name"] for pvc in of_kind(objects, "PersistentVolumeClaim")}
    loaders = 0
    for deployment in of_kind(objects, "Deployment"):
        for container in pod_spec(deployment)["containers"]:
            model = model_path_of(container, objects)
            if model is None:
                continue
            loaders += 1
            mount, volume = volume_for_path(deployment, container, model)
            assert mount.get("readOnly") is True, "the server mounts the model read-only"
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            else:
                assert "volumeClaimTemplate" in volume["ephemeral"]
            fetchers = [c for c in pod_spec(deployment).get("initContainers", []) if fetch_destination(c) == model]
            assert len(fetchers) == 1, f"no init container runs `model_store fetch ... --dest {model}`"
            fetch_mount, _ = volume_for_path(deployment, fetchers[0], model)
            assert fetch_mount["name"] == mount["name"] and not fetch_mount.get("readOnly")
            # The server never downloads: only the fetch job lifts the image's HF_HUB_OFFLINE=1.
            assert container_env(container, objects).get("HF_HUB_OFFLINE", "1") == "1"
    assert loaders, "no container loads a model"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_keys_come_from_a_mounted_secret(rendered, overlay):
    objects = rendered[overlay]
    for deployment, container in service_containers(objects):
        keys_file = service_settings(container, objects).api_keys_file
        mount, volume = volume_for_path(deployment, container, keys_file)
        assert mount["readOnly"] is True
        file_name = keys_file[len(mount["mountPath"].rstrip("/")) + 1:]
        assert file_name in {item["path"] for item in volume["secret"]["items"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_referenced_secrets_exist_or_are_created_by_the_operator(rendered, overlay):
    objects = rendered[overlay]
    rendered_secrets = {s["metadata"]["name"] for s in of_kind(objects, "Secret")}
    readme = (DEPLOY_DIR / "README.md").read_text()
    for deployment in of_kind(objects, "Deployment"):
        referenced = {v["secret"]["secretName"] for v in pod_spec(deployment)["volumes"] if "secret" in v}
        for container in all_containers(deployment):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    referenced.add(ref["name"])
        for name in referenced - rendered_secrets:
            assert name in OPERATOR_SECRETS and name in readme, f"Secret {name}: neither rendered nor documented"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_has_a_disruption_budget_and_a_network_policy(rendered, overlay):
    objects = rendered[overlay]
    for deployment in of_kind(objects, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        for kind, selector_path in (("PodDisruptionBudget", ("selector",)), ("NetworkPolicy", ("podSelector",))):
            matching = [o for o in of_kind(objects, kind) if selects(o["spec"][selector_path[0]]["matchLabels"], labels)]
            assert len(matching) == 1, f"{deployment['metadata']['name']}: {len(matching)} {kind}"


# ---------------------------------------------------------------- scaling


def prometheus_queries(scaled_object: dict) -> list[str]:
    return [t["metadata"]["query"] for t in scaled_object["spec"]["triggers"] if t["type"] == "prometheus"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers_target_real_deployments_and_real_metrics(rendered, overlay):
    objects = rendered[overlay]
    deployments = {d["metadata"]["name"] for d in of_kind(objects, "Deployment")}
    services = {s["metadata"]["name"] for s in of_kind(objects, "Service")}
    exported = exported_metric_series()
    targets = []
    for scaler in of_kind(objects, "ScaledObject") + of_kind(objects, "HorizontalPodAutoscaler"):
        target = scaler["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", target["name"]) and target["name"] in deployments
        targets.append(target["name"])
    assert len(targets) == len(set(targets)), "two autoscalers fight over one Deployment"
    for scaled_object in of_kind(objects, "ScaledObject"):
        namespace = scaled_object["metadata"]["namespace"]
        for query in prometheus_queries(scaled_object):
            for metric in re.findall(r"\b(tipo_[a-z_]+|vllm:[a-z_]+)\{", query):
                if metric.startswith("tipo_"):
                    assert metric in exported, f"{metric} is not a metric of service/metrics.py"
            assert f'namespace="{namespace}"' in query, f"query does not follow the namespace: {query}"
            service = re.search(r'service="([^"]+)"', query)
            assert service and service.group(1) in services, query
    if overlay in GPU_OVERLAYS:
        assert targets, "production overlays autoscale"


def test_gpu_overlay_scales_on_the_service_queue(rendered):
    (scaled_object,) = of_kind(rendered["gpu"], "ScaledObject")
    queries = " ".join(prometheus_queries(scaled_object))
    assert "tipo_requests_waiting" in queries


def test_split_overlay_scales_gateways_on_cpu_and_vllm_on_its_queue(rendered):
    objects = rendered["split"]
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    gateway_name = service_containers(objects)[0][0]["metadata"]["name"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway_name
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (scaled_object,) = of_kind(objects, "ScaledObject")
    vllm_name = vllm_server_containers(objects)[0][0]["metadata"]["name"]
    assert scaled_object["spec"]["scaleTargetRef"]["name"] == vllm_name
    assert "vllm:num_requests_waiting" in " ".join(prometheus_queries(scaled_object))


# ---------------------------------------------------------------- split: gateway -> vLLM server


def test_split_gateway_calls_the_vllm_service(rendered):
    objects = rendered["split"]
    ((gateway, container),) = service_containers(objects)
    settings = service_settings(container, objects)
    assert settings.engine == "remote"
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert not pod_spec(gateway).get("initContainers"), "the gateway loads no model"
    url = urlparse(settings.remote_url)
    service = named(objects, "Service", url.hostname)
    assert url.port == service["spec"]["ports"][0]["port"] and url.path == "/v1"
    ((_, vllm),) = vllm_server_containers(objects)
    args = vllm["args"]
    assert flag_value(args, "--served-model-name") == settings.remote_model
    assert flag_value(args, "--max-model-len") == str(settings.max_model_len) == "1024"
    assert flag_value(args, "--generation-config") == "vllm"
    # The gateway's key for the vLLM server and the server's own key come from the same Secret.
    gateway_key = next(e for e in container["env"] if e["name"] == "TIPO_REMOTE_API_KEY")
    server_key = next(e for e in vllm["env"] if e["name"] == "VLLM_API_KEY")
    assert gateway_key["valueFrom"] == server_key["valueFrom"]


def test_vllm_image_matches_the_gpu_pin(rendered):
    """The vLLM server image, the Dockerfile's GPU base and pyproject's `gpu` extra name one version."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    (pin,) = [r for r in pyproject["project"]["optional-dependencies"]["gpu"] if r.startswith("vllm==")]
    version = pin.split("==")[1]
    ((_, vllm),) = vllm_server_containers(rendered["split"])
    assert vllm["image"] == f"vllm/vllm-openai:v{version}"
    assert f"vllm/vllm-openai:v{version}" in (REPO_ROOT / "Dockerfile").read_text()


def test_overlays_run_the_image_built_for_them(rendered):
    for overlay, suffix in (("gpu", "-gpu"), ("cpu", "-cpu"), ("split", "-cpu")):
        for _, container in service_containers(rendered[overlay]):
            assert container["image"].endswith(suffix), f"{overlay}: {container['image']}"
