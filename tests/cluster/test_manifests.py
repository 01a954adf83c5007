"""The Kubernetes recipes in deploy/kubernetes: core kinds validated (strict) against the bundled schemas of
kubernetes-validate (offline); the PyTorchJob, whose CRD schema no offline validator bundles, checked
structurally against the fields of kubeflow.org/v1 (training-operator v1.8 CRD) with its pod templates
validated as core/v1 PodTemplates. Then what every recipe must carry for the images to work on a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed (it comes with kubernetes-validate)")
kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (offline schemas)")

from imagectl.matrix import load_matrix  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
K8S_VERSION = "1.30"  # the oldest version the recipes promise to work with (Indexed Jobs GA since 1.24)
# kubeflow.org/v1 PyTorchJob (training-operator v1.8 CRD): the fields a spec may carry, at each level.
PTJ_SPEC = {"elasticPolicy", "nprocPerNode", "pytorchReplicaSpecs", "runPolicy"}
PTJ_REPLICA = {"replicas", "restartPolicy", "template"}
PTJ_REPLICA_TYPES = {"Master", "Worker"}
PTJ_RESTART = {"Always", "OnFailure", "Never", "ExitCode"}
PTJ_RUN_POLICY = {"activeDeadlineSeconds", "backoffLimit", "cleanPodPolicy", "managedBy", "schedulingPolicy",
                  "suspend", "ttlSecondsAfterFinished"}
PTJ_CLEAN = {"All", "Running", "None"}


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "Job":
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    return []


ALL = [(f.name, d) for f in sorted(K8S.glob("*.yaml")) for d in docs(f.name)]


def test_recipes_exist() -> None:
    kinds = {d["kind"] for _, d in ALL}
    assert {"Job", "PyTorchJob", "Service", "ConfigMap"} <= kinds


@pytest.mark.parametrize("name,doc", [a for a in ALL if a[1]["apiVersion"] != "kubeflow.org/v1"],
                         ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_core_kinds_validate_strictly(name: str, doc: dict[str, Any]) -> None:
    kv.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError naming the field


def test_validator_rejects_a_misspelled_field() -> None:
    """The validation above can fail: a typo in a security field is caught, not ignored."""
    job = next(d for _, d in ALL if d["kind"] == "Job")
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["template"]["spec"]["securityContxt"] = broken["spec"]["template"]["spec"].pop("securityContext")
    with pytest.raises(kv.ValidationError, match="securityContxt"):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_pytorchjob_matches_the_crd_and_its_pods_validate() -> None:
    (job,) = [d for _, d in ALL if d["kind"] == "PyTorchJob"]
    assert job["apiVersion"] == "kubeflow.org/v1" and job["metadata"]["name"]
    spec = job["spec"]
    assert set(spec) <= PTJ_SPEC and "pytorchReplicaSpecs" in spec
    assert isinstance(spec.get("nprocPerNode", "auto"), str), "nprocPerNode is a string in the CRD"
    assert set(spec.get("runPolicy", {})) <= PTJ_RUN_POLICY
    assert spec.get("runPolicy", {}).get("cleanPodPolicy", "None") in PTJ_CLEAN
    replicas = spec["pytorchReplicaSpecs"]
    assert set(replicas) <= PTJ_REPLICA_TYPES and "Master" in replicas
    for rtype, r in replicas.items():
        assert set(r) <= PTJ_REPLICA and isinstance(r["replicas"], int) and r["replicas"] >= 1, rtype
        assert r.get("restartPolicy", "Never") in PTJ_RESTART, rtype
        names = [c["name"] for c in r["template"]["spec"]["containers"]]
        assert "pytorch" in names, f"{rtype}: the operator injects its env into the container named 'pytorch'"
        kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"ptj-{rtype.lower()}"},
                     "template": r["template"]}, K8S_VERSION, strict=True)


def _trainer(spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == "pytorch")


@pytest.mark.parametrize("name,doc", [a for a in ALL if pod_specs(a[1])], ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_recipes_carry_what_the_images_need_on_a_cluster(name: str, doc: dict[str, Any]) -> None:
    m = load_matrix()
    tags = {ref.split(":", 1)[1] for ref in m.image_refs(m.variant(), "data")}
    for spec in pod_specs(doc):
        sc = spec["securityContext"]
        assert sc["runAsUser"] not in (0, m.image.uid), "the recipes show an arbitrary UID (not root, not the image's)"
        assert {"runAsGroup", "fsGroup"} <= set(sc) and sc.get("runAsNonRoot") is True
        c = _trainer(spec)
        image, _, tag = c["image"].rpartition(":")
        assert image.endswith(m.image.name) and tag in tags, f"{c['image']}: not a tag the matrix builds ({tags})"
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        vols = {v["name"]: v for v in spec["volumes"]}
        mounts = {vm["mountPath"]: vm["name"] for vm in c["volumeMounts"]}
        shm = vols[mounts["/dev/shm"]]
        assert shm["emptyDir"]["medium"] == "Memory", "/dev/shm must be a memory emptyDir (64 MiB default breaks NCCL)"
        assert "emptyDir" in vols[mounts["/tmp"]], "a read-only root needs a writable, exec /tmp (emptyDir is exec)"
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert "NCCL_SOCKET_IFNAME" in env and "NCCL_DEBUG" in env
        gpus = c["resources"]["limits"]["nvidia.com/gpu"]
        assert isinstance(gpus, int) and gpus >= 1
        assert c["resources"]["requests"].get("nvidia.com/gpu", gpus) == gpus


def test_indexed_job_rendezvous_points_at_pod_zero_through_the_headless_service() -> None:
    ds = docs("indexed-job.yaml")
    job = next(d for d in ds if d["kind"] == "Job")
    svc = next(d for d in ds if d["kind"] == "Service")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"]
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    args = _trainer(pod)["args"]
    endpoint = next(a.split("=", 1)[1] for a in args if a.startswith("--rdzv-endpoint="))
    host, port = endpoint.rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
    assert f"--nnodes={job['spec']['completions']}" in args and "--rdzv-backend=c10d" in args
    cm = next(d for d in ds if d["kind"] == "ConfigMap")
    compile(cm["data"]["train.py"], "train.py", "exec")  # the shipped script is at least valid Python
