#!/usr/bin/env python3
"""Offline checks of everything in deploy/: the image recipe, the Kubernetes manifests and
the HAProxy configuration.

Run through deploy/validate.sh, which installs the tools first. Every tool this script needs
must be present: a missing one is a failure, never a skipped check, so that a green run
always means every check ran.

What is checked:
- kustomization.yaml lists files that exist, and every manifest in the folder is listed
  (or is the example Secret, which must never be applied by `kubectl apply -k`);
- the core kinds validate strictly (unknown fields are errors) against the Kubernetes
  OpenAPI schemas shipped by the pinned kubernetes-validate, for the oldest and newest
  supported Kubernetes versions;
- the Gateway API, Envoy Gateway and KEDA kinds, which have no schema there, carry the
  fields they need with the values the service requires, and no misspelt keys in the parts
  written here (the KEDA ScaledObject's HPA behavior is checked against the HPA schema);
- the manifests agree with each other and with the service: selectors, ports, names,
  probe paths, the Secret key, environment variables the service really reads, the drain
  arithmetic, the pod's security settings, the metric the autoscaler queries;
- the Dockerfile builds the service's real binary with the azure feature and runs it as a
  non-root user;
- haproxy accepts deploy/haproxy.cfg, and the configuration does what it promises when run
  in front of three stub replicas on loopback: the same X-Session-Id always reaches the same
  replica; in DRAIN a replica keeps its calls and takes no new one; in MAINT exactly its
  calls move, each once, and it takes no request; put back, it takes no live call back but
  its share of new ones; a draining replica's requests are retried on another one without
  an error and those calls stay there; a replica joining takes traffic only once ready, no
  live call, and about a quarter of the new calls.
"""

from __future__ import annotations

import fnmatch
import http.client
import importlib.metadata
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("FAIL: PyYAML is not installed (run deploy/validate.sh, which installs it)")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"

# The oldest Kubernetes the manifests support (the preStop sleep action is on by default
# from 1.30) and the newest whose schemas the pinned kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
# Kept equal to the version deploy/validate.sh installs: its bundled schemas are the ones
# the manifests are checked against.
KUBERNETES_VALIDATE_VERSION = "1.37.0"
CORE_KINDS = {
    "Namespace",
    "ServiceAccount",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "Secret",
    "ConfigMap",
}
# The pools' own shutdown timeout (pool-core's PoolConfig default), which the service
# spends after SHUTDOWN_GRACE closing connections.
POOL_SHUTDOWN_SECONDS = 5
SESSION_HEADER = "X-Session-Id"
# Endpoints that are websockets open for a whole call: the route must not time them out.
WEBSOCKET_PATHS = ["/api/v1/stt", "/api/v1/tts/stream"]

checks_passed = 0


class Failure(Exception):
    """A check that did not hold; the message says which and why."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


def ok(message: str) -> None:
    global checks_passed
    checks_passed += 1
    print(f"ok: {message}", flush=True)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Failure(f"required tool `{name}` is not on PATH (deploy/validate.sh installs it)")
    return path


def load_documents(path: Path) -> list[dict]:
    with path.open() as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    check(docs != [], f"{path.relative_to(ROOT)} holds no YAML document")
    for d in docs:
        check(isinstance(d, dict), f"{path.relative_to(ROOT)}: a document is not a mapping")
    return docs


def dig(obj, *keys, where: str):
    """obj[k1][k2]..., failing with the dotted path when a key is missing."""
    cur = obj
    trail = []
    for k in keys:
        trail.append(str(k))
        if isinstance(cur, dict) and k in cur:
            cur = cur[k]
        elif isinstance(cur, list) and isinstance(k, int) and k < len(cur):
            cur = cur[k]
        else:
            raise Failure(f"{where}: missing {'.'.join(trail)}")
    return cur


def only_keys(obj: dict, allowed: set[str], where: str) -> None:
    unknown = set(obj) - allowed
    check(not unknown, f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def service_env_vars() -> set[str]:
    """The environment variables the service reads, from its clap definitions."""
    source = (ROOT / "service/src/config.rs").read_text()
    names = set(re.findall(r'env = "([A-Z0-9_]+)"', source))
    check(len(names) > 10, "could not read the service's env names from service/src/config.rs")
    return names


def service_binary_name() -> str:
    manifest = (ROOT / "service/Cargo.toml").read_text()
    m = re.search(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', manifest)
    check(m is not None, "service/Cargo.toml declares no [[bin]] name")
    return m.group(1)


def service_features() -> set[str]:
    manifest = (ROOT / "service/Cargo.toml").read_text()
    section = manifest.split("[features]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([a-z0-9_-]+)\s*=", section, flags=re.M))


# ---------------------------------------------------------------------------------------
# Kubernetes


def check_kustomization() -> dict[str, list[dict]]:
    kustomization = load_documents(KUBE / "kustomization.yaml")[0]
    where = "kustomization.yaml"
    check(dig(kustomization, "kind", where=where) == "Kustomization", f"{where}: kind")
    resources = dig(kustomization, "resources", where=where)
    missing = [r for r in resources if not (KUBE / r).is_file()]
    check(not missing, f"{where} lists files that do not exist: {missing}")
    on_disk = {p.name for p in KUBE.glob("*.yaml")}
    unlisted = on_disk - set(resources) - {"kustomization.yaml", "secret.example.yaml"}
    check(not unlisted, f"manifests not listed in {where} (never applied): {sorted(unlisted)}")
    check(
        "secret.example.yaml" not in resources,
        f"{where} must not apply secret.example.yaml: it would overwrite the real key",
    )
    ok(f"kustomization.yaml: all {len(resources)} resources exist and every manifest is listed")

    by_file = {name: load_documents(KUBE / name) for name in resources}
    by_file["secret.example.yaml"] = load_documents(KUBE / "secret.example.yaml")
    return by_file


def find(by_file: dict[str, list[dict]], kind: str) -> dict:
    matches = [d for docs in by_file.values() for d in docs if d.get("kind") == kind]
    check(len(matches) == 1, f"expected exactly one {kind}, found {len(matches)}")
    return matches[0]


def check_core_schemas(by_file: dict[str, list[dict]]) -> None:
    try:
        installed = importlib.metadata.version("kubernetes-validate")
    except importlib.metadata.PackageNotFoundError:
        raise Failure(
            "kubernetes-validate is not installed (deploy/validate.sh installs it)"
        ) from None
    check(
        installed == KUBERNETES_VALIDATE_VERSION,
        f"kubernetes-validate {installed} is installed; the checks are pinned to "
        f"{KUBERNETES_VALIDATE_VERSION} (deploy/validate.sh installs it)",
    )
    files = sorted(
        name
        for name, docs in by_file.items()
        if all(d.get("kind") in CORE_KINDS for d in docs)
    )
    kinds = {d["kind"] for name in files for d in by_file[name]}
    check(
        {"Deployment", "Service", "PodDisruptionBudget", "Secret"} <= kinds,
        f"core kinds missing from the schema check: {kinds}",
    )
    for version in KUBERNETES_VERSIONS:
        result = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *files],
            cwd=KUBE,
            capture_output=True,
            text=True,
        )
        output = (result.stdout + result.stderr).strip()
        print(output, flush=True)
        check(result.returncode == 0, f"kubernetes-validate failed for {version}")
        # kubernetes-validate only warns about a kind it has no schema for; every file
        # given to it must have been validated for real.
        passed = output.count(" passed for resource ")
        documents = sum(len(by_file[name]) for name in files)
        check(
            passed == documents,
            f"kubernetes-validate {version}: {passed} of {documents} documents validated",
        )
        ok(f"{documents} core documents validate strictly against Kubernetes {version}")


def check_deployment(by_file: dict[str, list[dict]], kustomization: dict) -> None:
    dep = find(by_file, "Deployment")
    where = "deployment.yaml"
    spec = dig(dep, "spec", where=where)
    check(spec.get("replicas") == 3, f"{where}: replicas must be 3")
    rolling = dig(spec, "strategy", "rollingUpdate", where=where)
    check(
        rolling.get("maxUnavailable") == 0 and rolling.get("maxSurge", 0) != 0,
        f"{where}: a rollout must start a warm replica before stopping one "
        "(maxUnavailable 0, maxSurge > 0)",
    )
    selector = dig(spec, "selector", "matchLabels", where=where)
    pod = dig(spec, "template", where=where)
    pod_labels = dig(pod, "metadata", "labels", where=where)
    check(
        selector.items() <= pod_labels.items(),
        f"{where}: selector {selector} does not match the pod labels {pod_labels}",
    )
    pod_spec = dig(pod, "spec", where=where)
    containers = dig(pod_spec, "containers", where=where)
    check(len(containers) == 1, f"{where}: expected one container")
    c = containers[0]
    ports = {p["name"]: p["containerPort"] for p in dig(c, "ports", where=where)}
    check("http" in ports, f"{where}: the container port must be named http")

    # Probes: readiness on /readyz (503 until warm and while draining), liveness on /livez.
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")]:
        get = dig(c, probe, "httpGet", where=where)
        check(get.get("path") == path, f"{where}: {probe} must GET {path}")
        check(get.get("port") in ("http", ports["http"]), f"{where}: {probe} port")
    ok("Deployment: 3 replicas, warm-first rollout, readiness /readyz, liveness /livez")

    # Environment: every variable set must be one the service reads, so a typo cannot
    # silently leave a default in place.
    known = service_env_vars()
    env = {e["name"]: e for e in c.get("env", [])}
    literals = {}
    for gen in kustomization.get("configMapGenerator", []):
        for lit in gen.get("literals", []):
            key, _, value = lit.partition("=")
            literals[key] = value
    unknown = (set(env) | set(literals)) - known
    check(not unknown, f"environment variables the service does not read: {sorted(unknown)}")
    check(
        literals.get("LISTEN_ADDR", "").startswith("0.0.0.0:")
        and literals["LISTEN_ADDR"].endswith(f":{ports['http']}"),
        "LISTEN_ADDR must listen on all interfaces on the container port",
    )
    config_refs = [
        e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e
    ]
    generated = [g["name"] for g in kustomization.get("configMapGenerator", [])]
    check(
        config_refs and set(config_refs) <= set(generated),
        f"{where}: envFrom {config_refs} must name a configMapGenerator of {generated}",
    )
    ok(f"Deployment: all {len(env) + len(literals)} environment variables are the service's own")

    # The Azure key comes from a Secret, under the name the service reads.
    key_ref = dig(env, "AZURE_SPEECH_KEY", "valueFrom", "secretKeyRef", where=where)
    secret = find(by_file, "Secret")
    check(
        key_ref["name"] == secret["metadata"]["name"]
        and key_ref["key"] in secret.get("stringData", {}),
        f"{where}: AZURE_SPEECH_KEY must come from the example Secret's name and key",
    )
    check(
        "AZURE_SPEECH_KEY" not in literals,
        "the Azure key must never be a ConfigMap literal",
    )
    value = secret["stringData"][key_ref["key"]]
    check(
        "REPLACE" in value,
        "secret.example.yaml must hold a placeholder, never a real key",
    )
    ok("Deployment: AZURE_SPEECH_KEY from Secret speech-pool-azure (example holds a placeholder)")

    # Drain: the grace period covers the preStop sleep, the service's SHUTDOWN_GRACE and
    # the pools' shutdown.
    pre_stop = dig(c, "lifecycle", "preStop", "sleep", "seconds", where=where)
    grace = float(dig(env, "SHUTDOWN_GRACE", "value", where=where))
    period = dig(pod_spec, "terminationGracePeriodSeconds", where=where)
    needed = pre_stop + grace + POOL_SHUTDOWN_SECONDS
    check(pre_stop >= 5, f"{where}: the preStop sleep must give the gateway time to react")
    check(
        period >= needed,
        f"{where}: terminationGracePeriodSeconds {period} < preStop {pre_stop} + "
        f"SHUTDOWN_GRACE {grace} + pool shutdown {POOL_SHUTDOWN_SECONDS}",
    )
    check(
        period <= needed + 15,
        f"{where}: terminationGracePeriodSeconds {period} is far beyond the drain window "
        f"({needed} s): a stuck pod would hold a rollout that long",
    )
    ok(
        f"Deployment: terminationGracePeriodSeconds {period} >= preStop {pre_stop} + "
        f"SHUTDOWN_GRACE {grace:g} + pool shutdown {POOL_SHUTDOWN_SECONDS}"
    )

    # Security: non-root, read-only root filesystem, no privilege escalation, no
    # capabilities, the runtime's default seccomp profile.
    pod_sc = dig(pod_spec, "securityContext", where=where)
    sc = dig(c, "securityContext", where=where)
    check(pod_sc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
    check(pod_sc.get("runAsUser", 0) != 0, f"{where}: pod runAsUser must not be 0")
    check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation")
    check(sc.get("privileged", False) is False, f"{where}: privileged")
    check(
        dig(sc, "capabilities", "drop", where=where) == ["ALL"]
        and not sc["capabilities"].get("add"),
        f"{where}: capabilities must drop ALL and add none",
    )
    check(
        dig(pod_sc, "seccompProfile", "type", where=where) == "RuntimeDefault",
        f"{where}: seccompProfile RuntimeDefault",
    )
    check(pod_spec.get("automountServiceAccountToken") is False, f"{where}: no API token")
    resources = dig(c, "resources", where=where)
    check(
        "cpu" in resources.get("requests", {})
        and "memory" in resources.get("requests", {})
        and "memory" in resources.get("limits", {}),
        f"{where}: cpu and memory requests and a memory limit",
    )
    namespace = find(by_file, "Namespace")
    check(
        namespace["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce")
        == "restricted",
        "namespace.yaml: enforce the restricted Pod Security Standard",
    )
    ok("Deployment: non-root, read-only root, no escalation, drop ALL, seccomp RuntimeDefault")


def check_service_and_pdb(by_file: dict[str, list[dict]]) -> None:
    dep = find(by_file, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = find(by_file, "Service")
    check(
        svc["spec"]["selector"].items() <= pod_labels.items(),
        "service.yaml: selector does not match the Deployment's pods",
    )
    svc_ports = svc["spec"]["ports"]
    check(
        any(p.get("targetPort") == "http" for p in svc_ports),
        "service.yaml: targetPort must be the container's http port",
    )
    pdb = find(by_file, "PodDisruptionBudget")
    check(
        pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
        "pdb.yaml: selector does not match the Deployment's pods",
    )
    check(
        pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") is not None,
        "pdb.yaml: must bound voluntary disruptions",
    )
    ok("Service and PodDisruptionBudget select the Deployment's pods")


def check_gateway_kinds(by_file: dict[str, list[dict]]) -> None:
    svc = find(by_file, "Service")
    svc_name = svc["metadata"]["name"]
    svc_ports = {p["port"] for p in svc["spec"]["ports"]}

    gateway = find(by_file, "Gateway")
    where = "gateway.yaml"
    check(
        gateway.get("apiVersion") == "gateway.networking.k8s.io/v1",
        f"{where}: apiVersion gateway.networking.k8s.io/v1",
    )
    only_keys(gateway["spec"], {"gatewayClassName", "listeners", "addresses", "infrastructure"}, where)
    check(gateway["spec"].get("gatewayClassName"), f"{where}: gatewayClassName")
    for listener in dig(gateway, "spec", "listeners", where=where):
        only_keys(
            listener,
            {"name", "hostname", "port", "protocol", "tls", "allowedRoutes"},
            f"{where} listener",
        )
        check(
            listener.get("protocol") in {"HTTP", "HTTPS"} and listener.get("port"),
            f"{where}: listener needs an HTTP(S) protocol and a port",
        )

    route = find(by_file, "HTTPRoute")
    where = "httproute.yaml"
    check(
        route.get("apiVersion") == "gateway.networking.k8s.io/v1",
        f"{where}: apiVersion gateway.networking.k8s.io/v1",
    )
    only_keys(route["spec"], {"parentRefs", "hostnames", "rules"}, where)
    parents = dig(route, "spec", "parentRefs", where=where)
    check(
        any(p.get("name") == gateway["metadata"]["name"] for p in parents),
        f"{where}: parentRefs must name the Gateway {gateway['metadata']['name']}",
    )
    rules = dig(route, "spec", "rules", where=where)
    paths = {}
    for i, rule in enumerate(rules):
        only_keys(
            rule,
            {"name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"},
            f"{where} rule {i}",
        )
        refs = dig(rule, "backendRefs", where=f"{where} rule {i}")
        for ref in refs:
            only_keys(ref, {"group", "kind", "name", "namespace", "port", "weight", "filters"}, f"{where} backendRef")
            check(
                ref.get("name") == svc_name and ref.get("port") in svc_ports,
                f"{where} rule {i}: backendRef must be Service {svc_name} on port {svc_ports}",
            )
        if "timeouts" in rule:
            only_keys(rule["timeouts"], {"request", "backendRequest"}, f"{where} rule {i} timeouts")
            for value in rule["timeouts"].values():
                check(
                    re.fullmatch(r"([0-9]{1,5}(h|m|s|ms)){1,4}", str(value)) is not None,
                    f"{where} rule {i}: {value!r} is not a Gateway API duration",
                )
        for match in rule.get("matches", []):
            path = dig(match, "path", where=f"{where} rule {i}")
            check(path.get("type") in {"Exact", "PathPrefix", "RegularExpression"}, f"{where}: path type")
            paths[path["value"]] = rule
    for needed in ["/api/v1/stt", "/api/v1/tts", "/"]:
        check(needed in paths, f"{where}: no rule matches {needed}")
    for websocket in WEBSOCKET_PATHS:
        check(websocket in paths, f"{where}: no rule for the websocket {websocket}")
        timeout = paths[websocket].get("timeouts", {}).get("request")
        check(
            timeout == "0s" or (timeout is not None and timeout.endswith("h")),
            f"{where}: the websocket {websocket} lasts a whole call; its request timeout "
            f"must be off (0s) or hours, not {timeout!r}",
        )
    stt_timeout = paths["/api/v1/stt"]["timeouts"]["request"]
    tts_timeout = paths["/api/v1/tts"].get("timeouts", {}).get("request")
    check(
        tts_timeout is not None and tts_timeout != "15s",
        f"{where}: TTS audio streams longer than Envoy's default 15 s route timeout",
    )
    ok(
        f"Gateway and HTTPRoute: websocket rules {', '.join(WEBSOCKET_PATHS)} (timeout "
        f"{stt_timeout}), /api/v1/tts, and / for the rest"
    )

    policy = find(by_file, "BackendTrafficPolicy")
    where = "backendtrafficpolicy.yaml"
    check(
        policy.get("apiVersion") == "gateway.envoyproxy.io/v1alpha1",
        f"{where}: apiVersion gateway.envoyproxy.io/v1alpha1",
    )
    targets = dig(policy, "spec", "targetRefs", where=where)
    check(
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route["metadata"]["name"]}
        in targets,
        f"{where}: targetRefs must name the HTTPRoute {route['metadata']['name']}",
    )
    lb = dig(policy, "spec", "loadBalancer", where=where)
    only_keys(lb, {"type", "consistentHash", "endpointOverride", "slowStart", "zoneAware"}, f"{where} loadBalancer")
    check(lb.get("type") == "ConsistentHash", f"{where}: loadBalancer.type ConsistentHash")
    ch = dig(lb, "consistentHash", where=where)
    only_keys(ch, {"type", "header", "headers", "cookie", "tableSize"}, f"{where} consistentHash")
    check(ch.get("type") == "Header", f"{where}: consistentHash.type Header")
    check(
        dig(ch, "header", "name", where=where) == SESSION_HEADER,
        f"{where}: consistentHash.header.name must be {SESSION_HEADER}",
    )
    ok(f"BackendTrafficPolicy: ConsistentHash on header {SESSION_HEADER} for the HTTPRoute")


def check_autoscaler(by_file: dict[str, list[dict]]) -> None:
    dep = find(by_file, "Deployment")
    scaled = find(by_file, "ScaledObject")
    where = "scaledobject.yaml"
    check(scaled.get("apiVersion") == "keda.sh/v1alpha1", f"{where}: apiVersion keda.sh/v1alpha1")
    spec = scaled["spec"]
    only_keys(
        spec,
        {
            "scaleTargetRef",
            "pollingInterval",
            "cooldownPeriod",
            "initialCooldownPeriod",
            "idleReplicaCount",
            "minReplicaCount",
            "maxReplicaCount",
            "fallback",
            "advanced",
            "triggers",
        },
        where,
    )
    target = dig(spec, "scaleTargetRef", where=where)
    check(
        target.get("name") == dep["metadata"]["name"] and target.get("kind", "Deployment") == "Deployment",
        f"{where}: scaleTargetRef must name the Deployment",
    )
    check(
        spec.get("minReplicaCount", 0) >= dep["spec"]["replicas"],
        f"{where}: minReplicaCount must not scale below the Deployment's 3 replicas",
    )
    check(spec.get("maxReplicaCount", 0) > spec["minReplicaCount"], f"{where}: maxReplicaCount")
    behavior = dig(spec, "advanced", "horizontalPodAutoscalerConfig", "behavior", where=where)
    # KEDA passes `behavior` unchanged into the HPA it creates, so it is checked strictly
    # against the autoscaling/v2 schema, inside a stand-in HPA.
    import kubernetes_validate

    stand_in = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "behavior-check"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": behavior,
        },
    }
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(stand_in, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise Failure(f"{where}: HPA behavior is invalid for Kubernetes {version}: {e}") from None
    down = dig(behavior, "scaleDown", where=where)
    check(
        all(p.get("type") == "Pods" and p.get("value") == 1 for p in down.get("policies", [])),
        f"{where}: scale-in must remove one replica at a time (each moves its calls)",
    )
    triggers = dig(spec, "triggers", where=where)
    check(len(triggers) == 1 and triggers[0].get("type") == "prometheus", f"{where}: one prometheus trigger")
    meta = dig(triggers[0], "metadata", where=where)
    for key in ["serverAddress", "query", "threshold"]:
        check(meta.get(key), f"{where}: trigger metadata.{key}")
    check(isinstance(meta["threshold"], str), f"{where}: KEDA metadata values are strings")
    metrics_source = (ROOT / "service/src/metrics.rs").read_text()
    metric = re.search(r"\b(speech_pool_[a-z_]+)\{", meta["query"])
    check(metric is not None, f"{where}: the query must select a speech_pool_ metric")
    check(
        f'"{metric.group(1)}"' in metrics_source,
        f"{where}: {metric.group(1)} is not exported by service/src/metrics.rs",
    )
    check(metric.group(1) == "speech_pool_active_sessions", f"{where}: scale on active sessions")
    ok(
        f"ScaledObject: KEDA prometheus trigger on {metric.group(1)}, scale-in one at a time, "
        "HPA behavior valid for autoscaling/v2"
    )


# ---------------------------------------------------------------------------------------
# Dockerfile


def check_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [
        line.strip()
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [i for i in instructions if i.upper().startswith("FROM ")]
    check(len(froms) >= 2, "Dockerfile: must be multi-stage (a build and a runtime stage)")
    check(" AS " in froms[0].upper(), "Dockerfile: the build stage must be named")
    build = " ".join(i for i in instructions if "cargo build" in i)
    check("--release" in build and "--locked" in build, "Dockerfile: cargo build --release --locked")
    check("-p service" in build, "Dockerfile: builds the service package")
    features = service_features()
    check("azure" in features, "service/Cargo.toml has no azure feature")
    check(
        "--no-default-features" in build and re.search(r"--features\s+azure\b", build),
        "Dockerfile: the image is built with the azure feature only",
    )
    binary = service_binary_name()
    check(f"target/release/{binary}" in build, f"Dockerfile: copies target/release/{binary}")
    runtime = instructions[instructions.index(froms[-1]) :]
    users = [i for i in runtime if i.upper().startswith("USER ")]
    check(users, "Dockerfile: the runtime stage must set USER")
    uid = users[-1].split()[1].split(":")[0]
    check(uid.isdigit() and uid != "0", "Dockerfile: USER must be a numeric non-root uid")
    entry = [i for i in runtime if i.upper().startswith("ENTRYPOINT ")]
    check(
        entry and entry[-1].endswith(f'["/usr/local/bin/{binary}"]'),
        f"Dockerfile: ENTRYPOINT must be the {binary} binary (so `docker run IMAGE --help` works)",
    )
    check(
        any(i.startswith("ENV ") and "LISTEN_ADDR=0.0.0.0:" in i for i in runtime),
        "Dockerfile: LISTEN_ADDR must listen on all interfaces inside the container",
    )
    # The builder's toolchain must be at least the workspace's declared rust-version.
    workspace = (ROOT / "Cargo.toml").read_text()
    declared = re.search(r'rust-version\s*=\s*"([0-9.]+)"', workspace)
    arg = re.search(r"^ARG RUST_VERSION=([0-9.]+)$", text, flags=re.M)
    check(declared is not None and arg is not None, "Dockerfile: ARG RUST_VERSION and rust-version")
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    check(
        as_tuple(arg.group(1)) >= as_tuple(declared.group(1))[:2],
        f"Dockerfile: Rust {arg.group(1)} is older than the workspace's {declared.group(1)}",
    )
    check_dockerignore(workspace)
    ok(
        f"Dockerfile: multi-stage, Rust {arg.group(1)}, --features azure only, runs {binary} "
        f"as uid {uid}; .dockerignore keeps every workspace input"
    )


def check_dockerignore(workspace_manifest: str) -> None:
    """The build context keeps every workspace member, the manifests and lock file, and
    every file a crate embeds, and leaves out the build output and git data."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    check("target" in patterns and ".git" in patterns, ".dockerignore must leave out target and .git")
    check(not any(p.startswith("!") for p in patterns), ".dockerignore: keep it to exclusions")

    def segments_match(segments: list[str], pattern: list[str]) -> bool:
        return len(segments) == len(pattern) and all(
            fnmatch.fnmatchcase(seg, pat) for seg, pat in zip(segments, pattern)
        )

    def excluded(relative: str) -> bool:
        # Docker matches a pattern against the path from the context's root (a `*` never
        # crosses a slash, `**/` matches any number of leading directories), and excluding
        # a directory excludes everything below it.
        parts = relative.split("/")
        for pattern in patterns:
            pattern_parts = pattern.strip("/").split("/")
            anywhere = pattern_parts[0] == "**"
            if anywhere:
                pattern_parts = pattern_parts[1:]
            starts = range(len(parts)) if anywhere else [0]
            for start in starts:
                for end in range(start + 1, len(parts) + 1):
                    if segments_match(parts[start:end], pattern_parts):
                        return True
        return False

    members = re.search(r"members\s*=\s*\[([^\]]*)\]", workspace_manifest)
    check(members is not None, "Cargo.toml: no workspace members")
    inputs = ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"]
    for member in re.findall(r'"([^"]+)"', members.group(1)):
        inputs.append(f"{member}/Cargo.toml")
        for source in (ROOT / member).rglob("*.rs"):
            if "target" in source.relative_to(ROOT).parts:
                continue
            inputs.append(str(source.relative_to(ROOT)))
            for embedded in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', source.read_text()):
                path = (source.parent / embedded).resolve()
                inputs.append(str(path.relative_to(ROOT)))
    dropped = [i for i in inputs if excluded(i)]
    check(not dropped, f".dockerignore leaves out build inputs: {dropped[:5]}")


# ---------------------------------------------------------------------------------------
# HAProxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StubReplica:
    """A stand-in for one service replica: /readyz answers 200 or 503, every other request
    answers with the replica's name, or 503 while "draining", like the service."""

    def __init__(self, name: str, ready: bool = True):
        self.name = name
        self.ready = ready
        self.draining = False
        self.served = 0
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path == "/readyz":
                    code = 200 if stub.ready and not stub.draining else 503
                elif stub.draining:
                    code = 503
                else:
                    code = 200
                    stub.served += 1
                body = stub.name.encode()
                self.send_response(code)
                self.send_header("X-Replica", stub.name)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                # HAProxy's health checks close their connections abruptly; that is
                # expected and not worth a traceback.
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class HAProxy:
    def __init__(self, replicas: list[StubReplica], workdir: Path):
        self.port = free_port()
        self.socket_path = workdir / "admin.sock"
        env = dict(os.environ)
        env["SPEECH_POOL_LB_BIND"] = f"127.0.0.1:{self.port}"
        env["SPEECH_POOL_HAPROXY_SOCKET"] = str(self.socket_path)
        for i, r in enumerate(replicas, start=1):
            env[f"SPEECH_POOL_REPLICA_{i}"] = r.address
        self.log = (workdir / "haproxy.log").open("w")
        self.proc = subprocess.Popen(
            [require_tool("haproxy"), "-db", "-f", str(DEPLOY / "haproxy.cfg")],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = workdir / "haproxy.log"

    def admin(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def status(self) -> dict[str, str]:
        """Server name -> UP / DOWN / MAINT ..., from `show stat`."""
        out = self.admin("show stat")
        header = out.splitlines()[0].lstrip("# ").split(",")
        rows = {}
        for line in out.splitlines()[1:]:
            fields = dict(zip(header, line.split(",")))
            if fields.get("pxname") == "speech_pool" and fields.get("svname") not in (
                "FRONTEND",
                "BACKEND",
                None,
            ):
                rows[fields["svname"]] = fields["status"]
        return rows

    def wait_status(self, wanted: dict[str, str], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        current: dict[str, str] = {}
        while time.monotonic() < deadline:
            check(self.proc.poll() is None, f"haproxy exited: {self.log_path.read_text()}")
            try:
                current = self.status()
            except OSError:
                current = {}
            if all(current.get(k, "").startswith(v) for k, v in wanted.items()):
                return
            time.sleep(0.2)
        raise Failure(f"haproxy servers did not reach {wanted}; now {current}")

    def request(self, method: str, path: str, session: str | None, body: bytes | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {SESSION_HEADER: session} if session else {}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.getheader("X-Replica")
        finally:
            conn.close()

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def check_haproxy_syntax() -> None:
    haproxy = require_tool("haproxy")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True
    )
    output = (result.stdout + result.stderr).strip()
    print(f"$ haproxy -c -f deploy/haproxy.cfg\n{output}", flush=True)
    check(result.returncode == 0, "haproxy -c rejected deploy/haproxy.cfg")
    check("Configuration file is valid" in output, "haproxy -c did not report a valid file")
    ok("haproxy -c accepts deploy/haproxy.cfg")


def check_haproxy_behaviour() -> None:
    sessions = [f"call-{i}" for i in range(600)]
    replicas = [StubReplica(f"replica{i}") for i in (1, 2, 3)]
    joining = StubReplica("replica4", ready=False)
    workdir = Path(tempfile.mkdtemp(prefix="speech-pool-haproxy-"))
    lb = HAProxy(replicas, workdir)
    try:
        lb.wait_status({"replica1": "UP", "replica2": "UP", "replica3": "UP"})

        def route_all(ids, method="POST", path="/api/v1/tts") -> dict[str, str]:
            where = {}
            for s in ids:
                status, replica = lb.request(method, path, s, body=b'{"text":"hi"}' if method == "POST" else None)
                check(status == 200, f"{method} {path} for {s} answered {status}")
                where[s] = replica
            return where

        def shares(where: dict[str, str], names) -> dict[str, float]:
            return {n: sum(1 for v in where.values() if v == n) / len(where) for n in names}

        names = [r.name for r in replicas]
        first = route_all(sessions)
        again = route_all(sessions, "DELETE", "/api/v1/sessions/x")
        check(first == again, "the same X-Session-Id reached different replicas")
        spread = shares(first, names)
        check(
            all(0.2 <= share <= 0.47 for share in spread.values()),
            f"calls per replica are too uneven: {spread}",
        )
        table = lb.admin("show table speech_pool").splitlines()[0]
        check("used:600" in table, f"the stick table should hold the 600 calls: {table}")
        ok(
            "haproxy: each X-Session-Id sticks to one replica across methods (one stick-table "
            "entry per call); shares " + ", ".join(f"{k} {v:.0%}" for k, v in spread.items())
        )

        anonymous = {lb.request("GET", "/api/v1/pools", None)[1] for _ in range(9)}
        check(len(anonymous) == 3, f"requests without the header should spread, reached {anonymous}")
        ok("haproxy: requests without X-Session-Id spread over all replicas")

        # A planned stop, as the file's header tells an operator. DRAIN: replica1 keeps the
        # calls it holds and takes no new one.
        own = {s for s in sessions if first[s] == "replica1"}
        check(
            lb.admin("set server speech_pool/replica1 state drain").strip() == "",
            "haproxy refused to drain replica1",
        )
        check(route_all(sessions) == first, "a replica in DRAIN lost its calls")
        fresh = route_all([f"new-{i}" for i in range(300)])
        check("replica1" not in fresh.values(), "a replica in DRAIN took new calls")
        ok(f"haproxy: in DRAIN replica1 keeps its {len(own)} calls and takes none of 300 new ones")

        # MAINT: exactly its calls move, each once, and none reaches it, while it restarts
        # and after its new process is up but not yet put back.
        check(
            lb.admin("set server speech_pool/replica1 state maint").strip() == "",
            "haproxy refused to put replica1 in MAINT",
        )
        served_before = replicas[0].served
        after_maint = route_all(sessions)
        moved = {s for s in sessions if after_maint[s] != first[s]}
        check(moved == own, "MAINT moved calls that were not replica1's, or kept some of its calls")
        check(route_all(sessions) == after_maint, "calls moved twice while replica1 was in MAINT")
        check(replicas[0].served == served_before, "replica1 served requests while in MAINT")
        ok(f"haproxy: in MAINT replica1's {len(own)} calls moved, each once, and it took no request")

        # Put back: no call returns to it (its new process has none of their connections);
        # new calls reach it again through the hash.
        lb.admin("set server speech_pool/replica1 state ready")
        lb.wait_status({"replica1": "UP"})
        check(route_all(sessions) == after_maint, "calls moved back to replica1 when it returned")
        newer = route_all([f"newer-{i}" for i in range(300)])
        share = shares(newer, names)["replica1"]
        check(0.2 <= share <= 0.47, f"replica1 took {share:.0%} of new calls after it returned")
        ok(f"haproxy: back from MAINT replica1 took no live call back and {share:.0%} of new calls")

        # An unplanned stop: replica1 answers 503 (its drain after SIGTERM, with nobody
        # telling HAProxy). Its calls' requests are retried elsewhere without an error and
        # stay where the retry put them: when the check marks it down, and when it is back.
        current = {**after_maint, **newer}
        ids = list(current)
        own = {s for s in ids if current[s] == "replica1"}
        replicas[0].draining = True
        served_before = replicas[0].served
        during = route_all(ids)
        check(replicas[0].served == served_before, "replica1 served while draining")
        moved = {s for s in ids if during[s] != current[s]}
        check(moved == own, "a replica's drain moved calls that were not its own")
        lb.wait_status({"replica1": "DOWN"})
        check(route_all(ids) == during, "calls moved again once replica1 was down")
        replicas[0].draining = False
        lb.wait_status({"replica1": "UP"})
        check(route_all(ids) == during, "calls moved back to replica1 when it came back")
        ok(
            f"haproxy: draining replica1's {len(own)} calls were retried elsewhere with 0 errors, "
            "moved once and stayed there when it went down and came back"
        )

        # Scale-out through the admin socket: the new replica takes no request until its
        # /readyz answers 200; then no live call moves to it, and about a quarter of the new
        # calls go to it.
        for command in [
            f"add server speech_pool/replica4 {joining.address} check inter 1s fall 2 rise 2 weight 100",
            "enable health speech_pool/replica4",
            "enable server speech_pool/replica4",
        ]:
            reply = lb.admin(command).strip()
            check("error" not in reply.lower() and "unknown" not in reply.lower(), f"{command}: {reply}")
        lb.wait_status({"replica4": "DOWN"})
        check(route_all(ids) == during, "a replica that is not ready received calls")
        check(joining.served == 0, "the warming replica4 served requests")
        joining.ready = True
        lb.wait_status({"replica4": "UP"})
        check(route_all(ids) == during, "scale-out moved live calls")
        late = route_all([f"late-{i}" for i in range(400)])
        fraction = shares(late, [*names, "replica4"])["replica4"]
        check(
            0.25 - 0.1 <= fraction <= 0.25 + 0.1,
            f"replica4 took {fraction:.1%} of new calls (expected about 25 %)",
        )
        ok(f"haproxy: replica4 took traffic only once ready, no live call, then {fraction:.1%} of new calls")
    except Failure:
        print(f"--- haproxy log ---\n{lb.log_path.read_text()}", flush=True)
        raise
    finally:
        lb.close()
        for r in [*replicas, joining]:
            r.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    started = time.monotonic()
    try:
        by_file = check_kustomization()
        kustomization = load_documents(KUBE / "kustomization.yaml")[0]
        check_core_schemas(by_file)
        check_deployment(by_file, kustomization)
        check_service_and_pdb(by_file)
        check_gateway_kinds(by_file)
        check_autoscaler(by_file)
        check_dockerfile()
        check_haproxy_syntax()
        check_haproxy_behaviour()
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"deploy validation: all {checks_passed} checks hold ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
