"""Turn a measured per-replica capacity into a Kubernetes deployment: replicas, HPA bounds and
target, resource requests, and the distributed load test sized to match (`make plan-capacity`).

    python -m tools.capacity_plan --cameras 500 --fps 10                     # from artifacts/capacity
    python -m tools.capacity_plan --cameras 500 --fps 10 --overlay gpu --per-replica-streams 120  # assumed

Measured input: `make capacity` (artifacts/capacity/capacity.json: streams one replica holds
within the SLO at the FPS, the machine it ran on) or `make tune`'s tuned capacity, and the
soak's resident memory when present. The HPA target is frames/s per pod at 70% of capacity. Anything not measured (a GPU
replica's capacity here) is passed in and marked `assumed` in the plan.
Writes build/k8s/plan-<overlay>/ (a kustomization over deploy/k8s), its rendered YAML, plan.json
and plan.md with the arithmetic.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path

import yaml

from compress.defaults import DEFAULT_CAMERA_FPS, DEFAULT_SLO_MS
from compress.env import cpu_threads
from compress.errors import InputFileError, ToolkitError, cli_entry
from tools import k8s
from tools import triton_config as tc
from tools.container import shm_size_bytes
from tools.repository import RepositoryRecord

TARGET_UTILISATION = 0.7  # replicas run at <= 70% of measured capacity: room for spikes and a rollout
BURST_FACTOR = 1.5  # HPA may grow to 1.5x the steady replica count (camera bursts, a slow node)
STREAMS_PER_LOCUST_WORKER = 100  # assumed: one worker core drives ~100 camera streams at 10 FPS
DEFAULT_MEMORY_MB = 2048  # assumed when no soak measured the replica's resident memory
MEMORY_HEADROOM = 1.5
HPA_METRIC = "triton_frames_per_second"  # served by prometheus-adapter (deploy/k8s/monitoring)
ARGS_PATH = "/spec/template/spec/containers/0/args"


def master_args() -> list[str]:
    """The locust-master Job's args as committed (deploy/k8s/loadtest/master-job.yaml)."""
    job = yaml.safe_load((k8s.K8S_DIR / "loadtest" / "master-job.yaml").read_text())
    return job["spec"]["template"]["spec"]["containers"][0]["args"]


def _by_placement(record: dict) -> dict[str, dict]:
    """capacity.json's measurements per placement (tools.placement); one written before placements
    were measured is the shared one."""
    return record.get("by_placement") or {"shared": {"name": "shared", "by_frames": record.get("by_frames", {})}}


def capacity_for(artifacts: Path, frames: str | None = None, placement: str | None = "shared") -> dict | None:
    """The capacity `make capacity` measured with frame set `frames` (a name as FRAMES= takes it;
    without one, the largest frames measured) at `placement` (shared: the load generator on the
    server's cores; isolated: on a core of its own; None: isolated where measured, else shared).
    None if not measured."""
    path = Path(artifacts) / "capacity" / "capacity.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if "by_frames" not in record and "capacity_streams" in record:  # written before frame sets: frames unknown
        return {**record, "source": str(path)} if frames in (None, "") and placement in (None, "shared") else None
    placements = _by_placement(record)
    placement = placement or ("isolated" if "isolated" in placements else "shared")
    by_frames = placements.get(placement, {}).get("by_frames", {})
    if frames in (None, ""):
        if not by_frames:
            return None
        frames = max(by_frames, key=lambda n: by_frames[n]["frame_set"]["width"] * by_frames[n]["frame_set"]["height"])
    name = "dataset" if str(frames) in ("256", "dataset") else Path(str(frames)).name
    found = by_frames.get(name)
    return {"placement": {"name": placement}, **found, "source": str(path)} if found else None


def capacity_table(result: dict) -> list[str]:
    """The capacity per placement and frame size (capacity.json) as markdown table lines: `make
    capacity`'s report and the README's headline print the same lines."""
    lines = ["| frames | load generator | server cores | size | KiB/frame | streams held | vs dataset | bottleneck | "
             "preprocess ms/frame | detector ms/frame | postprocess ms/frame | client CPU ms/frame |",
             "|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for label, entry in _by_placement(result).items():
        by_frames = entry["by_frames"]
        base = by_frames.get("dataset", {}).get("capacity_streams")
        where = "on the server's cores" if label == "shared" else f"isolated (cores {','.join(map(str, entry['client_cpus']))})"
        base_rounds = by_frames.get("dataset", {}).get("rounds")
        for name, r in by_frames.items():
            held = r["probes"].get(str(r["capacity_streams"])) or next(iter(r["probes"].values()))
            compute, fs = held["compute_ms_per_frame"], r["frame_set"]
            ratio = f"{r['capacity_streams'] / base:.0%}" if base else "-"
            streams = str(r["capacity_streams"])
            if r.get("rounds"):  # every round, and the ratios within the rounds (the sizes ran side by side)
                streams += f" ({', '.join(map(str, r['rounds']))})"
                if base_rounds and len(base_rounds) == len(r["rounds"]) and all(base_rounds):
                    per_round = [own / other for own, other in zip(r["rounds"], base_rounds)]
                    ratio = f"{statistics.median(per_round):.0%} ({min(per_round):.0%}-{max(per_round):.0%})"
            lines.append(f"| {name} | {where} | {r.get('machine', {}).get('cpus', '-')} | {fs['width']}x{fs['height']} | "
                         f"{fs['mean_kib']} | {streams} | {ratio} | {held['bottleneck']} | "
                         f"{compute['preprocess']} | {compute['detector']} | {compute['postprocess']} | "
                         f"{held['client_cpu_ms_per_frame']} |")
    return lines


def measured_capacity(artifacts: Path, frames: str | None = None, placement: str | None = None) -> dict:
    """The best capacity measurement there is for the frames the cameras send (`frames`; default
    1080p, else the largest measured) at `placement` (None: isolated where measured, else shared):
    at shared cores, tuned (make tune measures there) over untuned (make capacity)."""
    if placement is None:
        placement = "isolated" if capacity_for(artifacts, frames, "isolated") else "shared"
    wanted = frames or ("1080p" if capacity_for(artifacts, "1080p", placement) else None)
    tune = artifacts / "tune" / "tune.json"
    if tune.exists() and placement == "shared":
        tuned = json.loads(tune.read_text())
        tuned_frames = tuned.get("frame_set", {}).get("name")
        if "tuned_capacity" in tuned and (wanted is None or tuned_frames == wanted):
            return {"placement": {"name": "shared"}, **tuned["tuned_capacity"], "source": str(tune)}
    found = capacity_for(artifacts, wanted, placement)
    if found:
        return found
    raise InputFileError(f"no capacity measurement{' with ' + wanted + ' frames' if wanted else ''} "
                         f"at placement {placement} in {artifacts}",
                         hint=f"run `make capacity{' FRAMES=' + wanted if wanted else ''}` (or `make tune`) first, "
                              "or pass --per-replica-streams (assumed)")


def soak_memory_mb(artifacts: Path) -> float | None:
    soak = artifacts / "soak" / "soak.json"
    if soak.exists():
        return json.loads(soak.read_text())["memory"]["total"]["end_mb"]
    return None


def plan(cameras: int, fps: float, capacity: dict, memory_mb: float | None, settings: tc.RepositorySettings,
         overlay: str) -> dict:
    """The arithmetic, every input labelled measured or assumed."""
    if cameras < 1 or fps <= 0:
        raise ToolkitError("cameras must be >= 1 and fps > 0")
    streams, measured_fps = capacity["capacity_streams"], capacity["fps"]
    if streams < 1:
        raise ToolkitError("the measured capacity is 0 streams: one replica does not hold one stream within the SLO",
                           hint="fix serving speed first (make tune), or plan with --per-replica-streams")
    replica_fps = streams * measured_fps  # frames/s one replica answers within the SLO
    demand_fps = cameras * fps
    replicas = max(2, math.ceil(demand_fps / (replica_fps * TARGET_UTILISATION)))  # 2: one may be drained
    memory = memory_mb or DEFAULT_MEMORY_MB
    cpus = capacity.get("machine", {}).get("cpus") or cpu_threads()
    cpus_kind = ("assumed" if capacity.get("kind") == "assumed" else "measured") if "machine" in capacity \
        else "assumed (this machine)"
    return {
        "inputs": {
            "cameras": cameras, "fps": fps, "overlay": overlay,
            "replica_capacity_streams": {"value": streams, "at_fps": measured_fps,
                                         "kind": capacity.get("kind", "measured"), "source": capacity.get("source")},
            # the frames the capacity was measured with: a plan holds only for frames that size
            "frames": _frames_label(capacity),
            # where the load generator ran while it was measured (tools.placement)
            "placement": capacity.get("placement", {}).get("name", "assumed" if capacity.get("kind") == "assumed"
                                                            else "shared"),
            "slo_ms": capacity.get("slo_ms"),
            "replica_cpus": {"value": cpus, "kind": cpus_kind},
            "replica_memory_mb": {"value": memory, "kind": "measured (soak RSS)" if memory_mb else "assumed"},
            "target_utilisation": TARGET_UTILISATION, "burst_factor": BURST_FACTOR,
            "streams_per_locust_worker": {"value": STREAMS_PER_LOCUST_WORKER, "kind": "assumed"},
            # how a replica spends its CPUs: the repository's instances, each with its share of the
            # cores (decode threads, ONNX Runtime threads) unless the repository fixes them
            "serving": {"preprocess_instances": settings.preprocess_instances,
                        "decode_threads": settings.decode_threads or max(1, int(cpus) // settings.preprocess_instances),
                        "detector_instances": settings.detector_instances,
                        "ort_threads": settings.ort_threads or max(1, int(cpus) // settings.detector_instances)},
        },
        "demand_fps": demand_fps,
        "replica_fps": replica_fps,
        "replicas": replicas,
        # Scale on the frames each pod answers, the quantity the capacity was measured in: at the
        # target a replica runs at TARGET_UTILISATION of it. (With two detector instances the
        # detector's queue time barely moves between one stream and capacity: a target on it
        # would scale on noise.)
        "hpa": {"min": replicas, "max": math.ceil(replicas * BURST_FACTOR),
                "frames_per_second_target": round(replica_fps * TARGET_UTILISATION, 1)},
        "resources": {"cpu": str(cpus), "memory_request_mb": math.ceil(memory * MEMORY_HEADROOM / 256) * 256,
                      "memory_limit_mb": math.ceil(memory * MEMORY_HEADROOM * 2 / 256) * 256,
                      "shm_mb": shm_size_bytes(settings) // 2**20},
        "loadtest": {"streams": cameras, "workers": max(1, math.ceil(cameras / STREAMS_PER_LOCUST_WORKER))},
    }


def with_conservative_line(result: dict, artifacts: Path, capacity: dict, memory_mb: float | None,
                           settings: tc.RepositorySettings) -> dict:
    """A plan on the isolated figure keeps the shared-core one beside it (`conservative`): the
    replicas and cores it would take if the load generator's CPU were the replica's."""
    if result["inputs"]["placement"] != "isolated":
        return result
    shared = capacity_for(artifacts, capacity.get("frame_set", {}).get("name"), "shared")
    if shared and shared["capacity_streams"] > 0:
        i = result["inputs"]
        other = plan(i["cameras"], i["fps"], shared, memory_mb, settings, i["overlay"])
        result["conservative"] = {"placement": "shared", "streams": shared["capacity_streams"],
                                  "cpus": other["resources"]["cpu"], "replicas": other["replicas"],
                                  "cores": other["replicas"] * float(other["resources"]["cpu"])}
    return result


def _frames_label(capacity: dict) -> str:
    frame_set = capacity.get("frame_set")
    if not frame_set:
        return "unknown (not recorded with the capacity)"
    return f"{frame_set['name']} ({frame_set['width']}x{frame_set['height']}, {frame_set['mean_kib']} KiB per frame)"


def kustomization(result: dict, overlay_dir: Path, out_dir: Path) -> dict:
    """A kustomization over the overlay and the load test with the planned numbers patched in."""
    r, hpa, lt = result["resources"], result["hpa"], result["loadtest"]
    container = {"name": "triton", "resources": {
        "requests": {"cpu": r["cpu"], "memory": f"{r['memory_request_mb']}Mi"},
        "limits": {"cpu": r["cpu"], "memory": f"{r['memory_limit_mb']}Mi"}}}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "triton"},
                  "spec": {"replicas": result["replicas"], "template": {"spec": {
                      "containers": [container],
                      "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{r['shm_mb']}Mi"}}]}}}}
    autoscaler = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "triton"},
                  "spec": {"minReplicas": hpa["min"], "maxReplicas": hpa["max"], "metrics": [{"type": "Pods", "pods": {
                      "metric": {"name": HPA_METRIC},
                      "target": {"type": "AverageValue", "averageValue": f"{hpa['frames_per_second_target']:g}"}}}]}}
    workers = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "locust-worker"},
               "spec": {"replicas": lt["workers"]}}
    args = []
    for flag, value in (("--streams", lt["streams"]), ("--fps", result["inputs"]["fps"]),
                        ("--remote-workers", lt["workers"])):
        index = master_args().index(flag)  # `test` makes kustomize fail if the Job's args ever move
        args += [{"op": "test", "path": f"{ARGS_PATH}/{index}", "value": flag},
                 {"op": "replace", "path": f"{ARGS_PATH}/{index + 1}", "value": f"{value:g}" if isinstance(value, float)
                  else str(value)}]
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(overlay_dir, out_dir.resolve()),
                          os.path.relpath(k8s.K8S_DIR / "loadtest", out_dir.resolve())],
            "patches": [{"patch": yaml.safe_dump(deployment)}, {"patch": yaml.safe_dump(autoscaler)},
                        {"patch": yaml.safe_dump(workers)},
                        {"target": {"kind": "Job", "name": "locust-master"}, "patch": yaml.safe_dump(args)}]}


def plan_title(result: dict) -> str:
    i = result["inputs"]
    return f"Capacity plan: {i['cameras']} cameras x {i['fps']:g} FPS on {i['overlay']} nodes"


def frames_line(result: dict) -> str:
    return f"- frames this plan assumes: **{result['inputs']['frames']}** (the size the capacity was measured with)"


def placement_line(result: dict) -> str:
    i = result["inputs"]
    said = {"isolated": "isolated: the load generator on a core of its own while it was measured, as cameras "
                        "elsewhere are", "shared": "shared: the load generator on the replica's cores while it was "
                                                   "measured (its CPU counted against the replica: conservative)",
            "assumed": "assumed (not measured)"}
    line = f"- capacity measured with the load generator {said.get(i.get('placement', 'shared'), i.get('placement'))}"
    other = result.get("conservative")
    if other:
        line += (f"; sized on the shared-core figure instead ({other['streams']} streams on {other['cpus']} CPUs) it "
                 f"would be {other['replicas']} replicas, {other['cores']:g} cores (the conservative line)")
    return line


def replicas_line(result: dict) -> str:
    i = result["inputs"]
    return (f"- replicas = max(2, ceil({result['demand_fps']:g} / ({result['replica_fps']:g} x {i['target_utilisation']})))"
            f" = **{result['replicas']}** (run at <= {i['target_utilisation']:.0%} of capacity; 2 so one can drain)")


def to_markdown(result: dict) -> str:
    i = result["inputs"]
    cap = i["replica_capacity_streams"]
    lines = [f"# {plan_title(result)}", "",
             f"- demand: {i['cameras']} x {i['fps']:g} = **{result['demand_fps']:g} frames/s**",
             frames_line(result),
             placement_line(result),
             f"- one replica ({cap['kind']}, {cap['source']}): {cap['value']} streams x {cap['at_fps']:g} FPS within "
             f"p99 <= {i['slo_ms']} ms = **{result['replica_fps']:g} frames/s** on {i['replica_cpus']['value']} CPUs "
             f"({i['replica_cpus']['kind']})",
             replicas_line(result),
             f"- HPA: min {result['hpa']['min']}, max ceil({result['hpa']['min']} x {i['burst_factor']}) = "
             f"{result['hpa']['max']}, target {result['hpa']['frames_per_second_target']:g} frames/s per pod "
             f"(`{HPA_METRIC}`) = {i['target_utilisation']} x {result['replica_fps']:g} frames/s at capacity",
             f"- per replica: {result['resources']['cpu']} CPU, memory request {result['resources']['memory_request_mb']} Mi "
             f"(= {i['replica_memory_mb']['value']:.0f} MB RSS {i['replica_memory_mb']['kind']} x {MEMORY_HEADROOM}), "
             f"limit {result['resources']['memory_limit_mb']} Mi, /dev/shm {result['resources']['shm_mb']} Mi",
             f"- each replica as measured: {i['serving']['preprocess_instances']} preprocess instance(s) x "
             f"{i['serving']['decode_threads']} decode threads, {i['serving']['detector_instances']} detector instance(s) x "
             f"{i['serving']['ort_threads']} ONNX Runtime threads on its {result['resources']['cpu']} CPUs",
             f"- load test: {result['loadtest']['streams']} streams on {result['loadtest']['workers']} Locust workers "
             f"({i['streams_per_locust_worker']['value']} streams per worker, assumed)",
             f"- cluster CPU for serving: {result['replicas']} x {result['resources']['cpu']} = "
             f"{result['replicas'] * float(result['resources']['cpu']):g} cores steady, "
             f"{result['hpa']['max'] * float(result['resources']['cpu']):g} at the HPA maximum"]
    return "\n".join(lines) + "\n"


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=500, help="cameras to serve (default %(default)s)")
    parser.add_argument("--fps", type=float, default=DEFAULT_CAMERA_FPS, help="frames per second per camera (default %(default)s)")
    parser.add_argument("--overlay", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--capacity", type=Path, help="a capacity.json (default: the artifacts' tune or capacity)")
    parser.add_argument("--frames", help="the frames the cameras send, as measured by `make capacity FRAMES=...` "
                                         "(default: 1080p when measured, else the largest measured)")
    parser.add_argument("--placement", choices=["shared", "isolated"],
                        help="which measured capacity to plan on: the load generator isolated (default where "
                             "measured: cameras are elsewhere in a cluster) or on the server's cores (conservative)")
    parser.add_argument("--per-replica-streams", type=int, help="assumed capacity (streams at --fps), e.g. for GPU "
                                                                "replicas not measured here")
    parser.add_argument("--replica-cpus", type=int, help="with --per-replica-streams: CPUs of that replica")
    parser.add_argument("--out", type=Path, default=Path("build/k8s"))
    args = parser.parse_args(argv)
    if args.per_replica_streams:
        capacity = {"capacity_streams": args.per_replica_streams, "fps": args.fps, "kind": "assumed",
                    "source": "--per-replica-streams", "slo_ms": DEFAULT_SLO_MS,
                    **({"machine": {"cpus": args.replica_cpus}} if args.replica_cpus else {})}
    elif args.capacity:
        capacity = {**json.loads(args.capacity.read_text()), "source": str(args.capacity)}
    else:
        capacity = measured_capacity(args.artifacts, args.frames, args.placement)
    settings = RepositoryRecord.load(args.repo).settings  # the plan sizes /dev/shm from it
    memory = None if args.per_replica_streams else soak_memory_mb(args.artifacts)
    result = plan(args.cameras, args.fps, capacity, memory, settings, args.overlay)
    with_conservative_line(result, args.artifacts, capacity, memory, settings)
    folder = args.out / f"plan-{args.overlay}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(kustomization(result, k8s.K8S_DIR / "overlays" / args.overlay, folder), sort_keys=False))
    rendered = args.out / f"plan-{args.overlay}.yaml"
    rendered.write_text(k8s.render(folder))
    rows = k8s.validate(rendered)
    (folder / "plan.json").write_text(json.dumps(result, indent=2))
    (folder / "plan.md").write_text(to_markdown(result))
    # the measured side of the plan goes with the other results (`make docs` gathers them)
    (args.artifacts / "plan").mkdir(parents=True, exist_ok=True)
    (args.artifacts / "plan" / "plan.md").write_text(to_markdown(result))
    (args.artifacts / "plan" / "plan.json").write_text(json.dumps(result, indent=2))
    print(to_markdown(result))
    print(f"manifests: {rendered} ({sum(r['result'] == 'valid' for r in rows)} resources valid for Kubernetes "
          f"{k8s.K8S_VERSION}); kustomization {folder}")


if __name__ == "__main__":
    main()
