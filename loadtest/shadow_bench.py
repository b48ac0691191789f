"""What shadow parity costs and whether its alarms work, on the real server (`make bench-shadow`).

    python -m loadtest.shadow_bench --repo model_repository --artifacts artifacts [--phases cost,healthy,degraded,drift]

Phases (each writes <out>/<phase>.json; all together shadow.json, shadow.md and plots):
- cost: capacity at 10 FPS within the SLO (dataset and 1080p frames) of the repository with shadow
  parity and of the same repository built without it (SHADOW=0), both servers up and their
  bisections in lockstep, one probe of each in turn, over CAPACITY_ROUNDS rounds (the ratio is of
  the medians, the rounds' spread is the probe noise); then p99 at 80% of the capacity without it, alternating the
  two over ROUNDS rounds (the spread of the rounds without it is the run-to-run noise). Frames lost
  or failed are counted.
- healthy: HEALTHY_S (default 10 min) at 80% of that capacity with shadow on: the alarms that
  fired (tools.alerts, evaluated live by tools.watch), none expected.
- degraded: the served model swapped for an INT8 of its own FP32 twin calibrated on blank images
  (ungated, on purpose) at 10 streams: seconds until the agreement alarm fires, and `make audit`'s
  worst frames of it.
- drift: the healthy repository at 10 streams, the second half of the frames transformed (the
  transform chosen by measuring which one moves the served model furthest from the reference
  in-process: darkened, blurred or noised): the drift signals and agreement before and after, and
  the alarms.

The load generator (Locust) runs on the same cores as the server here: its CPU is part of every
figure, alike for both sides of each comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from compress.env import describe_machine, machine_line
from compress.errors import cli_entry
from compress.plotting import saved_figure
from loadtest.capacity import CapacityProbe, find_capacities_side_by_side
from loadtest.run import load_test
from loadtest.spec import LoadSpec, parse_duration
from tools.frame_sets import as_frame_set
from tools.repository import RepositoryRecord
from tools.server import TritonServer
from tools.watch import ShadowWatch

PHASES = ("cost", "healthy", "degraded", "drift")
ROUNDS = 3
# capacity probes are single 15 s runs: one bisection step can flip on noise, so each side is measured this often
CAPACITY_ROUNDS = 3
LOAD_SHARE = 0.8
# p99 of one run is its 1%-worst frames: at 8 streams x 10 FPS a 15 s run has 12 of them, and one
# hiccup of the shared cores moved it by 15 ms (measured: 22-44 ms over 15 runs of 30 s, shadow on
# and off alike), so p99 runs are longer than capacity probes
P99_S = 60.0
ALARM_STREAMS = 10
TRANSFORMS = ("darken", "blur", "noise")
# the alarms on agreement with the reference (the rest are drift and the shadow's own health)
AGREEMENT_ALARMS = ("YoloShadowAgreementLow", "YoloShadowExtraBoxesHigh", "YoloShadowScoreDrift")


def failed_frames(summary: dict) -> int:
    f = summary["frames"]
    return f["errors"] + f.get("lost", 0) + f["dropped"] + f.get("rejected", 0)


def copy_repo(repo: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(repo, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def rebuilt(repo: Path, dest: Path, **changes) -> Path:
    """A copy of the repository with some settings changed, as `make repo` would build it with them."""
    from tools import build_repo
    from tools import triton_config as tc

    copy_repo(repo, dest)
    record = RepositoryRecord.load(dest)
    settings = replace(record.settings, **changes)
    if not settings.shadow:
        build_repo.place_shadow(dest, settings, None)
    for config in tc.all_configs(settings):
        tc.write_config(config, dest / config.name)
    record.with_settings(settings, record.tuned).save()
    return dest


def without_shadow(repo: Path, dest: Path) -> Path:
    """The same repository as SHADOW=0 builds it: configs without shadow, no reference beside postprocess."""
    return rebuilt(repo, dest, shadow=False)


def capacity_rounds(repos: dict[str, Path], spec: LoadSpec, frame_set, out: Path, rounds: int) -> dict:
    """Capacity of each side over `rounds` rounds. Both servers are up at once and their bisections
    run in lockstep, one probe of each side in turn (loadtest.capacity.find_capacities_side_by_side):
    a slow spell of the shared machine lasting minutes falls on both sides, not on one side's rounds
    (measured at a7f5e46: run one side after the other, two of shadow on's rounds ran back to back and
    every step of them, at 4 streams already, was 20-35% slower)."""
    sides: dict[str, dict] = {mode: {"rounds": [], "probes": []} for mode in repos}
    for number in range(rounds):
        print(f"==> capacity, shadow {' and '.join(repos)} side by side, {frame_set.label()}, "
              f"round {number + 1}/{rounds}", flush=True)
        with contextlib.ExitStack() as stack:
            probes = {}
            for mode, repo in repos.items():
                server = stack.enter_context(TritonServer(repo, log_path=out / f"server-{mode}.log"))
                probes[mode] = CapacityProbe(server, spec, frame_set, out / f"capacity-{mode}-{frame_set.name}-{number}")
            # which side opens the round alternates too: neither always probes a machine the other warmed
            order = list(repos) if number % 2 == 0 else list(reversed(repos))
            found = find_capacities_side_by_side({mode: probes[mode] for mode in order})
        for mode in repos:
            sides[mode]["rounds"].append(found[mode]["capacity_streams"])
            sides[mode]["probes"].append(found[mode]["probes"])
    for side in sides.values():
        side["streams"] = float(np.median(side["rounds"]))
    entry = {**sides, "ratio": round(sides["on"]["streams"] / max(sides["off"]["streams"], 1), 3),
             # every round's on against every round's off: how far the verdict could swing on probe noise
             "ratio_range": [round(min(sides["on"]["rounds"]) / max(max(sides["off"]["rounds"]), 1), 3),
                             round(max(sides["on"]["rounds"]) / max(min(sides["off"]["rounds"]), 1), 3)],
             "side_by_side": True}
    print(f"    {frame_set.name}: on {sides['on']['rounds']} off {sides['off']['rounds']} -> {entry['ratio']:.0%}", flush=True)
    return entry


def p99_round(repo: Path, spec: LoadSpec, frame_set, out: Path) -> dict:
    with TritonServer(repo, log_path=out.parent / f"server-{out.name}.log") as server:
        summary = load_test(spec, out, url=server.grpc_url if spec.protocol == "grpc" else server.http_url,
                            metrics_url=server.metrics_url, images=frame_set)
    return {"p99_ms": summary["frames"]["latency_ms"]["p99"], "p50_ms": summary["frames"]["latency_ms"]["p50"],
            "failed": failed_frames(summary), "compared": summary["watch"].get("compared", 0),
            "skipped_busy": summary["watch"].get("skipped_busy", 0)}


def cost(repo: Path, spec: LoadSpec, artifacts: Path, out: Path, rounds: int = CAPACITY_ROUNDS,
         p99_rates: tuple[float, ...] = (), p99_seconds: float = P99_S) -> dict:
    """`p99_rates`: other sampling rates whose p99 is measured beside the repository's own (the
    price of a rate, for choosing one); each p99 run lasts `p99_seconds`."""
    off_repo = without_shadow(repo, out / "repo-shadow-off")
    capacities = {frames: capacity_rounds({"on": repo, "off": off_repo}, spec, as_frame_set(frames, artifacts), out,
                                          rounds)
                  for frames in ("dataset", "1080p")}
    streams = max(1, int(LOAD_SHARE * capacities["1080p"]["off"]["streams"]))
    rate = RepositoryRecord.load(repo).settings.shadow_rate
    sides = {"off": off_repo, "on": repo}
    sides.update({f"rate {r:g}": rebuilt(repo, out / f"repo-rate-{r:g}", shadow_rate=r) for r in p99_rates if r != rate})
    runs: dict[str, list[dict]] = {mode: [] for mode in sides}
    frame_set = as_frame_set("1080p", artifacts)
    for number in range(ROUNDS):
        order = list(sides) if number % 2 == 0 else list(reversed(sides))
        for mode in order:
            runs[mode].append(p99_round(sides[mode], replace(spec, streams=streams, duration_s=p99_seconds), frame_set,
                                        out / f"p99-{mode.replace(' ', '-')}-{number}"))
            print(f"    round {number + 1} shadow {mode}: p99 {runs[mode][-1]['p99_ms']} ms", flush=True)
    return {"capacity": capacities, "p99_streams": streams, "p99_seconds": p99_seconds, "frames": "1080p",
            **p99_verdicts(runs, rate)}


NOISE_MARGIN = 0.1  # beyond the spread of shadow off's rounds by this share


def p99_verdicts(runs: dict[str, list[dict]], rate: float) -> dict:
    """Each shadowed side's p99 median against the run-to-run noise of shadow off (the spread of its
    rounds, NOISE_MARGIN wider); `runs`: "off", "on" (the repository's `rate`), "rate <r>" sides."""
    off_p99 = [r["p99_ms"] for r in runs["off"]]
    noise = (min(off_p99), max(off_p99))
    by_rate = {}
    for mode, rs in runs.items():
        if mode == "off":
            continue
        median = float(np.median([r["p99_ms"] for r in rs]))
        by_rate[mode] = {"rate": rate if mode == "on" else float(mode.split()[1]), "p99_median_ms": median,
                         "p50_median_ms": float(np.median([r["p50_ms"] for r in rs])),
                         "compared": [r["compared"] for r in rs],
                         "within_noise": noise[0] * (1 - NOISE_MARGIN) <= median <= noise[1] * (1 + NOISE_MARGIN)}
    return {"rate": rate, "rounds": {m: runs[m] for m in ("on", "off")}, "rates": by_rate,
            "off_p99_range_ms": list(noise), "on_p99_median_ms": by_rate["on"]["p99_median_ms"],
            "off_p99_median_ms": float(np.median(off_p99)), "on_within_noise": by_rate["on"]["within_noise"],
            "failed_frames": {m: sum(r["failed"] for r in rs) for m, rs in runs.items()}}


def watched_load(repo: Path, spec: LoadSpec, frame_sets: list, out: Path, name: str) -> tuple[ShadowWatch, list[dict]]:
    """Load tests back to back (one per frame set) on one server, one watcher over all of them;
    each summary records when its streams started (`started_at`)."""
    summaries = []
    with TritonServer(repo, log_path=out / f"server-{name}.log") as server:
        url = server.grpc_url if spec.protocol == "grpc" else server.http_url
        with ShadowWatch(server.metrics_url, interval_s=2.0) as watch:
            for index, frame_set in enumerate(frame_sets):
                started = time.time()
                summaries.append({**load_test(spec, out / f"{name}-{index}", url=url, metrics_url=server.metrics_url,
                                              images=frame_set), "started_at": started})
    return watch, summaries


def healthy(repo: Path, spec: LoadSpec, artifacts: Path, out: Path, streams: int, seconds: float) -> dict:
    frame_set = as_frame_set("1080p", artifacts)
    watch, summaries = watched_load(repo, replace(spec, streams=streams, duration_s=seconds), [frame_set], out,
                                    "healthy")
    summary = watch.summary()
    return {"streams": streams, "seconds": seconds, "frames": "1080p", "watch": summary,
            "alarms_fired": summary["alarms_fired"], "failed_frames": failed_frames(summaries[0]),
            "p99_ms": summaries[0]["frames"]["latency_ms"]["p99"]}


def blank_calibrated(record: RepositoryRecord, artifacts: Path, out: Path) -> Path:
    """An INT8 of the served model's FP32 twin calibrated on blank frames: a broken model that loads fine."""
    import cv2

    from compress.manifest import Manifest
    from compress.quantize import quantize
    from compress.records import Report

    served = Report.load(artifacts).served
    blanks = out / "blank-calibration"
    blanks.mkdir(parents=True, exist_ok=True)
    images = []
    for value in (0, 255):
        path = blanks / f"blank_{value}.png"
        cv2.imwrite(str(path), np.full((record.settings.image_size[0], record.settings.image_size[1], 3), value, np.uint8))
        images.append(path)
    target = out / "blank_int8.onnx"
    quantize(served.fp32_onnx, target, Manifest(artifacts).output("dataset", "data_yaml"),
             tuple(record.settings.image_size), method="minmax", images=images * 8,
             float_nodes=(served.quantization or {}).get("float_nodes"))
    return target


def degraded(repo: Path, spec: LoadSpec, artifacts: Path, out: Path, seconds: float = 180.0) -> dict:
    from tools import build_repo
    from tools.audit import audit

    record = RepositoryRecord.load(repo)
    broken = blank_calibrated(record, artifacts, out)
    bad_repo = copy_repo(repo, out / "repo-degraded")
    evidence = out / "degraded-evidence"
    if evidence.exists():
        shutil.rmtree(evidence)
    # the broken model is an ONNX Q/DQ file: served on ONNX Runtime whatever the repository runs
    settings = replace(record.settings, evidence_dir=str(evidence.resolve()), runtime="onnxruntime")
    build_repo.build(bad_repo, broken, settings, {"stage": "blank-calibrated", "target": record.target, "gated": False},
                     shadow_reference=Path(record.extra["shadow_reference"]))
    watch, summaries = watched_load(bad_repo, replace(spec, streams=ALARM_STREAMS, duration_s=seconds),
                                    [as_frame_set("dataset", artifacts)], out, "degraded")
    summary = watch.summary()
    audited = audit(bad_repo, out / "degraded-audit", evidence, artifacts, gate=True)
    fired = summary["alarms_fired"]
    first = min((fired[a] for a in AGREEMENT_ALARMS if a in fired), default=None)
    return {"streams": ALARM_STREAMS, "seconds": seconds, "watch": summary, "alarms_fired": fired,
            "agreement_alarm_after_s": first, "within_2_min": first is not None and first <= 120,
            "failed_frames": failed_frames(summaries[0]), "audit": {k: audited[k] for k in ("frames_kept", "compared")},
            "audit_budget": audited.get("budget", {}).get("drop_points"), "audit_dir": str(out / "degraded-audit")}


def transform(image: np.ndarray, kind: str) -> np.ndarray:
    import cv2

    if kind == "darken":  # dusk: a quarter of the light
        return (image.astype(np.float32) * 0.25).astype(np.uint8)
    if kind == "blur":  # a fogged or defocused lens
        return cv2.GaussianBlur(image, (0, 0), 4)
    noise = np.random.default_rng(0).normal(0, 40, image.shape)  # a noisy sensor at night
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def frame_paths(source: Path, limit: int = 64) -> list[Path]:
    """The first `limit` frames of a folder or a .txt list (as the load test sends them)."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    else:
        paths = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
    return paths[:limit]


def transformed_frames(source: Path, kind: str, dest: Path) -> Path:
    import cv2

    from tools.frame_sets import CAMERA_JPEG_QUALITY

    dest.mkdir(parents=True, exist_ok=True)
    for path in frame_paths(source):
        image = cv2.imread(str(path))
        cv2.imwrite(str(dest / path.name), transform(image, kind), [cv2.IMWRITE_JPEG_QUALITY, CAMERA_JPEG_QUALITY])
    return dest


def choose_drift(repo: Path, artifacts: Path, out: Path) -> dict:
    """Which transform moves the served model furthest from the reference (in-process, same code)."""
    from compress.detection import AgreementCounts
    from compress.local_detector import LocalDetector
    from tools.agreement import compare_on_frames

    record = RepositoryRecord.load(repo)
    frame_set = as_frame_set("dataset", artifacts)
    served = record.in_process_detector()
    reference = LocalDetector(repo / "postprocess" / "1" / "reference.onnx", conf_threshold=record.settings.conf_threshold,
                              reduced_decode=record.settings.reduced_decode)
    measured = {}
    for kind in ("none",) + TRANSFORMS:
        folder = frame_set.images if kind == "none" else transformed_frames(frame_set.images, kind, out / f"frames-{kind}")
        paths = frame_paths(folder)
        counts, detections = compare_on_frames(reference, served, [p.read_bytes() for p in paths], batch_size=8)
        total = sum(counts, AgreementCounts())
        scores = np.concatenate([d.scores for d in detections]) if detections else np.zeros(0)
        measured[kind] = {**total.summary(), "detections_per_frame": round(sum(len(d) for d in detections) / len(paths), 3),
                          "mean_confidence": round(float(scores.mean()), 4) if scores.size else None}
    chosen = min(TRANSFORMS, key=lambda k: measured[k]["box_recall"] - measured[k]["extra_boxes"])
    return {"measured": measured, "chosen": chosen}


def drift(repo: Path, spec: LoadSpec, artifacts: Path, out: Path, half: float = 150.0) -> dict:
    choice = choose_drift(repo, artifacts, out)
    frame_set = as_frame_set("dataset", artifacts)
    drifted = as_frame_set(str(out / f"frames-{choice['chosen']}"), artifacts)
    watch, summaries = watched_load(repo, replace(spec, streams=ALARM_STREAMS, duration_s=half), [frame_set, drifted],
                                    out, "drift")
    samples = watch.samples
    onset = summaries[1]["started_at"]  # the drifted frames' streams start here
    from tools.watch import watch_summary

    before = watch_summary([s for s in samples if s[0] <= onset])
    after = watch_summary([s for s in samples if s[0] >= onset])
    plot_drift(samples, onset, choice["chosen"], out / "drift_over_time.png")
    return {"streams": ALARM_STREAMS, "half_s": half, "transform": choice, "before": before, "after": after,
            "plot": str(out / "drift_over_time.png"),
            "alarms_fired": watch.fired, "failed_frames": sum(failed_frames(s) for s in summaries)}


def plot_drift(samples, onset: float, kind: str, path: Path) -> None:
    from tools import alerts

    times, recall, extra, confidence, per_frame = [], [], [], [], []
    for i in range(1, len(samples)):
        window = [s for s in samples[:i + 1] if s[0] >= samples[i][0] - 20]
        if len(window) < 2:
            continue
        inc = alerts._increases(window[0][1], window[-1][1])
        times.append(samples[i][0] - samples[0][0])
        recall.append(inc.get("yolo_shadow_found_boxes_total", 0) / inc["yolo_shadow_reference_boxes_total"]
                      if inc.get("yolo_shadow_reference_boxes_total") else None)
        extra.append(inc.get("yolo_shadow_extra_boxes_total", 0) / inc["yolo_shadow_served_boxes_total"]
                     if inc.get("yolo_shadow_served_boxes_total") else None)
        confidence.append(inc.get("yolo_detection_confidence_total", 0) / inc["yolo_detections_total"]
                          if inc.get("yolo_detections_total") else None)
        per_frame.append(inc.get("yolo_detections_total", 0) / inc["yolo_frames_total"] / 5
                         if inc.get("yolo_frames_total") else None)
    with saved_figure(path) as (_, ax):
        ax.plot(times, recall, label="box recall vs the reference (20 s window)")
        ax.plot(times, extra, label="served boxes the reference lacks")
        ax.plot(times, confidence, label="mean confidence")
        ax.plot(times, per_frame, label="detections per frame / 5")
        ax.axvline(onset - samples[0][0], color="grey", linestyle="--", label=f"frames {kind} from here")
        ax.set_xlabel("seconds")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        ax.set_title("Drift injected halfway: live signals on Triton's /metrics")


def to_markdown(result: dict) -> str:
    lines = ["# Shadow parity: cost and alarms", "", machine_line(result.get("machine")), "",
             "The load generator runs on the same cores as the server: its CPU counts against both sides alike.", ""]
    c = result.get("cost")
    if c:
        lines += ["| frames | streams within SLO, shadow on (median; rounds) | shadow off, SHADOW=0 (median; rounds) | "
                  "on / off (medians) | range over rounds | >= 95% |", "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {frames} | {v['on']['streams']:g}; {', '.join(map(str, v['on'].get('rounds', [])))} | "
                  f"{v['off']['streams']:g}; {', '.join(map(str, v['off'].get('rounds', [])))} | {v['ratio']:.0%} | "
                  + (f"{v['ratio_range'][0]:.0%}-{v['ratio_range'][1]:.0%}" if 'ratio_range' in v else "-")
                  + f" | {'yes' if v['ratio'] >= 0.95 else 'no'} |"
                  for frames, v in c["capacity"].items()]
        if any(v.get("side_by_side") for v in c["capacity"].values()):
            lines += ["", "Both servers were up in each round and their bisections ran in lockstep, one 15 s probe of "
                          "each side in turn, so a slow spell of the machine fell on both sides."]
        lines += ["", f"p99 at {c['p99_streams']} streams of 1080p ({LOAD_SHARE:.0%} of the capacity without shadow), "
                      f"{ROUNDS} alternating rounds of {c.get('p99_seconds', 15):g} s: shadow on median {c['on_p99_median_ms']} ms, off median "
                      f"{c['off_p99_median_ms']} ms (off range {c['off_p99_range_ms'][0]}-{c['off_p99_range_ms'][1]} ms: the "
                      f"run-to-run noise); within the noise (10% margin): {'yes' if c['on_within_noise'] else 'no'}. "
                      f"Frames lost or failed: on {c['failed_frames']['on']}, off {c['failed_frames']['off']}. "
                      f"Compared per round (on): {', '.join(str(r['compared']) for r in c['rounds']['on'])}; skipped while busy: "
                      f"{', '.join(str(r['skipped_busy']) for r in c['rounds']['on'])}.", ""]
        if len(c.get("rates", {})) > 1:  # the price of each sampling rate, side by side in the same rounds
            lines += ["| shadow rate | p99 median (ms) | p50 median (ms) | compared per round | p99 within the noise |",
                      "|---:|---:|---:|---|---|", f"| off | {c['off_p99_median_ms']} | "
                      f"{float(np.median([r['p50_ms'] for r in c['rounds']['off']])):g} | - | - |"]
            lines += [f"| {v['rate']:g}{' (built)' if mode == 'on' else ''} | {v['p99_median_ms']:g} | {v['p50_median_ms']:g} | "
                      f"{', '.join(map(str, v['compared']))} | {'yes' if v['within_noise'] else 'no'} |"
                      for mode, v in sorted(c["rates"].items(), key=lambda kv: kv[1]["rate"])]
            lines += [""]
    h = result.get("healthy")
    if h:
        w = h["watch"]
        lines += [f"Healthy: {h['seconds']:.0f} s at {h['streams']} streams of 1080p: alarms fired "
                  f"{', '.join(h['alarms_fired']) or 'none'}; live box recall {w['box_recall']} (gate {w['gate']['box_recall']}) "
                  f"on {w['compared']} compared frames ({w['skipped_busy']} skipped while busy), extra boxes "
                  f"{w['extra_boxes']}; p99 {h['p99_ms']} ms; frames lost or failed {h['failed_frames']}.", ""]
    d = result.get("degraded")
    if d:
        w = d["watch"]
        lines += [f"Degraded (INT8 calibrated on blank frames, {d['streams']} streams, {d['seconds']:.0f} s): first agreement alarm "
                  f"after {d['agreement_alarm_after_s']} s (within 2 min: {'yes' if d['within_2_min'] else 'NO'}); "
                  f"alarms fired {d['alarms_fired'] or 'none'}; live box recall {w['box_recall']}, extra boxes "
                  f"{w['extra_boxes']} over {w['compared']} compared frames; `make audit`: {d['audit']['frames_kept']} frames "
                  f"kept, {d['audit_budget']} points below the reference on val + these frames "
                  f"(worst frames: `{d['audit_dir']}/worst_frames.png`); frames lost or failed {d['failed_frames']}.", ""]
    r = result.get("drift")
    if r:
        lines += [f"Drift: the second half of the frames {r['transform']['chosen']} (chosen in-process as the transform "
                  "that moves the served model furthest from the reference):", "",
                  "| transform (in-process, 64 frames) | box recall | extra boxes | detections/frame | mean confidence |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['box_recall']} | {v['extra_boxes']} | {v['detections_per_frame']} | {v['mean_confidence']} |"
                  for k, v in r["transform"]["measured"].items()]
        b, a = r["before"], r["after"]
        lines += ["", "| live, 10 streams | box recall | extra boxes | detections/frame | mean confidence | compared |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| before | {b.get('box_recall')} | {b.get('extra_boxes')} | {b.get('detections_per_frame')} | "
                  f"{b.get('mean_confidence')} | {b.get('compared')} |",
                  f"| after | {a.get('box_recall')} | {a.get('extra_boxes')} | {a.get('detections_per_frame')} | "
                  f"{a.get('mean_confidence')} | {a.get('compared')} |", "",
                  f"Alarms fired: {r['alarms_fired'] or 'none'}; frames lost or failed {r['failed_frames']}. "
                  f"Plot: `{r['plot']}`.", ""]
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--healthy-duration", default="10m")
    parser.add_argument("--duration", default="15s", help="seconds per capacity probe")
    parser.add_argument("--capacity-rounds", type=int, default=CAPACITY_ROUNDS,
                        help="cost: capacity rounds (both sides probed in turn in each)")
    parser.add_argument("--p99-duration", default=f"{P99_S:g}s", help="cost: each p99 run")
    parser.add_argument("--p99-rates", default="",
                        help="cost: other shadow rates whose p99 is measured beside the repository's (comma-separated)")
    parser.add_argument("--alarm-duration", default="3m", help="the degraded model's load test")
    parser.add_argument("--drift-half", default="150s", help="each half of the drift load test")
    args = parser.parse_args(argv)
    out = args.out or args.artifacts / "shadow"
    out.mkdir(parents=True, exist_ok=True)
    record = RepositoryRecord.load(args.repo)
    if not record.settings.shadow:
        from tools.triton_config import ConfigError

        raise ConfigError(f"{args.repo} was built without shadow parity", hint="build it with `make repo` (SHADOW=1)")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}")
    spec = LoadSpec(duration_s=parse_duration(args.duration))
    result_path = out / "shadow.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    result["machine"] = describe_machine()
    started = time.time()
    for phase in phases:
        print(f"==> shadow bench: {phase}", flush=True)
        if phase == "cost":
            result["cost"] = cost(args.repo, spec, args.artifacts, out, args.capacity_rounds,
                                  tuple(float(r) for r in args.p99_rates.split(",") if r.strip()),
                                  parse_duration(args.p99_duration))
        elif phase == "healthy":
            capacity = (result.get("cost") or {}).get("capacity", {}).get("1080p", {}).get("off", {}).get("streams")
            streams = max(1, int(LOAD_SHARE * capacity)) if capacity else ALARM_STREAMS
            result["healthy"] = healthy(args.repo, spec, args.artifacts, out, streams,
                                        parse_duration(args.healthy_duration))
        elif phase == "degraded":
            result["degraded"] = degraded(args.repo, spec, args.artifacts, out, parse_duration(args.alarm_duration))
        else:
            result["drift"] = drift(args.repo, spec, args.artifacts, out, parse_duration(args.drift_half))
        result_path.write_text(json.dumps(result, indent=2, default=str))
        (out / "shadow.md").write_text(to_markdown(result))
    print(to_markdown(result))
    print(f"report: {out}/shadow.md ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
