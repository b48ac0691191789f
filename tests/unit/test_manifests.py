"""Kubernetes manifests and Dockerfiles, checked offline: rendered by the pinned kustomize, valid
against Kubernetes' schemas, no checkov finding, and the capacity plan's numbers in the YAML."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT
from tools import k8s

CUSTOM_RESOURCES = ("PodMonitor/", "PrometheusRule/")  # no schema bundled with kubernetes-validate


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return k8s.render_all(tmp_path_factory.mktemp("k8s"))


def test_make_k8s_renders_validates_and_scans_clean(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tools.k8s", "check", "--out", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "check.json").read_text())
    for name, rows in report["validation"].items():
        assert rows, name
        assert all(r["result"] == "valid" or r["resource"].startswith(CUSTOM_RESOURCES) for r in rows), rows
    cpu_kinds = {r["resource"].split("/")[0] for r in report["validation"]["cpu"]}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
            "PodMonitor"} <= cpu_kinds
    assert {r["resource"].split("/")[0] for r in report["validation"]["loadtest"]} >= {"Job", "Deployment", "Service"}
    for framework, at_least in (("kubernetes", 300), ("dockerfile", 80)):
        scan = report[f"checkov_{framework}"]
        assert scan["failed"] == [] and scan["passed"] >= at_least, scan
    # every skip is the image digest (unknown until the user pushes the image), with its reason
    assert all(s.startswith("CKV_K8S_43 ") and len(s.split(": ", 1)[1]) > 20 for s in report["checkov_kubernetes"]["skipped"])


def test_validation_rejects_an_unknown_field(rendered, tmp_path):
    docs = list(yaml.safe_load_all(rendered["cpu"].read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"  # a typo
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(k8s.ManifestError, match="Deployment/triton is not valid Kubernetes"):
        k8s.validate(broken)


def test_checkov_finds_a_privileged_container(rendered, tmp_path):
    docs = list(yaml.safe_load_all(rendered["cpu"].read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
        privileged=True, allowPrivilegeEscalation=True)
    risky = tmp_path / "risky.yaml"
    risky.write_text(yaml.safe_dump_all(docs))
    failed = k8s.scan([risky], "kubernetes")["failed"]
    assert any(f.startswith("CKV_K8S_16 ") for f in failed), failed  # privileged


def test_serving_deployment_has_what_operations_need(rendered):
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered["cpu"].read_text())}
    pod = docs[("Deployment", "triton")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # liveness and readiness both need every step's stub alive (a dead stub leaves Triton ready)
    liveness = " ".join(container["livenessProbe"]["exec"]["command"])
    assert "/v2/health/live" in liveness and liveness.endswith("python3 /opt/yolo-triton/stub_health.py")
    assert " ".join(container["readinessProbe"]["exec"]["command"]).endswith("python3 /opt/yolo-triton/stub_health.py")
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert "COPY stub_health.py /opt/yolo-triton/stub_health.py" in dockerfile
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 120
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    drain = next(a for a in container["args"] if a.startswith("--exit-timeout-secs="))
    assert pod["terminationGracePeriodSeconds"] > int(drain.split("=")[1])  # the drain finishes before SIGKILL
    hpa = docs[("HorizontalPodAutoscaler", "triton")]["spec"]
    assert_adapter_serves_frames_per_pod(hpa["metrics"][0]["pods"]["metric"]["name"])


def assert_adapter_serves_frames_per_pod(metric: str) -> None:
    """prometheus-adapter's rules (deploy/k8s/monitoring) expose `metric` per pod, and it counts the
    frames the ensemble answers (nv_inference_count of model yolo), not requests or another step."""
    monitoring = {d["metadata"]["name"]: d for d in yaml.safe_load_all(k8s.render(k8s.K8S_DIR / "monitoring"))}
    rules = yaml.safe_load(monitoring["prometheus-adapter-yolo-triton"]["data"]["config.yaml"])["rules"]
    exposed = {rule["name"]["as"]: rule for rule in rules}
    assert metric in exposed, f"the HPA reads {metric!r}; the adapter exposes {sorted(exposed)}"
    rule = exposed[metric]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    for query in (rule["seriesQuery"], rule["metricsQuery"]):
        assert query.split("{")[0].split("(")[-1].strip() == "nv_inference_count", query
        assert 'model="yolo"' in query, query


def test_pods_stop_in_order_within_their_grace_period(rendered):
    """preStop makes the pod not-ready (the file its readiness probe reads), waits for the endpoints
    to forget it and for Triton to be idle, all before SIGTERM and well before SIGKILL."""
    from tools import drain

    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered["cpu"].read_text())}
    pod = docs[("Deployment", "triton")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    probe = container["readinessProbe"]
    probe_command = " ".join(probe["exec"]["command"])
    assert '"$DRAIN_FILE"' in probe_command and "DRAIN_READY_URL" in probe_command
    assert env["DRAIN_READY_URL"].endswith(":8000/v2/health/ready") and env["DRAIN_METRICS_URL"].endswith(":8002/metrics")
    assert env["DRAIN_FILE"].startswith("/tmp/")  # the writable emptyDir (the root filesystem is read-only)
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert 'open(env["DRAIN_FILE"], "w")' in pre_stop and drain.PENDING_GAUGE in pre_stop
    assert all(counter in pre_stop for counter in drain.ACTIVITY_COUNTERS)  # idle means the same as the launcher's
    compile(pre_stop, "preStop", "exec")
    # the grace covers the probe noticing (period x threshold) plus propagation, as the launcher's default
    grace = float(env["DRAIN_GRACE_SECONDS"])
    assert probe["periodSeconds"] == drain.PROBE_PERIOD_S and probe["failureThreshold"] == drain.PROBE_FAILURE_THRESHOLD
    assert grace == drain.DEFAULT_GRACE_S >= probe["periodSeconds"] * probe["failureThreshold"] + 1
    assert float(env["DRAIN_QUIET_SECONDS"]) == drain.DEFAULT_QUIET_S
    exit_timeout = int(next(a for a in container["args"] if a.startswith("--exit-timeout-secs=")).split("=")[1])
    # the kubelet sends SIGKILL at terminationGracePeriodSeconds, counted from the start of preStop
    assert pod["terminationGracePeriodSeconds"] >= grace + float(env["DRAIN_MAX_WAIT_SECONDS"]) + exit_timeout
    rollout = docs[("Deployment", "triton")]["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0  # a rolling update never drains a replica before its successor is ready


def test_dashboard_queries_the_metrics_the_load_test_reads():
    from loadtest.metrics import COUNTERS

    dashboard = json.loads((k8s.K8S_DIR / "monitoring" / "grafana" / "triton-dashboard.json").read_text())
    queried = {word for panel in dashboard["panels"] for target in panel["targets"]
               for word in target["expr"].replace("(", " ").replace("{", " ").split() if word.startswith("nv_")}
    assert queried and queried <= set(COUNTERS)


def test_entrypoint_and_server_restrict_the_same_apis():
    from tools.server import RESTRICTED_APIS

    script = (ROOT / "deploy" / "docker" / "entrypoint.sh").read_text()
    line = next(line for line in script.splitlines() if line.strip().startswith("apis="))
    assert line.split('"')[1].split(",") == list(RESTRICTED_APIS)


def test_capacity_plan_reaches_the_manifests(tmp_path):
    """The planner through its CLI: arithmetic in plan.json, the same numbers in valid YAML."""
    from tests.unit.test_cli_errors import container_repository

    # two preprocess and two postprocess instances: /dev/shm beyond its 256 MiB floor
    repo = container_repository(tmp_path / "repo", "onnxruntime", image_size=(640, 640), num_classes=80,
                                max_batch_size=16, preprocess_instances=2, postprocess_instances=2)
    capacity = tmp_path / "capacity.json"
    capacity.write_text(json.dumps({"capacity_streams": 7, "fps": 10.0, "slo_ms": 100.0, "machine": {"cpus": 2},
                                    "probes": {"7": {"ok": True, "p99_ms": 91.0, "detector_queue_ms": 12.0}}}))
    result = subprocess.run([sys.executable, "-m", "tools.capacity_plan", "--cameras", "500", "--fps", "10",
                             "--capacity", str(capacity), "--repo", str(repo), "--artifacts", str(tmp_path),
                             "--out", str(tmp_path / "k8s")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "k8s" / "plan-cpu" / "plan.json").read_text())
    assert plan["replicas"] == 103  # ceil(5000 / (7 * 10 * 0.7))
    assert plan["hpa"] == {"min": 103, "max": 155, "frames_per_second_target": 49.0}  # 0.7 x 7 streams x 10 FPS
    # 2 x (2 instances x 16 x 3 x 640 x 640 uint8 pixels + 2 x 16 x (64 + 80) x 8400 float32 head) = 370 MiB,
    # in 64 MiB steps: 384
    assert plan["resources"]["shm_mb"] == 384
    # the replica's 2 CPUs as the repository spends them: one preprocess instance decoding on both
    # cores, two detector instances of one ONNX Runtime thread each
    assert plan["inputs"]["serving"] == {"preprocess_instances": 2, "decode_threads": 1, "detector_instances": 2,
                                         "ort_threads": 1}
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all((tmp_path / "k8s" / "plan-cpu.yaml").read_text())}
    deployment = docs[("Deployment", "triton")]["spec"]
    assert deployment["replicas"] == 103
    assert deployment["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"
    shm = next(v for v in deployment["template"]["spec"]["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["sizeLimit"] == f"{plan['resources']['shm_mb']}Mi"
    autoscaler = docs[("HorizontalPodAutoscaler", "triton")]["spec"]
    assert autoscaler["maxReplicas"] == 155
    assert_adapter_serves_frames_per_pod(autoscaler["metrics"][0]["pods"]["metric"]["name"])
    assert autoscaler["metrics"][0]["pods"]["target"]["averageValue"] == "49"
    args = docs[("Job", "locust-master")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--streams") + 1] == "500" and args[args.index("--remote-workers") + 1] == "5"
    assert docs[("Deployment", "locust-worker")]["spec"]["replicas"] == 5
    assert "measured" in (tmp_path / "k8s" / "plan-cpu" / "plan.md").read_text()
