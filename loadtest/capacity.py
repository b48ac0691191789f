"""Capacity and tuning, by measurement on the real server.

    python -m loadtest.capacity capacity --fps 10 --slo-ms 100          # `make capacity`
    python -m loadtest.capacity tune --streams 8 --fps 10               # `make tune`

capacity: the largest stream count whose run keeps p99 (from due time) within the SLO, late
frames within the budget, and no drops or errors: doubling, then bisection. Measured per frame
size and per placement (tools.placement): the load generator on the server's cores (shared, the
conservative figure) and on a core of its own (isolated: what a replica holds when the cameras
are elsewhere), side by side in one run.
tune: sweeps the detector's dynamic batching (queue delay, preferred sizes) and the instance
counts of every step at a given stream count, reloading configs through Triton's repository
API (explicit model control); writes a table, puts the best config into the repository, and
measures the capacity of the untuned and the tuned config.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

from google.protobuf import json_format

from compress.env import cpu_threads, machine_line
from compress.errors import ToolkitError, cli_entry
from compress.plotting import saved_figure
from loadtest.run import load_test
from loadtest.spec import LoadSpec, add_spec_arguments, spec_from_args
from tools import triton_config as tc
from tools.capacity_plan import capacity_table
from tools.frame_sets import FrameSet, as_frame_set, resolve_frames
from tools.placement import PLACEMENTS, Placement, client_side, default_placements, placement
from tools.repository import RepositoryRecord
from tools.server import TritonServer
from tools.triton_config import TUNED_KEYS

# Seconds each capacity probe (and each tuning config) runs: DURATION= sets it
PROBE_S = 15.0


# `make capacity` measures these side by side unless FRAMES= names others
CAPACITY_FRAME_SETS = ("dataset", "720p", "1080p")


def within_slo(summary: dict, late_budget: float) -> bool:
    frames = summary["frames"]
    p99 = frames["latency_ms"]["p99"]
    # ceil: in a short probe a 1% budget of 80 frames must still allow one late frame
    allowed_late = math.ceil(late_budget * frames["frames_due"])
    failed = frames["errors"] + frames.get("lost", 0) + frames["dropped"] + frames.get("rejected", 0)
    return failed == 0 and p99 is not None and p99 <= frames["slo_ms"] and frames["late_over_slo"] <= allowed_late


def bisection(max_streams: int = 64):
    """The stream counts to probe, in order; `send()` each probe's verdict (True: held). Doubles from 1
    until a count fails, then halves the gap; returns the largest count held. No count comes twice."""
    good, bad, streams = 0, None, 1
    while streams <= max_streams:
        if (yield streams):
            good, streams = streams, streams * 2
        else:
            bad = streams
            break
    if bad is not None:
        while bad - good > 1:
            middle = (good + bad) // 2
            good, bad = (middle, bad) if (yield middle) else (good, middle)
    return good


class CapacityProbe:
    """Load tests of one server at a stream count each, and the capacity record they add up to."""

    def __init__(self, server: TritonServer, spec: LoadSpec, images: FrameSet | Path | str, out: Path,
                 late_budget: float = 0.01, where: Placement | None = None):
        self.server, self.spec, self.images, self.out = server, spec, as_frame_set(images), out
        self.late_budget, self.where = late_budget, where or placement("shared")
        self.url = server.grpc_url if spec.protocol == "grpc" else server.http_url
        self.probes: dict[int, dict] = {}

    def __call__(self, streams: int) -> bool:
        if streams not in self.probes:
            started = time.time()  # when, beside the server log: which probes of a side-by-side run overlapped a spell
            summary = load_test(replace(self.spec, streams=streams), self.out / f"streams_{streams}", url=self.url,
                                metrics_url=self.server.metrics_url, images=self.images)
            models = summary["triton"]["models"]
            self.probes[streams] = {
                "ok": within_slo(summary, self.late_budget), "started_at": round(started, 2),
                "p99_ms": summary["frames"]["latency_ms"]["p99"],
                "p50_ms": summary["frames"]["latency_ms"]["p50"],
                "dropped": summary["frames"]["dropped"], "throughput_fps": summary["frames"]["throughput_fps"],
                "detector_queue_ms": models.get(tc.DETECTOR, {}).get("queue_ms_per_request"),
                "bottleneck": summary["triton"].get("bottleneck"),
                # where a frame's server time goes, per step (Triton's compute statistics)
                "compute_ms_per_frame": {name: models.get(name, {}).get("compute_ms_per_frame")
                                         for name in (tc.PREPROCESS, tc.DETECTOR, tc.POSTPROCESS)},
                "client_cpu_ms_per_frame": summary["client_cpu_ms_per_frame"],
                **({"watch": summary["watch"]} if summary.get("watch", {}).get("shadow") else {})}
            probe = self.probes[streams]
            print(f"    {self.images.name}: {streams:3d} streams: p99 {probe['p99_ms']} ms, dropped {probe['dropped']} "
                  f"-> {'holds' if probe['ok'] else 'over'}", flush=True)
        return self.probes[streams]["ok"]

    def result(self, capacity: int) -> dict:
        # The machine the capacity belongs to: a replica needs as much to serve as many streams.
        server_cores = cpu_threads() if self.where.name == "shared" else len(self.where.server_cpus)
        return {"capacity_streams": capacity, "fps": self.spec.fps, "slo_ms": self.spec.slo_ms,
                "late_budget": self.late_budget, "frame_set": self.images.record(), "machine": {"cpus": server_cores},
                "placement": self.where.record(), "probes": {str(k): v for k, v in sorted(self.probes.items())}}


def find_capacity(server: TritonServer, spec: LoadSpec, images: FrameSet | Path | str, out: Path,
                  late_budget: float = 0.01, max_streams: int = 64, where: Placement | None = None) -> dict:
    """`where`: how the caller placed `server` and this process (default: both on every core)."""
    probe = CapacityProbe(server, spec, images, out, late_budget, where)
    return probe.result(drive(bisection(max_streams), probe))


def drive(steps, probe) -> int:
    """Runs a `bisection()` with `probe(streams) -> held`; its result."""
    try:
        streams = next(steps)
        while True:
            streams = steps.send(probe(streams))
    except StopIteration as end:
        return end.value


def find_capacities_side_by_side(probes: dict[str, CapacityProbe], max_streams: int = 64) -> dict[str, dict]:
    """Each probe's capacity, their bisections in lockstep: one load test of each side in turn (which
    side goes first alternating step by step), so a slow spell of the shared machine (minutes, measured:
    every step 20-35% slower) falls on both sides instead of on one side's whole bisection."""
    steps = {name: bisection(max_streams) for name in probes}
    pending = {name: next(step) for name, step in steps.items()}
    found: dict[str, int] = {}
    turn = 0
    while pending:
        names = list(pending)  # rotated each step: with three sides, the middle one opens a step too
        order = names[turn % len(names):] + names[:turn % len(names)]
        for name in order:
            try:
                pending[name] = steps[name].send(probes[name](pending[name]))
            except StopIteration as end:
                found[name] = end.value
                del pending[name]
        turn += 1
    return {name: probes[name].result(found[name]) for name in probes}


def measure_capacities(repo: Path, spec: LoadSpec, frame_sets: list[FrameSet], out: Path, late_budget: float,
                       max_streams: int, placements: list[str] | None = None, rounds: int = 1) -> dict:
    """Capacity per placement and frame set, one run: the sizes and placements side by side on the
    same machine state (one server per placement, pinned to its cores). The frame sets' bisections
    run in lockstep on that server (`find_capacities_side_by_side`), so a slow spell of the machine
    falls on every size instead of on one size's whole bisection and the ratios between sizes hold;
    over `rounds` rounds (which size opens rotating) each capacity is the rounds' lower median."""
    from compress.env import describe_machine

    if rounds < 1 or max_streams < 1:
        raise ToolkitError(f"capacity rounds and the stream limit must be >= 1, not {rounds} and {max_streams}",
                           hint="CAPACITY_ROUNDS=1 (or more)")
    by_placement: dict[str, dict] = {}
    for name in placements or default_placements():
        where = placement(name)
        print(f"==> placement {name}: {where.describe()}", flush=True)
        folder = out if name == "shared" else out / name
        found: dict[str, list[dict]] = {frame_set.name: [] for frame_set in frame_sets}
        with TritonServer(repo, log_path=folder / "server.log", cpus=where.server_cpus) as server, client_side(where):
            for number in range(rounds):
                shift = number % len(frame_sets)  # which size opens the round rotates too
                order = frame_sets[shift:] + frame_sets[:shift]
                print(f"==> capacity with {', '.join(f.label() for f in order)}"
                      f"{' side by side' if len(order) > 1 else ''} ({name}"
                      f"{f', round {number + 1}/{rounds}' if rounds > 1 else ''})", flush=True)
                probes = {f.name: CapacityProbe(server, spec, f, folder / f.name / (f"round_{number + 1}" if rounds > 1
                                                                                    else ""), late_budget, where)
                          for f in order}
                for frame_name, record in find_capacities_side_by_side(probes, max_streams).items():
                    found[frame_name].append(record)
                    # written as each round ends: an interrupted run keeps the rounds it finished
                    (folder / frame_name / "capacity.json").write_text(json.dumps(combine_rounds(found[frame_name]),
                                                                                  indent=2))
        by_frames = {frame_name: combine_rounds(records) for frame_name, records in found.items()}
        by_placement[name] = {**where.record(), "by_frames": by_frames}
    # the conservative figure (shared cores) leads; `by_frames` is it, or the only placement measured
    lead = by_placement.get("shared") or next(iter(by_placement.values()))
    first = next(iter(lead["by_frames"].values()))
    return {"fps": spec.fps, "slo_ms": spec.slo_ms, "late_budget": late_budget, "machine": describe_machine(),
            "rounds": rounds, "probe_s": spec.duration_s, "by_placement": by_placement, "by_frames": lead["by_frames"],
            **{k: first[k] for k in ("capacity_streams", "frame_set")}}


def combine_rounds(records: list[dict]) -> dict:
    """One capacity record from a frame set's rounds: the round at the lower median capacity (a
    stream count that was measured, never an average between two), with every round's capacity
    (`rounds`) and probes (`round_probes`) beside it."""
    if len(records) == 1:
        return records[0]
    capacities = [r["capacity_streams"] for r in records]
    chosen = capacities.index(statistics.median_low(capacities))
    return {**records[chosen], "rounds": capacities, "chosen_round": chosen + 1,
            "round_probes": [r["probes"] for r in records]}


def capacity_markdown(result: dict) -> str:
    lines = [f"# Capacity at {result['fps']:g} FPS per stream, p99 <= {result['slo_ms']:.0f} ms", "",
             machine_line(result["machine"]), "", *capacity_table(result)]
    lines += ["", "Per-step compute is Triton's compute time per frame at the largest stream count held "
                  "(the batch's run divided by its frames); client CPU is Locust's processes per frame sent. "
                  "shared: the load generator runs on the server's cores (its CPU counts against the server: the "
                  "conservative figure); isolated: on a core of its own, the server on the rest (what a replica "
                  "with that many cores holds when the cameras are elsewhere)."]
    rounds, sizes = result.get("rounds"), len(result["by_frames"])
    if rounds:  # (a record from before the sizes ran side by side does not say)
        lines += ["", ("The frame sizes of a placement were bisected side by side on one server, one probe of each in "
                       "turn" if sizes > 1 else "One frame size") + f" ({result['probe_s']:g} s per probe)" +
                  (f", over {rounds} rounds: streams held is the rounds' lower median, each round's capacity in "
                   "brackets" + ("; vs dataset is the median of the ratios within each round (the sizes ran side by "
                                 "side), their range in brackets." if sizes > 1 else ".")
                   if rounds > 1 else "; one round (CAPACITY_ROUNDS= repeats it: a probe's verdict near the edge can "
                                      "move a capacity by a stream or two).")]
    return "\n".join(lines) + "\n"


def plot_capacity(result: dict, path: Path) -> None:
    placements = result.get("by_placement") or {"shared": {"by_frames": result["by_frames"]}}
    names = list(result["by_frames"])
    lead = next(iter(placements))
    with saved_figure(path, columns=2, size=(11, 4)) as (_, axes):
        width = 0.8 / len(placements)
        for index, (label, entry) in enumerate(placements.items()):
            held = [entry["by_frames"][n]["capacity_streams"] if n in entry["by_frames"] else 0 for n in names]
            axes[0].bar([i + index * width for i in range(len(names))], held, width=width, color=f"C{index}",
                        label=f"{label} ({len(entry.get('server_cpus', [])) or '-'} server cores)")
        axes[0].set_xticks([i + width * (len(placements) - 1) / 2 for i in range(len(names))], names)
        axes[0].set_ylabel(f"streams held at {result['fps']:g} FPS")
        axes[0].set_title(f"capacity within p99 <= {result['slo_ms']:.0f} ms")
        axes[0].legend(fontsize=8)
        bottom = [0.0] * len(names)
        for step, colour in (("preprocess", "C1"), ("detector", "C2"), ("postprocess", "C3")):
            values = []
            for n in names:
                r = placements[lead]["by_frames"][n]
                probe = r["probes"].get(str(r["capacity_streams"])) or next(iter(r["probes"].values()))
                values.append(probe["compute_ms_per_frame"][step] or 0.0)
            axes[1].bar(names, values, bottom=bottom, color=colour, label=step)
            bottom = [b + v for b, v in zip(bottom, values)]
        axes[1].set_ylabel("server compute per frame (ms)")
        axes[1].set_title(f"where a frame's time goes ({lead})")
        axes[1].legend(fontsize=8)


def candidate_settings(base: tc.RepositorySettings, small: bool = False) -> list[tuple[str, tc.RepositorySettings]]:
    grid = itertools.product((0, 2000, 8000), ([], tc.default_preferred_batch_sizes(base.max_batch_size)), (1, 2), (1, 2))
    if small:  # two points: no batching wait vs a 2 ms wait with two detector instances
        grid = [(0, [], 1, 1), (2000, [], 2, 1)]
    candidates = []
    for delay, preferred, detectors, steps in grid:
        if delay == 0 and preferred:
            continue  # preferred sizes need a queue delay to wait for
        settings = replace(base, queue_delay_us=delay, preferred_batch_sizes=preferred, detector_instances=detectors,
                           preprocess_instances=steps, postprocess_instances=steps)
        candidates.append((f"delay={delay}us preferred={preferred or '-'} detector x{detectors} pre/post x{steps}", settings))
    return candidates


def apply(server: TritonServer, settings: tc.RepositorySettings) -> None:
    """Reload each step with its new config (JSON override); then reload the ensemble."""
    for config in (tc.preprocess_config(settings), tc.detector_config(settings), tc.postprocess_config(settings)):
        server.load(config.name, json_format.MessageToJson(config))
    server.load(tc.ENSEMBLE_NAME)


def tune(repo: Path, spec: LoadSpec, images: FrameSet | Path | str, out: Path, late_budget: float,
         measure_capacity: bool = True, small_grid: bool = False) -> dict:
    images = as_frame_set(images)
    record = RepositoryRecord.load(repo)
    base = record.settings
    rows = []
    with TritonServer(repo, log_path=out / "server.log") as server:
        url = server.grpc_url if spec.protocol == "grpc" else server.http_url
        for index, (label, settings) in enumerate(candidate_settings(base, small_grid)):
            apply(server, settings)
            summary = load_test(spec, out / f"config_{index}", url=url, metrics_url=server.metrics_url, images=images)
            frames = summary["frames"]
            rows.append({"config": label, "settings": {k: getattr(settings, k) for k in TUNED_KEYS}, "p99_ms": frames["latency_ms"]["p99"], "p50_ms": frames["latency_ms"]["p50"],
                "dropped": frames["dropped"], "throughput_fps": frames["throughput_fps"],
                "detector_avg_batch": summary["triton"]["models"].get("detector", {}).get("avg_batch_size"),
                "within_slo": within_slo(summary, late_budget)})
            print(f"    {label}: p99 {rows[-1]['p99_ms']} ms, dropped {rows[-1]['dropped']}, "
                  f"detector batch {rows[-1]['detector_avg_batch']}", flush=True)
        best = min(rows, key=lambda r: (r["dropped"], r["p99_ms"] if r["p99_ms"] is not None else float("inf")))
        best_settings = replace(base, **best["settings"])
        result = {"spec": vars(spec), "frame_set": images.record(), "rows": rows, "best": best}
        if measure_capacity:
            apply(server, base)
            result["untuned_capacity"] = find_capacity(server, spec, images, out / "capacity_untuned", late_budget)
            apply(server, best_settings)
            result["tuned_capacity"] = find_capacity(server, spec, images, out / "capacity_tuned", late_budget)
    for config in (tc.preprocess_config(best_settings), tc.detector_config(best_settings),
                   tc.postprocess_config(best_settings)):
        tc.write_config(config, repo / config.name)
    record.with_settings(best_settings, {"streams": spec.streams, "fps": spec.fps, "p99_ms": best["p99_ms"]}).save()
    return result


def tune_markdown(result: dict) -> str:
    lines = [f"# Tuning at {result['spec']['streams']} streams x {result['spec']['fps']} FPS", "",
             "| config | p50 ms | p99 ms | dropped | frames/s | detector batch | within SLO |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['config']} | {r['p50_ms']} | {r['p99_ms']} | {r['dropped']} | {r['throughput_fps']} | "
                     f"{r['detector_avg_batch']} | {'yes' if r['within_slo'] else 'no'} |")
    lines += ["", f"Best: **{result['best']['config']}** (written into the repository)."]
    if "tuned_capacity" in result:
        lines.append(f"Capacity within the SLO: untuned {result['untuned_capacity']['capacity_streams']} streams, "
                     f"tuned {result['tuned_capacity']['capacity_streams']} streams.")
    return "\n".join(lines) + "\n"


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["capacity", "tune"])
    add_spec_arguments(parser, duration_s=PROBE_S)  # --duration: seconds per probe
    parser.add_argument("--late-budget", type=float, default=0.01, help="share of frames allowed over the SLO")
    parser.add_argument("--max-streams", type=int, default=64)
    parser.add_argument("--no-capacity", action="store_true", help="tune: skip the capacity comparison")
    parser.add_argument("--small-grid", action="store_true", help="tune: two configs instead of the full sweep")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--frames", "--images", dest="frames", default=None,
                        help="comma-separated frame sets: dataset (alias 256), 720p, 1080p, or folders of your own "
                             f"(capacity default: {','.join(CAPACITY_FRAME_SETS)}; tune default: 1080p)")
    parser.add_argument("--placement", default=None,
                        help=f"capacity: comma-separated, of {', '.join(PLACEMENTS)} (default: both where there are "
                             "cores to isolate the load generator on, else shared)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="capacity: rounds of the side-by-side bisections; each capacity is their lower median")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    args = parser.parse_args(argv)
    spec = spec_from_args(args)
    names = [n.strip() for n in (args.frames or "").split(",") if n.strip()]
    out = args.artifacts / args.mode
    out.mkdir(parents=True, exist_ok=True)
    if args.mode == "capacity":
        RepositoryRecord.load(args.repo)  # built, or one error saying how
        frame_sets = [resolve_frames(name, args.artifacts) for name in names or CAPACITY_FRAME_SETS]
        placements = [n.strip() for n in (args.placement or "").split(",") if n.strip()] or None
        for name in placements or []:
            placement(name)  # an unknown name or too few cores: one error before any server starts
        result = measure_capacities(args.repo, spec, frame_sets, out, args.late_budget, args.max_streams, placements,
                                    args.rounds)
        (out / "capacity.json").write_text(json.dumps(result, indent=2))
        (out / "capacity.md").write_text(capacity_markdown(result))
        plot_capacity(result, out / "capacity.png")
        print(capacity_markdown(result))
        print(f"report: {out}/capacity.md, capacity.json, capacity.png")
        return
    images = resolve_frames(names[0] if names else "1080p", args.artifacts)
    result = tune(args.repo, spec, images, out, args.late_budget, measure_capacity=not args.no_capacity,
                  small_grid=args.small_grid)
    (out / "tune.json").write_text(json.dumps(result, indent=2))
    (out / "tune.md").write_text(tune_markdown(result))
    print(tune_markdown(result))


if __name__ == "__main__":
    main()
