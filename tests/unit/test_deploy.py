"""`deploy/`: the compose file and the Kubernetes manifests validate against their published
schemas (vendored in tests/data by tests/data/extract_deploy_schemas.py; no internet here),
hang together (selectors, secrets, volumes, mounts), and every metric the Prometheus rules
and the Grafana dashboard query is one the gateway really exports, with labels it really has.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from support.gateway_harness import make_harness

from gateway import metrics as gateway_metrics
from metering import metrics as metering_metrics
from serving import metrics as serving_metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DATA = ROOT / "tests" / "data"


# --- compose -----------------------------------------------------------------------------------
_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:-|-|:\?|\?)(?P<arg>[^}]*))?\}|\$\$")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${V}, ${V:-default}, ${V-default}, ${V:?error}, $$."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise KeyError(f"{name}: {arg}")
        if op == ":-" and not value:
            return arg
        if op == "-" and value is None:
            return arg
        return value or ""

    return _VAR.sub(sub, text)


ENV = {
    "POSTGRES_PASSWORD": "pw",
    "GRAFANA_ADMIN_PASSWORD": "gpw",
    "BASE_MODEL": "org/model",
    "PROMPT_DIGEST_KEY": "digest-secret",
}


def load_compose(env: dict[str, str] = ENV) -> dict[str, Any]:
    return yaml.safe_load(interpolate((DEPLOY / "compose.yaml").read_text(), env))


def compose_validator() -> jsonschema.Validator:
    schema = json.loads((DATA / "compose_spec.json").read_text())
    return jsonschema.Draft201909Validator(schema)


def test_compose_validates_against_the_compose_spec() -> None:
    compose = load_compose()
    errors = sorted(compose_validator().iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    assert {"postgres", "vllm", "gateway", "worker", "prometheus", "grafana"} <= set(
        compose["services"]
    )


def test_compose_schema_is_strict_enough_to_catch_mistakes() -> None:
    good = load_compose()
    v = compose_validator()
    for mutate in (
        lambda c: c["services"]["gateway"].update(restrat="always"),  # a typo'd key
        lambda c: c["services"]["gateway"].update(ports=8000),  # a wrong type
        lambda c: c["services"]["vllm"]["deploy"]["resources"].update(reservation={}),
        lambda c: c.update(servces={}),
    ):
        bad = copy.deepcopy(good)
        mutate(bad)
        assert list(v.iter_errors(bad)), "the schema accepted a broken compose file"


def test_compose_needs_its_secrets_set() -> None:
    for missing in (
        "POSTGRES_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "BASE_MODEL",
        "PROMPT_DIGEST_KEY",
    ):
        env = {k: v for k, v in ENV.items() if k != missing}
        with pytest.raises(KeyError, match=missing):
            load_compose(env)


def test_compose_wiring() -> None:
    c = load_compose()
    services, volumes = c["services"], set(c["volumes"])
    for name, svc in services.items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                # Bind mounts of config must exist (./models is the operator's model tree).
                assert source == "./models" or (DEPLOY / source).exists(), (name, source)
            else:
                assert source in volumes, (name, source)
        for dep in svc.get("depends_on", {}):
            assert dep in services, (name, dep)
    [gpu] = services["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["vllm"]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    gw = services["gateway"]
    assert (DEPLOY / gw["build"]["context"]).resolve() == ROOT
    assert (DEPLOY / gw["build"]["context"] / gw["build"]["dockerfile"]).exists()
    assert gw["environment"]["ROYALTY_ENGINE_URLS"] == "http://vllm:8000"
    assert "gateway-data:/var/lib/royalty" in gw["volumes"]  # the durable usage log
    assert gw["environment"]["DATABASE_URL"].startswith("postgresql://royalty:pw@postgres:")
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}  # fmt: skip
    assert {"gateway:8000", "vllm:8000"} <= targets
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert (
        "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in services["prometheus"]["volumes"]
    )


def _worker_options(group_name: str) -> set[str]:
    """The options `royalty <group> worker` really has."""
    import click
    import typer.main

    from royalty.cli.main import app

    group = typer.main.get_command(app)
    sub = group.commands[group_name]  # type: ignore[attr-defined]
    worker: click.Command = sub.commands["worker"]
    return {opt for p in worker.params for opt in p.opts}


@pytest.mark.parametrize(
    ("group", "service", "job", "port"),
    [
        ("ledger", "worker", "royalty-worker", "9101"),
        ("influence", "influence-worker", "royalty-influence-worker", "9102"),
    ],
)
def test_the_workers_run_continuously_and_are_scraped(
    group: str, service: str, job: str, port: str
) -> None:
    """Compose and Kubernetes run `royalty ledger worker` and `royalty influence worker` (not
    shell loops of one-shot commands) with options they have, serving metrics on the port
    Prometheus scrapes; gateways start no worker children of their own."""
    options = _worker_options(group)
    assert "--metrics-port" in options
    compose = load_compose()
    worker = compose["services"][service]
    argv = [*worker["entrypoint"], *worker["command"]]
    assert argv[:3] == ["royalty", group, "worker"], argv
    assert {a.split("=")[0] for a in argv[3:]} <= options
    assert f"--metrics-port={port}" in argv and not any("while" in a for a in argv)
    env = compose["x-royalty"]["environment"]
    assert env["ROYALTY_POST_USAGE"] == "0" and env["ROYALTY_INFLUENCE_WORKER"] == "0"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs[job]["static_configs"][0]["targets"] == [f"{service}:{port}"]
    [dep] = [d for _, d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == service]  # fmt: skip
    pod = dep["spec"]["template"]
    [c] = pod["spec"]["containers"]
    k8s_argv = [*c["command"], *c["args"]]
    assert k8s_argv[:3] == ["royalty", group, "worker"], k8s_argv
    assert {a.split("=")[0] for a in k8s_argv[3:]} <= options
    k8s_port = next(a.split("=")[1] for a in k8s_argv if a.startswith("--metrics-port="))
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == k8s_port == port
    assert [p["containerPort"] for p in c["ports"]] == [int(port)]
    policies = [d for _, d in k8s_docs() if d["kind"] == "NetworkPolicy"]
    [policy] = [p for p in policies if p["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": service}]  # fmt: skip
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": int(port)}]
    [cm] = [d for _, d in k8s_docs() if d["kind"] == "ConfigMap"]
    assert cm["data"]["ROYALTY_POST_USAGE"] == "0" and cm["data"]["ROYALTY_INFLUENCE_WORKER"] == "0"


# --- Kubernetes ----------------------------------------------------------------------------------
K8S = json.loads((DATA / "k8s_schemas_v1.33.json").read_text())


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def k8s_errors(doc: dict[str, Any]) -> list[str]:
    kind = K8S["x-kinds"].get(f"{doc.get('apiVersion')}/{doc.get('kind')}")
    if kind is None:
        return [f"no vendored schema for {doc.get('apiVersion')}/{doc.get('kind')}"]
    validator = jsonschema.Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": K8S["$defs"]})
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "Secret", "ConfigMap",
            "HorizontalPodAutoscaler", "Job"} <= kinds  # fmt: skip
    for name, doc in docs:
        errors = k8s_errors(doc)
        assert not errors, (name, doc["kind"], doc["metadata"]["name"], errors[:5])


def test_k8s_schema_is_strict_enough_to_catch_mistakes() -> None:
    [gateway] = [d for _, d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway"]  # fmt: skip
    for mutate in (
        lambda d: d["spec"].update(replica=2),  # typo
        lambda d: d["spec"].update(replicas="two"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(port=8000),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(path=5),
    ):  # fmt: skip
        bad = copy.deepcopy(gateway)
        mutate(bad)
        assert k8s_errors(bad), "the schema accepted a broken Deployment"


def _pods(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for _, d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
    }


def test_k8s_manifests_hang_together() -> None:
    docs = k8s_docs()
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        assert d["metadata"].get("namespace", "royalty") == "royalty" or d["kind"] == "Namespace"
    workloads = _pods(docs)
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads.values()]

    def selects(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in pod_labels)

    for name, w in workloads.items():
        spec = w["spec"]
        if "selector" in spec:
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(), name  # fmt: skip
        pod = spec["template"]["spec"]
        for c in pod["containers"]:
            assert c["resources"]["requests"], (name, "resource requests")
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in by_kind["Secret"], name
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in by_kind["ConfigMap"], name
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = by_kind["Secret"][ref["name"]]
                    assert ref["key"] in secret["stringData"], (name, ref)
        for vol in pod.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in by_kind["PersistentVolumeClaim"]
    for kind in ("PodDisruptionBudget", "Service"):
        for name, d in by_kind[kind].items():
            sel = d["spec"]["selector"]
            assert selects(sel.get("matchLabels", sel)), (kind, name)

    gateway = workloads["gateway"]["spec"]
    c = gateway["template"]["spec"]["containers"][0]
    assert {"readinessProbe", "livenessProbe", "startupProbe"} <= set(c)
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] != "/healthz"  # engines down must not restart it
    hpa = by_kind["HorizontalPodAutoscaler"]["gateway"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert "replicas" in gateway and gateway["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    vllm = workloads["vllm"]
    assert vllm["kind"] == "StatefulSet" and vllm["spec"]["replicas"] >= 2
    res = vllm["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 1
    assert by_kind["Service"]["vllm"]["spec"]["clusterIP"] == "None"
    urls = by_kind["ConfigMap"]["royalty-config"]["data"]["ROYALTY_ENGINE_URLS"].split(",")
    assert urls == [
        f"http://vllm-{i}.vllm.royalty.svc.cluster.local:8000"
        for i in range(vllm["spec"]["replicas"])
    ]
    assert {"gateway", "vllm"} <= set(by_kind["PodDisruptionBudget"])
    assert {"royalty-db", "royalty-keys"} <= set(by_kind["Secret"])

    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


# --- no free keys, a shared secret digest key -------------------------------------------------------
def dockerfile() -> tuple[list[str], dict[str, str]]:
    """The image's ENTRYPOINT and its ENV (as `KEY=VALUE` pairs)."""
    text = (DEPLOY / "Dockerfile").read_text()
    [entry] = re.findall(r"^ENTRYPOINT (\[.*\])$", text, flags=re.MULTILINE)
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.*)$", text, flags=re.MULTILINE):
        env.update(pair.split("=", 1) for pair in line.split())
    return json.loads(entry), env


def runs_demo_key_path(argv: list[str], env: dict[str, str]) -> bool:
    """Whether `argv` (a `royalty ...` command line) with `env` would mint the demo key: the
    `up` command's options parsed by the real CLI, its settings from the environment as
    `royalty up` builds them, then the rule `royalty up` applies."""
    import typer.main

    from royalty.cli.main import app
    from royalty.server import mints_demo_key
    from royalty.settings import Settings

    assert argv[0] == "royalty", argv
    if argv[1:2] != ["up"]:
        return False
    up = typer.main.get_command(app).commands["up"]  # type: ignore[attr-defined]
    params = up.make_context("up", list(argv[2:]), default_map={}).params
    settings = Settings.from_env(env).with_(
        models={"dir": params["models_dir"]},
        engines={"urls": tuple(params["engine_url"]) if params["engine_url"] else None},
    )
    if not params["demo_key"]:
        settings = settings.with_(demo={"key": False})
    return mints_demo_key(settings)


def _served_commands() -> list[tuple[str, list[str], dict[str, str]]]:
    """(where, argv, environment) of every container that runs the image in compose and k8s."""
    entry, image_env = dockerfile()
    found = []
    for name, svc in load_compose()["services"].items():
        if svc.get("image", "").startswith("${ROYALTY_IMAGE") or "build" in svc:
            argv = [*svc.get("entrypoint", entry), *svc.get("command", [])]
            found.append((f"compose:{name}", argv, {**image_env, **svc["environment"]}))
    docs = k8s_docs()
    [cm] = [d for _, d in docs if d["kind"] == "ConfigMap"]
    for name, w in _pods(docs).items():
        for c in w["spec"]["template"]["spec"]["containers"]:
            if "royalty-gateway" not in c["image"]:
                continue
            env = dict(image_env)
            if any("configMapRef" in src for src in c.get("envFrom", [])):
                env.update(cm["data"])
            env.update({e["name"]: e.get("value", "<secret>") for e in c.get("env", [])})
            found.append((f"k8s:{name}", [*c.get("command", entry), *c["args"]], env))
    return found


def test_the_demo_key_rule_is_what_the_deploy_check_applies() -> None:
    """The check below can fail: a bare `royalty up` on the demo models mints a key."""
    assert runs_demo_key_path(["royalty", "up"], {})
    assert not runs_demo_key_path(["royalty", "up", "--no-demo-key"], {})
    assert not runs_demo_key_path(["royalty", "up"], {"ROYALTY_DEMO_KEY": "0"})
    assert not runs_demo_key_path(["royalty", "up", "--models-dir", "/models"], {})
    assert not runs_demo_key_path(["royalty", "up"], {"ROYALTY_ENGINE_URLS": "http://vllm:8000"})
    assert not runs_demo_key_path(["royalty", "ledger", "worker"], {})


def test_no_deploy_file_runs_the_demo_key_path() -> None:
    """No container mints a demo key or demo credit: `up` is switched off explicitly
    (ROYALTY_DEMO_KEY=0 in its environment, `--no-demo-key` on its command line), and would
    not mint one even without the switch (it serves its own model tree on external engines)."""
    _, image_env = dockerfile()
    assert image_env["ROYALTY_DEMO_KEY"] == "0"
    served = _served_commands()
    ups = [(where, argv, env) for where, argv, env in served if argv[1:2] == ["up"]]
    assert {w for w, _, _ in ups} == {"compose:gateway", "k8s:gateway"}, served
    for where, argv, env in served:
        assert not runs_demo_key_path(argv, env), where
    for where, argv, env in ups:
        assert env["ROYALTY_DEMO_KEY"] == "0" and "--no-demo-key" in argv, where
        switched_on = {k: v for k, v in env.items() if k != "ROYALTY_DEMO_KEY"}
        assert not runs_demo_key_path([a for a in argv if a != "--no-demo-key"], switched_on)
    # The image's default command (a bare `docker run`) mints none either.
    entry, _ = dockerfile()
    cmd = json.loads(re.findall(r"^CMD (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.M)[0])
    assert not runs_demo_key_path([*entry, *cmd], image_env)


def test_the_prompt_digest_key_is_a_secret_every_gateway_shares() -> None:
    """ROYALTY_PROMPT_DIGEST_KEY (HMAC of prompt digests) comes from a secret: compose
    requires it from deploy/.env (no default), Kubernetes from the royalty-keys Secret; it is
    in no ConfigMap and not hard-coded in a manifest."""
    raw = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    spec = raw["services"]["gateway"]["environment"]["ROYALTY_PROMPT_DIGEST_KEY"]
    m = _VAR.fullmatch(spec)
    assert m is not None and m.group("op") == ":?", spec  # required, no default
    assert (
        load_compose()["services"]["gateway"]["environment"]["ROYALTY_PROMPT_DIGEST_KEY"]
        == (ENV[m.group("name")])
    )
    assert re.search(rf"^{m.group('name')}=", (DEPLOY / "env.example").read_text(), re.M)
    docs = k8s_docs()
    [cm] = [d for _, d in docs if d["kind"] == "ConfigMap"]
    assert "ROYALTY_PROMPT_DIGEST_KEY" not in cm["data"]
    [gw] = _pods(docs)["gateway"]["spec"]["template"]["spec"]["containers"]
    [entry] = [e for e in gw.get("env", []) if e["name"] == "ROYALTY_PROMPT_DIGEST_KEY"]
    ref = entry["valueFrom"]["secretKeyRef"]
    [secret] = [d for _, d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]]  # fmt: skip
    assert ref["key"] in secret["stringData"] and "value" not in entry
    # One key for every replica: the Deployment's pod template, not per-pod values.
    assert _pods(docs)["gateway"]["kind"] == "Deployment"


# --- metrics the dashboards and alerts query -------------------------------------------------------
@pytest.fixture(scope="module")
async def exported() -> dict[str, set[str]]:
    """Sample names the gateway's /metrics exports (live, over HTTP), each with its label names
    (from the metric objects: a labelled metric with no sample yet shows no labels)."""
    h = make_harness()
    async with AsyncTestClient(app=h.app()) as client:
        text = (await client.get("/metrics")).text
    labels_of: dict[str, set[str]] = {}
    # The metric modules, and every other metric object registered (a package's own module,
    # e.g. the influence enqueuer's): the exposition shows them all.
    registered = list(REGISTRY._collector_to_names)
    modules = [vars(m).values() for m in (gateway_metrics, serving_metrics, metering_metrics)]
    for obj in [o for values in modules for o in values] + registered:
        if isinstance(obj, MetricWrapperBase):
            labels_of[obj._name] = set(obj._labelnames)
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("royalty_") or family.name.endswith("_created"):
            continue  # (the text format shows a counter's creation time as its own gauge)
        labels = labels_of[family.name]
        if family.type == "counter":
            names[family.name + "_total"] = labels
        elif family.type == "histogram":
            names[family.name + "_bucket"] = labels | {"le"}
            names[family.name + "_sum"] = names[family.name + "_count"] = labels
        else:
            names[family.name] = labels
    return names


TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped sample
_SELECTOR = re.compile(r"\b(royalty_\w+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def check_query(expr: str, exported: dict[str, set[str]]) -> set[str]:
    """Asserts every royalty_* metric and label in `expr` exists; returns its labels."""
    used = _SELECTOR.findall(expr)
    assert used, f"no royalty metric in {expr!r}"
    labels: set[str] = set(TARGET_LABELS)
    for name, selector in used:
        assert name in exported, f"{name} is not exported (in {expr!r})"
        labels |= exported[name]
        for label in _MATCHER.findall(selector):
            assert label in exported[name] | TARGET_LABELS, f"{name} has no label {label}"
    for group in _BY.findall(expr):
        for label in filter(None, (s.strip() for s in group.split(","))):
            assert label in labels, f"grouping by unknown label {label} in {expr!r}"
    return labels


def test_alert_rules_parse_and_query_exported_metrics(exported) -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    seen = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in ("critical", "warning")
            assert rule["annotations"]["summary"]
            seen.add(rule["alert"])
            if rule["expr"].strip().startswith("up{"):
                continue  # Prometheus' own target health
            labels = check_query(rule["expr"], exported)
            for ref in re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])):
                assert ref in labels, (rule["alert"], ref)
    # The four the operations issue asks for, by what they watch.
    assert {"RoyaltyEngineDown", "RoyaltyUsageLogGrowing", "RoyaltyLedgerImbalance",
            "RoyaltyAttributionBacklog"} <= seen  # fmt: skip


def test_alert_rule_checker_catches_a_wrong_name(exported) -> None:
    with pytest.raises(AssertionError, match="not exported"):
        check_query("rate(royalty_requests_total[5m])", exported)
    with pytest.raises(AssertionError, match="no label"):
        check_query('royalty_tokens_total{key_id="1"}', exported)
    with pytest.raises(AssertionError, match="unknown label"):
        check_query("sum by (account) (rate(royalty_tokens_total[5m]))", exported)


def test_grafana_dashboard_queries_exported_metrics(exported) -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "royalty.json").read_text())
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())  # fmt: skip
    [source] = ds["datasources"]
    assert source["url"] == "http://prometheus:9090"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    queried = set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            labels = check_query(target["expr"], exported)
            for ref in re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", "")):
                assert ref in labels, (panel["title"], ref)
            queried |= {n for n, _ in _SELECTOR.findall(target["expr"])}
    # The dashboard covers what the issue lists.
    for prefix in ("royalty_inference_requests", "royalty_tokens", "royalty_adapter_loads",
                   "royalty_engine_requests_waiting", "royalty_usage_log_pending",
                   "royalty_credits_minted", "royalty_attribution", "royalty_penalties"):  # fmt: skip
        assert any(q.startswith(prefix) for q in queried), prefix
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "royalty.yml").read_text())  # fmt: skip
    compose = load_compose()
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts


def test_operations_guide_documents_every_exported_metric(exported) -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    table = set(re.findall(r"^\| `(royalty_\w+)` \|", doc, flags=re.MULTILINE))
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    families = {f for f in families if f + "_bucket" in exported or f in exported}
    assert families == table, (families - table, table - families)
