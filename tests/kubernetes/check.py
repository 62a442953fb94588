"""Checks a rendered kustomization of deploy/kubernetes (tests/kubernetes.rs runs it).

Usage: check.py RENDERED.yaml RULES.yml REPLICAS [SPEC_OUT.yml]

With SPEC_OUT, the PrometheusRule's spec is written there (for `promtool check rules`).

Prints one line per problem and exits 1 if any. Beyond the Kubernetes schemas (checked by
kubernetes-validate), it checks what makes the manifests work with this server: the
PrometheusRule carries exactly the rules of config/prometheus/understudy-rules.yml; probes
reach /healthz and /readyz on the ports the ConfigMap's config listens on; the pod runs as
non-root on a read-only root filesystem with a writable store directory (when the store is a
file); the termination grace outlasts the server's shutdown grace; every `*_env` of the config
is filled from a Secret; the Services, ServiceMonitor and PodDisruptionBudget select the pods
and ports that exist.
"""

import os
import sys
import tomllib

import yaml


def main() -> int:
    rendered, rules_file, replicas = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    with open(rules_file) as f:
        rules = yaml.safe_load(f)
    problems = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    def one(kind):
        found = by_kind.get(kind, [])
        if len(found) != 1:
            problems.append(f"expected one {kind}, found {len(found)}")
            return None
        return found[0]

    rule = one("PrometheusRule")
    if rule is not None and len(sys.argv) > 4:
        with open(sys.argv[4], "w") as f:
            yaml.safe_dump(rule.get("spec"), f)
    if rule is not None and rule.get("spec") != rules:
        problems.append(f"the PrometheusRule's spec is not {rules_file}: run scripts/kubernetes-rules.sh")

    config_map = one("ConfigMap")
    deployment = one("Deployment")
    if config_map is None or deployment is None:
        return report(problems)
    config = tomllib.loads(config_map["data"]["understudy.toml"])
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = {
        "proxy": int(config["server"]["listen"].rsplit(":", 1)[1]),
        "admin": int(config["admin"]["listen"].rsplit(":", 1)[1]),
    }
    for name, port in listen.items():
        if not config[{"proxy": "server", "admin": "admin"}[name]]["listen"].startswith("0.0.0.0:"):
            problems.append(f"the {name} listener does not listen on every interface of the pod")
        if ports.get(name) != port:
            problems.append(f"container port {name} is {ports.get(name)}, the config listens on {port}")

    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ports:
            problems.append(f"{probe} is not GET {path} on a container port: {get}")

    if deployment["spec"]["replicas"] != replicas:
        problems.append(f"replicas {deployment['spec']['replicas']}, expected {replicas}")
    if replicas > 1 and "path" in config.get("store", {}):
        problems.append("several replicas on a file store (one writer per file)")
    if replicas > 1 and "url" not in config.get("store", {}):
        problems.append("several replicas without a shared store ([store] url)")

    pod_security = spec.get("securityContext", {})
    security = container.get("securityContext", {})
    if not pod_security.get("runAsNonRoot") or pod_security.get("runAsUser", 0) == 0:
        problems.append("the pod may run as root")
    if not security.get("readOnlyRootFilesystem"):
        problems.append("the root filesystem is writable")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append("privilege escalation is allowed")
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    store_path = config.get("store", {}).get("path")
    if store_path is not None:
        store_dir = os.path.dirname(store_path)
        mount = mounts.get(store_dir)
        if mount is None or mount.get("readOnly"):
            problems.append(f"the store directory {store_dir} is not a writable volume")
    config_mount = mounts.get("/etc/understudy")
    if config_mount is None:
        problems.append("the config is not mounted at /etc/understudy")
    if container.get("args") != ["serve", "--config", "/etc/understudy/understudy.toml"]:
        problems.append(f"the container does not serve the mounted config: {container.get('args')}")

    grace = config["server"].get("shutdown_grace_secs", 30)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    if spec.get("terminationGracePeriodSeconds", 30) <= grace + pause:
        problems.append(
            f"terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds', 30)} "
            f"is not longer than the preStop pause ({pause}) plus shutdown_grace_secs ({grace})"
        )
    resources = container.get("resources", {})
    if not resources.get("requests") or not resources.get("limits", {}).get("memory"):
        problems.append("no resource requests or memory limit")

    env = {e["name"]: e for e in container.get("env", [])}
    wanted = [config["admin"].get("token_env", "UNDERSTUDY_ADMIN_TOKEN")]
    wanted += [u["api_key_env"] for u in config.get("upstreams", {}).values() if "api_key_env" in u]
    if "password_env" in config.get("store", {}):
        wanted.append(config["store"]["password_env"])
    for name in wanted:
        if "secretKeyRef" not in env.get(name, {}).get("valueFrom", {}):
            problems.append(f"{name} is not filled from a Secret")

    labels = pod["metadata"]["labels"]

    def selects(selector):
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    for name, service in services.items():
        if not selects(service["spec"].get("selector")):
            problems.append(f"Service {name} does not select the pods")
        for p in service["spec"]["ports"]:
            if p.get("targetPort") not in ports:
                problems.append(f"Service {name} targets port {p.get('targetPort')}, not a container port")
    covered = {p.get("targetPort") for s in services.values() for p in s["spec"]["ports"]}
    for name in ("proxy", "admin"):
        if name not in covered:
            problems.append(f"no Service for the {name} port")

    monitor = one("ServiceMonitor")
    if monitor is not None:
        chosen = [
            s for s in services.values()
            if all(s["metadata"].get("labels", {}).get(k) == v
                   for k, v in monitor["spec"]["selector"]["matchLabels"].items())
        ]
        endpoints = monitor["spec"]["endpoints"]
        if len(chosen) != 1 or any(p["targetPort"] != "admin" for p in chosen[0]["spec"]["ports"]):
            problems.append("the ServiceMonitor does not select exactly the admin Service")
        if [(e.get("port"), e.get("path")) for e in endpoints] != [("admin", "/metrics")]:
            problems.append(f"the ServiceMonitor does not scrape admin /metrics: {endpoints}")

    pdb = one("PodDisruptionBudget")
    if pdb is not None and not selects(pdb["spec"]["selector"]["matchLabels"]):
        problems.append("the PodDisruptionBudget does not select the pods")
    return report(problems)


def report(problems) -> int:
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
