"""deploy/k8s/: valid against the Kubernetes API schemas (PyPI kubernetes-validate, which ships
them: no network, no cluster), and consistent with deploy/haproxy/haproxy.cfg. The manifests
are not run anywhere: there is no cluster here."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.harness import ROOT

K8S = ROOT / "deploy" / "k8s"
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
VERSIONS = ("1.30.0", "1.33.0")  # the oldest release still kept by the big clouds, a newer one


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def by_kind(kind: str) -> dict:
    (doc,) = [d for _, d in documents() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str):
    docs = documents()
    assert {d["kind"] for _, d in docs} >= {"StatefulSet", "Service", "Deployment",
                                           "ConfigMap", "PodDisruptionBudget"}
    for name, doc in docs:
        try:  # strict: a misspelt or misplaced field is refused too
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name} is not valid Kubernetes {version}: {e.message} at "
                        f"{'.'.join(str(p) for p in e.path)}")


def test_a_broken_manifest_is_refused():
    """The check above can fail: a misplaced field and a wrong type are caught."""
    sts = by_kind("StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["privilegd"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, VERSIONS[0], strict=True)
    sts = by_kind("StatefulSet")
    sts["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, VERSIONS[0], strict=True)


def test_haproxy_runs_the_tested_configuration_against_every_daemon():
    config = by_kind("ConfigMap")["data"]["haproxy.cfg"]
    assert config == HAPROXY_CFG.read_text()  # word for word what tests/system/test_cluster.py runs
    env = {e["name"]: e["value"] for e in
           by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    sts = by_kind("StatefulSet")
    names = sorted(set(re.findall(r'"\$\{(NODE_[A-Z])-', config)))
    assert len(names) == sts["spec"]["replicas"]
    service, namespace = sts["spec"]["serviceName"], sts["metadata"]["namespace"]
    for i, name in enumerate(names):  # each server line is one pod, by its stable DNS name
        assert env[name] == f"sandboxd-{i}.{service}.{namespace}.svc.cluster.local:8080"
        assert env[f"{name}_HEALTH"] == "9100"
        assert env[f"{name}_HTTP"] == f"sandboxd-{i}.{service}.{namespace}.svc.cluster.local:8081"


def test_the_daemons_drain_longer_than_haproxy_takes_to_notice():
    config = HAPROXY_CFG.read_text()
    inter = float(re.search(r"inter (\d+)s", config).group(1))
    fall = int(re.search(r"fall (\d+)", config).group(1))
    check = float(re.search(r"timeout check (\d+)s", config).group(1))
    pod = by_kind("StatefulSet")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    drain = float(args[args.index("--drain-time") + 1])
    grace = float(args[args.index("--shutdown-grace") + 1])
    # The first failed check comes within `inter` of the SIGTERM, the fall-th (fall-1) x
    # inter later: HAProxy has taken the daemon out before its listeners close.
    assert drain >= fall * inter + check
    # Kubernetes' SIGKILL comes after terminationGracePeriodSeconds: after the drain, the
    # grace, and the daemon's own bound on cancelling and cleaning up (~15 s).
    assert pod["terminationGracePeriodSeconds"] >= drain + grace + 15
    assert pod["automountServiceAccountToken"] is False  # nothing for a box to find
    assert "--node-name" in args and "$(POD_NAME)" in args


def test_the_manifests_say_they_are_not_run():
    for path in K8S.glob("*.yaml"):
        assert "NOT RUN" in path.read_text().split("apiVersion")[0], path
    assert Path(K8S / "sandboxd.yaml").exists()
