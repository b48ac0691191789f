"""Multi-stream load test against the served ensemble (`make loadtest`).

    python -m loadtest.run --streams 16 --fps 10 --duration 60s --protocol grpc [--workers 2]

Starts the local Triton server on the built repository unless `--url` points at a running one,
runs Locust headless (a master and `--workers` worker processes on loopback when > 0), scrapes
Triton's metrics meanwhile, and writes into `--out`: Locust's CSV and HTML report, frames.json,
summary.json / summary.md (throughput, p50/p95/p99 from due time, late / dropped / errors,
per-model batch size, queue and compute time, the bottleneck step) and latency_over_time.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from compress.env import describe_machine, machine_line
from compress.errors import ToolkitError, cli_entry
from compress.plotting import saved_figure
from loadtest.frames import summarize
from loadtest.metrics import MetricsRecorder, combined_summary
from loadtest.spec import LoadSpec, add_spec_arguments, default_out, spec_from_args
from tools.frame_sets import FrameSet, as_frame_set
from tools.repository import RepositoryRecord
from tools.server import LOOPBACK, TritonServer, free_port
from tools.watch import ShadowWatch, live_line
from tools.watch import markdown_line as watch_line

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def locust_commands(spec: LoadSpec, urls: list[str], images: Path, out: Path) -> list[list[str]]:
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    custom = ["--fps", str(spec.fps), "--protocol", spec.protocol, "--model", spec.model, "--images", str(images),
              "--max-in-flight", str(spec.max_in_flight), "--phase", spec.phase, "--streams-hint", str(spec.streams),
              "--stream-seconds", str(spec.duration_s), "--endpoints", ",".join(urls)]
    if spec.resize_to_model:
        custom.append("--resize-to-model")
    # Locust's own clock runs a little longer than the schedule so the last replies land.
    workers = spec.workers + spec.remote_workers
    custom += ["--workers-hint", str(max(workers, 1))]
    run = ["--headless", "-u", str(spec.streams), "-r", str(max(spec.streams, 1) * 10),
           "-t", f"{int(spec.duration_s + 3 + 2 * workers)}s",
           "--host", urls[0], "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
           "--records", str(out / "frames.json"), "--stop-timeout", "5", "--loglevel", "WARNING"]
    if spec.remote_workers > 0:  # workers run elsewhere and take these options from the master
        return [base + run + custom + ["--master", "--master-bind-host", "0.0.0.0", "--master-bind-port",
                                       str(spec.master_port), "--expect-workers", str(spec.remote_workers)]]
    if spec.workers <= 0:
        return [base + run + custom]
    port = free_port()
    master = base + run + custom + ["--master", "--master-bind-host", LOOPBACK, "--master-bind-port", str(port),
                                    "--expect-workers", str(spec.workers)]
    worker = base + custom + ["--worker", "--master-host", LOOPBACK, "--master-port", str(port), "--loglevel", "WARNING"]
    return [master] + [worker] * spec.workers


def run_locust(spec: LoadSpec, urls: list[str], images: Path, out: Path) -> float:
    """Run Locust to the end; returns the CPU seconds its processes used (the client side's cost)."""
    commands = locust_commands(spec, urls, images, out)
    before = _children_cpu_s()
    workers = [subprocess.Popen(cmd) for cmd in commands[1:]]
    try:
        # Locust exits 1 when any request failed; the summary reports failures, so only a crash is an error.
        # remote workers may still be starting (image pulls): allow for them
        result = subprocess.run(commands[0], timeout=spec.duration_s + 120 + 600 * (spec.remote_workers > 0))
        if result.returncode not in (0, 1):
            raise ToolkitError(f"locust exited with {result.returncode}")
    finally:
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    return _children_cpu_s() - before


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # of waited-for child processes
    return usage.ru_utime + usage.ru_stime


def plot_latency(frames: list[dict], spec: LoadSpec, path: Path) -> None:
    import numpy as np

    ok = sorted((f["due"], f["latency_ms"]) for f in frames if f["status"] == "ok")
    drops = [f["due"] for f in frames if f["status"] == "dropped"]
    rejects = [f["due"] for f in frames if f["status"] == "rejected"]
    start = min([f["due"] for f in frames], default=0.0)
    with saved_figure(path) as (_, ax):
        if ok:
            t, lat = np.array(ok).T
            ax.scatter(t - start, lat, s=4, alpha=0.4, label="frame latency from due time")
            window = max(1, len(lat) // 40)
            p95 = [np.percentile(lat[max(0, i - window):i + 1], 95) for i in range(len(lat))]
            ax.plot(t - start, p95, color="C1", label="rolling p95")
        if drops:
            ax.scatter(np.array(drops) - start, np.zeros(len(drops)), marker="x", color="red", s=12, label="dropped")
        if rejects:
            ax.scatter(np.array(rejects) - start, np.zeros(len(rejects)), marker="|", color="purple", s=20,
                       label="rejected by the server")
        ax.axhline(spec.slo_ms, color="gray", linestyle="--", label=f"SLO {spec.slo_ms:.0f} ms")
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{spec.streams} streams x {spec.fps:g} FPS over {spec.protocol}")
        ax.legend(fontsize=8)


def _causes(frames: dict) -> str:
    """", queue full 3, timeout 2" for shed frames, by the cause Triton gave."""
    causes = frames.get("rejected_by_cause") or {}
    return "".join(f", {cause.replace('_', ' ')} {count}" for cause, count in causes.items() if count)


def to_markdown(summary: dict) -> str:
    s, lat = summary["spec"], summary["frames"]["latency_ms"]
    f, m = summary["frames"], summary["triton"]
    lines = [f"# Load test: {s['streams']} streams x {s['fps']} FPS, {s['duration_s']:.0f} s, {s['protocol']}"
             f"{', ' + str(s['workers']) + ' workers' if s['workers'] else ''}", "", machine_line(summary.get("machine")), "",
             f"- frames due {f['frames_due']}, answered {f['frames_ok']}, dropped {f['dropped']}, "
             f"rejected by the server {f.get('rejected', 0)} ({f.get('rejected_share', 0):.1%}{_causes(f)}"
             f"{', answered in p50 ' + str(f['rejection_p50_ms']) + ' ms' if f.get('rejection_p50_ms') else ''}), "
             f"lost with a replica {f.get('lost', 0)}, errors {f['errors']}",
             f"- throughput {f['throughput_fps']} frames/s; latency from due time p50 {lat['p50']} / p95 {lat['p95']} / "
             f"p99 {lat['p99']} ms (max {lat['max']})",
             f"- frames: {summary['frame_set']['name']} ({summary['frame_set']['width']}x{summary['frame_set']['height']}, "
             f"{summary['frame_set']['mean_kib']} KiB each"
             f"{', shrunk to the model input by the cameras' if s.get('resize_to_model') else ''}); "
             f"client CPU {summary['client_cpu_ms_per_frame']} ms per frame",
             f"- late frames: {f['late_over_interval']} over the frame interval, {f['late_over_slo']} over the "
             f"{f['slo_ms']:.0f} ms SLO", f"- bottleneck step: **{m['bottleneck']}**",
             watch_line(summary.get("watch", {"shadow": False})), "",
             "| model | requests | failures | avg batch | queue ms/request | compute ms/request (its batch's run) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, v in m["models"].items():
        lines.append(f"| {name} | {v['requests']} | {v['failures']} | {v['avg_batch_size']} | "
                     f"{v['queue_ms_per_request']} | {v['compute_ms_per_request']} |")
    endpoints = f.get("by_endpoint", {})
    if len(endpoints) > 1:
        statuses = sorted({status for counts in endpoints.values() for status in counts})
        lines += ["", "| endpoint | " + " | ".join(statuses) + " |", "|---|" + "---:|" * len(statuses)]
        lines += [f"| {e} | " + " | ".join(str(c.get(s, 0)) for s in statuses) + " |" for e, c in endpoints.items()]
    return "\n".join(lines) + "\n"


def load_test(spec: LoadSpec, out: Path, url: str | None = None, metrics_url: str | None = None,
              repo: Path = Path("model_repository"), images: FrameSet | Path | str | None = None,
              artifacts: Path = Path("artifacts")) -> dict:
    """Run the streams and write the summary. `url` and `metrics_url` may list several replicas,
    comma-separated (metrics are optional for running servers: the Triton section is then empty).
    `images`: a frame set, its name (dataset, 720p, 1080p) or a folder; default the dataset's."""
    out.mkdir(parents=True, exist_ok=True)
    frame_set = as_frame_set(images, artifacts)
    with ExitStack() as stack:
        if url is None:
            RepositoryRecord.load(repo)  # built, or one error saying how
            server = stack.enter_context(TritonServer(repo, log_path=out / "server.log"))
            url = server.grpc_url if spec.protocol == "grpc" else server.http_url
            metrics_url = server.metrics_url
            print(f"==> started tritonserver for the load test (gRPC {server.grpc_url}, HTTP {server.http_url})")
        urls = split_urls(url)
        recorders = [stack.enter_context(MetricsRecorder(m)) for m in split_urls(metrics_url or "")]
        # live agreement and the alarms (tools.watch), on the first replica's metrics, printed as it goes
        watch = stack.enter_context(ShadowWatch(recorders[0].url, interval_s=5.0, on_sample=print_live)) if recorders else None
        print(f"==> {spec.streams} streams x {spec.fps:g} FPS of {frame_set.label()} for {spec.duration_s:.0f} s "
              f"over {spec.protocol} to {', '.join(urls)}"
              + ("" if recorders else " (no metrics endpoint: no Triton section)"), flush=True)
        client_cpu_s = run_locust(spec, urls, frame_set.images, out)
    frames_path = out / "frames.json"
    if not frames_path.exists():
        raise ToolkitError("locust wrote no frame records", hint=f"see its output above and {out}")
    frames = json.loads(frames_path.read_text())
    summary = {"spec": vars(spec), "machine": describe_machine(), "frame_set": frame_set.record(), "frames": summarize(frames, spec.fps, spec.slo_ms),
               "triton": combined_summary(recorders), "watch": watch.summary() if watch else {"shadow": False},
               # Locust's own processes: reading, sending and receiving a frame (the camera side's cost)
               "client_cpu_ms_per_frame": round(client_cpu_s * 1e3 / max(sum(f["status"] != "dropped" for f in frames), 1), 3)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(to_markdown(summary))
    plot_latency(frames, spec, out / "latency_over_time.png")
    return summary


def print_live(watch: ShadowWatch, values: dict) -> None:
    print(live_line(watch, values), flush=True)


def split_urls(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def add_frames_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--frames", "--images", dest="frames", default=default,
                        help="frames to send: dataset (alias 256: the dataset's val split), 480p, 720p, 1080p "
                             "(labelled camera-sized frames, generated once), or a folder / .txt list of your own "
                             f"(default: {default or 'dataset'})")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_spec_arguments(parser)
    parser.add_argument("--url", help="running server(s), host:port, comma-separated for several replicas "
                                      "(streams spread over them and fail over); default: start the local one")
    parser.add_argument("--metrics-url", help="their metrics endpoints, comma-separated (optional)")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    add_frames_argument(parser, default="1080p")  # what cameras send
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--out", type=Path, help="default: <artifacts>/loadtest (loadtest-resized with --resize-to-model)")
    args = parser.parse_args(argv)
    out = default_out(args, "loadtest-resized" if args.resize_to_model else "loadtest")
    summary = load_test(spec_from_args(args), out, args.url, args.metrics_url, args.repo, args.frames, args.artifacts)
    print(to_markdown(summary))
    print(f"report: {out}/summary.md, locust.html, latency_over_time.png")


if __name__ == "__main__":
    main()
