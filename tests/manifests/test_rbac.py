"""RBAC of the setup overlay: exactly the rules a launcher and a Spark driver need, no wildcards,
no secrets; and every call the Kubernetes launcher makes is allowed by the launcher's Role."""

from __future__ import annotations

from typing import Any

from tests.components.launchers.fake_cluster import FakeCluster, run_scenario
from tests.manifests.conftest import rendered

# (apiGroup, resource) -> verbs. Changing a Role means changing this table, in review.
LAUNCHER_RULES = {
    ("kubeflow.org", "pytorchjobs"): {"create", "get", "list", "watch", "delete"},
    ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "watch", "delete"},
    ("trainer.kubeflow.org", "trainingruntimes"): {"create", "get", "delete"},
    ("sparkoperator.k8s.io", "sparkapplications"): {"create", "get", "list", "watch", "delete"},
    ("", "configmaps"): {"create", "get", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
}
SPARK_RULES = {
    ("", r): {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
    for r in ("pods", "services", "configmaps", "persistentvolumeclaims")
}


def _objects(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered("setup") if o["kind"] == kind}


def _grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, "no resourceNames/nonResourceURLs"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_roles_grant_exactly_the_needed_rules():
    roles = _objects("Role")
    assert set(roles) == {"metarec-launcher", "metarec-spark"}
    assert _grants(roles["metarec-launcher"]) == LAUNCHER_RULES
    assert _grants(roles["metarec-spark"]) == SPARK_RULES
    assert not _objects("ClusterRole") and not _objects("ClusterRoleBinding")


def test_no_wildcards_and_no_secrets():
    for role in _objects("Role").values():
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{role['metadata']['name']}: wildcard in {key}"
            assert "secrets" not in rule["resources"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "pods/exec" not in rule["resources"]


def test_bindings_tie_each_role_to_its_own_account():
    accounts = _objects("ServiceAccount")
    for name, binding in _objects("RoleBinding").items():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name,
        }  # fmt: skip
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount" and subject["name"] == name
        assert subject["namespace"] == binding["metadata"]["namespace"] == "metarec"
        assert name in accounts
    assert accounts["metarec-trainer"]["automountServiceAccountToken"] is False


def _needed(call: tuple[str, tuple, dict]) -> tuple[str, str, str]:
    """The (group, resource, verb) a client call needs."""
    method, args, _ = call
    verb = method.split("_")[0].replace("read", "get")
    if "custom_object" in method:
        group, _, _, plural = args[:4]
        return group, plural, verb
    if method == "read_namespaced_pod_log":
        return "", "pods/log", "get"
    if method == "list_namespaced_pod":
        return "", "pods", "list"
    return "", "configmaps", verb


def test_every_launcher_call_is_allowed_by_the_launcher_role():
    granted = _grants(_objects("Role")["metarec-launcher"])
    used = set()
    for kind in ("PyTorchJob", "TrainJob", "SparkApplication"):
        for outcome in ("succeeded", "failed"):
            cluster = FakeCluster()
            run_scenario(cluster, kind, outcome, cleanup="always")
            used |= {_needed(c) for c in cluster.calls}
    assert used
    for group, resource, verb in used:
        assert verb in granted.get((group, resource), set()), (group, resource, verb)
