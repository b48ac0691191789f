"""Soak test (`make soak`): hold a steady share of capacity for a long time and watch memory.

    python -m loadtest.soak --duration 10m                 # 70% of the measured capacity
    python -m loadtest.soak --streams 6 --duration 30s     # an explicit stream count

Starts the local server on the built repository, runs the camera-stream load test, and samples
the resident memory (RSS) of tritonserver and of every Python backend stub meanwhile. Writes
into `--out`: summary.json / summary.md (RSS at start and end and its growth per process,
frames, errors, rejections) and rss_over_time.png, beside the load test's own report.
Growth compares the median RSS of the first and last tenth of the run, after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from compress.env import describe_machine, machine_line
from compress.errors import cli_entry
from compress.plotting import saved_figure
from loadtest.metrics import PeriodicSampler
from loadtest.run import load_test
from loadtest.spec import add_spec_arguments, default_out, spec_from_args, streams_for
from tools.frame_sets import resolve_frames
from tools.repository import RepositoryRecord
from tools.server import TritonServer

GROWTH_GOAL = 0.10
LOAD_SHARE = 0.7  # of the capacity `make capacity` measured, when no stream count is given
SOAK_S = 600.0


def process_label(process) -> str:
    """'tritonserver', or the model a Python backend stub serves (from its model.py path)."""
    try:
        cmdline = process.cmdline()
    except Exception:
        return process.name()
    for arg in cmdline[1:]:
        if arg.endswith("model.py"):
            return Path(arg).parent.parent.name  # <repo>/<model>/<version>/model.py
    return Path(cmdline[0]).name if cmdline else process.name()


class MemorySampler(PeriodicSampler):
    """RSS (MB) of a process and its descendants, sampled every `interval_s`."""

    def __init__(self, pid: int, interval_s: float = 1.0):
        import psutil

        super().__init__(interval_s)
        self.root = psutil.Process(pid)

    def sample(self) -> dict[str, float]:
        rss: dict[str, float] = {}
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                label, mb = process_label(process), process.memory_info().rss / 2**20
            except Exception:  # a stub that just exited
                continue
            instance, name = 1, label
            while name in rss:  # several instances of one model: "detector", "detector #2", ...
                instance += 1
                name = f"{label} #{instance}"
            rss[name] = round(mb, 2)
        return rss


def memory_growth(samples: list[tuple[float, dict[str, float]]], warmup_s: float) -> dict[str, dict]:
    """Per process and in total: median RSS of the first and last tenth after warm-up, and the growth."""
    start = samples[0][0] + warmup_s if samples else 0.0
    kept = [s for s in samples if s[0] >= start] or samples
    tenth = max(1, len(kept) // 10)
    labels = sorted({label for _, rss in kept for label in rss})
    result = {}
    for label in labels + ["total"]:
        def series(part):
            return [sum(rss.values()) if label == "total" else rss[label] for _, rss in part
                    if label == "total" or label in rss]

        first, last = series(kept[:tenth]), series(kept[-tenth:])
        if not first or not last:
            continue
        begin, end = statistics.median(first), statistics.median(last)
        result[label] = {"start_mb": round(begin, 1), "end_mb": round(end, 1),
                         "growth": round(end / begin - 1, 4) if begin else None}
    return result


def plot_memory(samples, path: Path, title: str) -> None:
    start = samples[0][0]
    labels = sorted({label for _, rss in samples for label in rss})
    with saved_figure(path) as (_, ax):
        for label in labels:
            points = [(t - start, rss[label]) for t, rss in samples if label in rss]
            ax.plot(*zip(*points), label=label)
        ax.plot([t - start for t, _ in samples], [sum(rss.values()) for _, rss in samples], color="black",
                label="total")
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel("RSS (MB)")
        ax.set_title(title)
        ax.legend(fontsize=8)


def soak_markdown(result: dict) -> str:
    s, f = result["spec"], result["frames"]
    lines = [f"# Soak: {s['streams']} streams x {s['fps']:g} FPS for {s['duration_s']:.0f} s over {s['protocol']}", "",
             machine_line(result.get("machine")), "",
             f"- load: {result['load_note']}; frames {result['frame_set']['name']} "
             f"({result['frame_set']['width']}x{result['frame_set']['height']})",
             f"- frames due {f['frames_due']}, answered {f['frames_ok']}, errors {f['errors']}, "
             f"rejected {f.get('rejected', 0)}, dropped {f['dropped']}; p50 {f['latency_ms']['p50']} / "
             f"p99 {f['latency_ms']['p99']} ms",
             f"- memory growth (median RSS, first vs last tenth after {result['warmup_s']:.0f} s warm-up): total "
             f"**{result['memory']['total']['growth']:+.1%}** (goal < {GROWTH_GOAL:.0%}: "
             f"{'met' if result['goal_met'] else 'missed'})", "",
             "| process | start MB | end MB | growth |", "|---|---:|---:|---:|"]
    for label, m in result["memory"].items():
        lines.append(f"| {label} | {m['start_mb']} | {m['end_mb']} | {m['growth']:+.1%} |")
    return "\n".join(lines) + "\n"


def soak(args) -> dict:
    RepositoryRecord.load(args.repo)  # built, or one error saying how
    streams, note = streams_for(args.streams, args.artifacts, args.frames, args.load)
    spec = spec_from_args(args, streams=streams)
    out = default_out(args, "soak")
    out.mkdir(parents=True, exist_ok=True)
    images = resolve_frames(args.frames, args.artifacts)
    with TritonServer(args.repo, log_path=out / "server.log") as server:
        url = server.grpc_url if spec.protocol == "grpc" else server.http_url
        print(f"==> soak: {note}, {spec.fps:g} FPS for {spec.duration_s:.0f} s; sampling server + stub RSS", flush=True)
        with MemorySampler(server.process.pid, args.sample_s) as sampler:
            summary = load_test(spec, out, url=url, metrics_url=server.metrics_url, images=images)
    warmup_s = min(args.warmup_s, spec.duration_s / 5)
    memory = memory_growth(sampler.samples, warmup_s)
    result = {"spec": vars(spec), "machine": describe_machine(), "frame_set": images.record(), "load_note": note, "frames": summary["frames"], "warmup_s": warmup_s,
              "memory": memory, "samples": len(sampler.samples),
              "goal_met": memory["total"]["growth"] < GROWTH_GOAL and summary["frames"]["errors"] == 0
              and summary["frames"].get("lost", 0) == 0,
              "rss_mb": [{"t": round(t - sampler.samples[0][0], 1), **rss} for t, rss in sampler.samples]}
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    (out / "soak.md").write_text(soak_markdown(result))
    plot_memory(sampler.samples, out / "rss_over_time.png", f"Soak: {note}")
    return result


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_spec_arguments(parser, streams=0, duration_s=SOAK_S)
    parser.add_argument("--load", type=float, default=LOAD_SHARE, help="share of the measured capacity (with --streams 0)")
    parser.add_argument("--sample-s", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="left out of the growth figure")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--frames", "--images", dest="frames", default="1080p",
                        help="frame set: dataset (alias 256), 480p, 720p, 1080p (default) or a folder")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--out", type=Path, help="default: <artifacts>/soak")
    args = parser.parse_args(argv)
    result = soak(args)
    print(soak_markdown(result))
    print(f"report: {default_out(args, 'soak')}/soak.md, rss_over_time.png (and the load test's summary.md)")


if __name__ == "__main__":
    main()
