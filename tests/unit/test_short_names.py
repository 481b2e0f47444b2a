"""The CRDs' short names shadow nothing: kubectl resolves a built-in short name before any CRD's
(`cj` is CronJob's, so a `cj` of ours was unreachable), and two CRDs claiming one name make
`kubectl get` pick either. The names below are what a cluster running torchyard is likely to
have besides it; the cluster tier (tests/chart/test_cluster_day_two.py) checks BUILTIN against
the real API server's `api-resources`, so a Kubernetes bump that adds a short name fails there.
"""

from __future__ import annotations

from torchyard.api.constants import (
    COMPRESSION_JOB_KIND,
    COMPRESSION_JOB_PLURAL,
    TRAINING_JOB_KIND,
    TRAINING_JOB_PLURAL,
)
from torchyard.crd import SHORT_NAMES, all_crds

# Kubernetes' own short names (1.37, every group served by kube-apiserver; psp is gone but
# long-lived clusters and kubectl habits keep it).
BUILTIN = {
    "cm", "cs", "ep", "ev", "limits", "no", "ns", "po", "pv", "pvc", "quota", "rc", "sa",
    "svc", "crd", "crds", "ds", "deploy", "rs", "sts", "hpa", "cj", "csr", "ing", "netpol",
    "pdb", "pc", "sc", "vac", "ip", "psp",
}  # fmt: skip

# Short names of the schedulers and operators a training cluster runs alongside torchyard.
ECOSYSTEM = {
    # Kueue (kueue.x-k8s.io, v0.17's config/components/crd/bases; `wl` before it)
    "kueue": {"cq", "lq", "queue", "queues", "rf", "flavor", "flavors", "kwl", "kueueworkload",
              "kueueworkloads", "wl"},
    # Volcano (batch/scheduling/flow/topology/nodeinfo .volcano.sh): vcjob, vj and jf read in
    # its kubebuilder markers; the rest from its docs and kept as a margin (the module proxy
    # does not serve volcano.sh to check)
    "volcano": {"vcjob", "vj", "vcronjob", "vcj", "q", "queue-v1beta1", "pg",
                "podgroup-v1beta1", "jf", "jt", "hn", "numatopo"},
    # Kubeflow: training-operator v1.8 (TFJob, PyTorchJob, MPIJob, XGBoostJob, PaddleJob,
    # MXJob) and Trainer v2.0 (TrainJob, (Cluster)TrainingRuntime) declare none (read in
    # their CRDs). Their resource names are in RESOURCES.
    "kubeflow": set(),
    # Argo Workflows (wf, wfeb read in its markers), CD, Rollouts, Events
    "argo": {"wf", "cwf", "cronwf", "wftmpl", "cwftmpl", "clusterwftmpl", "wfeb", "wfts",
             "wftr", "wfat", "app", "apps", "appset", "appsets", "appproj", "appprojs", "ro",
             "at", "cat", "ar", "exp", "es", "sn", "eb"},
    # KubeRay (RayCluster, RayJob, RayService: none in its 1.5.0 CRDs).
    "kuberay": set(),
}  # fmt: skip

# Plural and singular resource names kubectl also matches (`kubectl get trainjob`): a short
# name equal to one of these would be just as ambiguous.
RESOURCES = {
    "cronjobs", "cronjob", "jobs", "job", "pods", "pod", "workloads", "workload",
    "clusterqueues", "localqueues", "localqueue", "podgroups", "podgroup", "tfjobs", "tfjob",
    "pytorchjobs", "pytorchjob", "mpijobs", "mpijob", "xgboostjobs", "paddlejobs", "mxjobs",
    "jaxjobs", "trainjobs", "trainjob", "trainingruntimes", "clustertrainingruntimes",
    "experiments", "trials", "workflows", "workflow", "rayclusters", "rayjobs", "rayservices",
    "raycronjobs",
}  # fmt: skip

TAKEN = BUILTIN | set().union(*ECOSYSTEM.values()) | RESOURCES


def test_short_names_shadow_nothing_known() -> None:
    ours = {name for names in SHORT_NAMES.values() for name in names}
    assert ours, "the CRDs should have short names"
    assert not ours & TAKEN, f"taken elsewhere: {sorted(ours & TAKEN)}"
    # a short name must not be one of our own plurals/singulars either, nor repeat
    ours_listed = [name for names in SHORT_NAMES.values() for name in names]
    assert len(ours_listed) == len(ours)
    for kind, plural in (
        (TRAINING_JOB_KIND, TRAINING_JOB_PLURAL),
        (COMPRESSION_JOB_KIND, COMPRESSION_JOB_PLURAL),
    ):
        assert not {plural, kind.lower()} & ours


def test_the_crds_carry_exactly_these_short_names() -> None:
    for crd in all_crds().values():
        names = crd["spec"]["names"]
        assert names["shortNames"] == SHORT_NAMES[names["kind"]]


def test_the_check_can_fail() -> None:
    """CronJob's `cj`, what CompressionJob had before, is in the list."""
    assert "cj" in TAKEN
