"""Bursts: frames that arrive together, as when cameras share a phase or a client sends a folder.

    python -m loadtest.burst --frames 480p --burst 60 --rounds 5      # `make bench-burst`

Each round sends `--burst` frames at once over gRPC (asynchronous requests, all in flight before
the first answer), waits for every answer, then rests. Every frame is counted: answered (with its
latency from the moment the burst was sent), shed by the server (by cause: queue full or queue
timeout) or failed. The goal is that no frame the server could answer within 2.5x the SLO is shed.
A synchronised-phase load test (`--sync-streams` streams all due at the same instant) follows.
Writes burst.json, burst.md and burst.png into `--out`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np

from compress.env import machine_line
from compress.errors import InputFileError, ServerError, cli_entry
from compress.plotting import saved_figure
from tools.frame_sets import FrameSet, resolve_frames
from loadtest.frames import frame_status, shed_cause
from tools.client import collect_images, encoded_batch
from tools.server import TritonServer

ANSWER_WINDOW_SLO_MULTIPLE = 2.5  # a frame answered within this many SLOs still counts as served in time


def send_burst(url: str, payloads: list[bytes], model: str = "yolo", timeout_s: float = 30.0) -> list[dict]:
    """All `payloads` as separate asynchronous gRPC requests at once; one record per frame."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    client = grpcclient.InferenceServerClient(url)
    records: list[dict] = [{} for _ in payloads]
    done = threading.Event()
    remaining = [len(payloads)]
    lock = threading.Lock()

    def callback(index, sent, result, error):
        latency_ms = (time.perf_counter() - sent) * 1e3
        status = frame_status(error)
        records[index] = {"latency_ms": latency_ms, "status": status,
                          **({"cause": shed_cause(error)} if status == "rejected" else {}),
                          **({"message": str(error)[:200]} if error is not None else {})}
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    start = time.perf_counter()
    try:
        for index, payload in enumerate(payloads):
            array = encoded_batch([payload])
            item = grpcclient.InferInput("IMAGE", list(array.shape), np_to_triton_dtype(array.dtype))
            item.set_data_from_numpy(array)
            client.async_infer(model, [item], partial(callback, index, start), client_timeout=timeout_s)
        if not done.wait(timeout_s + 5):
            raise ServerError(f"{remaining[0]} of {len(payloads)} burst frames never came back within {timeout_s + 5:.0f} s",
                              hint="is the server still up? see its log")
    finally:
        client.close()
    return records


def burst_summary(rounds: list[list[dict]], slo_ms: float) -> dict:
    frames = [record for burst in rounds for record in burst]
    answered = np.array([f["latency_ms"] for f in frames if f["status"] == "ok"])
    shed = [f for f in frames if f["status"] == "rejected"]
    window_ms = ANSWER_WINDOW_SLO_MULTIPLE * slo_ms
    pct = (lambda q: round(float(np.percentile(answered, q)), 1)) if len(answered) else (lambda q: None)
    return {
        "frames": len(frames), "answered": int(len(answered)), "shed": len(shed),
        "shed_by_cause": {cause: sum(f.get("cause") == cause for f in shed) for cause in ("queue_full", "timeout", "other")},
        "failed": sum(f["status"] not in ("ok", "rejected") for f in frames),
        "answered_within_window": int((answered <= window_ms).sum()), "window_ms": window_ms,
        "latency_ms": {"p50": pct(50), "p99": pct(99), "max": round(float(answered.max()), 1) if len(answered) else None},
        "burst_span_ms": [round(max((f["latency_ms"] for f in burst), default=0.0), 1) for burst in rounds],
        "messages": sorted({f["message"] for f in frames if "message" in f})[:5],
    }


def run_bursts(url: str, frame_set: FrameSet, size: int, rounds: int, rest_s: float, slo_ms: float) -> dict:
    paths = collect_images([frame_set.images])
    payloads = [paths[i % len(paths)].read_bytes() for i in range(size)]
    send_burst(url, payloads[:4])  # warm the connection and the models: not counted
    results = []
    for number in range(rounds):
        time.sleep(rest_s)
        results.append(send_burst(url, payloads))
        answered = sum(f["status"] == "ok" for f in results[-1])
        print(f"    burst {number + 1}/{rounds}: {answered}/{size} answered, last after "
              f"{max(f['latency_ms'] for f in results[-1]):.0f} ms", flush=True)
    return {"size": size, "rounds": rounds, **burst_summary(results, slo_ms),
            "per_round": [[round(f["latency_ms"], 1) if f["status"] == "ok" else None for f in r] for r in results]}


def to_markdown(result: dict) -> str:
    b, fs = result["burst"], result["frame_set"]
    lines = [f"# Bursts of {b['size']} frames at once ({fs['name']}, {fs['width']}x{fs['height']})", "",
             machine_line(result["machine"]), "", "Repository queue policy: "
             f"max {result['queue']['max_queue_size']} queued, timeout {result['queue']['queue_timeout_us'] / 1e3:.0f} ms.", "",
             f"- {b['rounds']} bursts, {b['frames']} frames: **{b['answered']} answered, {b['shed']} shed** "
             f"(queue full {b['shed_by_cause']['queue_full']}, timeout {b['shed_by_cause']['timeout']}, "
             f"other {b['shed_by_cause']['other']}), {b['failed']} failed",
             f"- answered within {b['window_ms']:.0f} ms (2.5x the SLO): {b['answered_within_window']}; latency from the "
             f"burst p50 {b['latency_ms']['p50']} / p99 {b['latency_ms']['p99']} / max {b['latency_ms']['max']} ms",
             f"- each burst fully answered after: {', '.join(f'{v:.0f}' for v in b['burst_span_ms'])} ms"]
    if result.get("sync"):
        s = result["sync"]["frames"]
        lines += ["", f"## {result['sync']['spec']['streams']} streams on one phase (all due at the same instant)", "",
                  f"- frames due {s['frames_due']}, answered {s['frames_ok']}, shed {s['rejected']}, dropped {s['dropped']}; "
                  f"p99 {s['latency_ms']['p99']} ms; late over the {s['slo_ms']:.0f} ms SLO: {s['late_over_slo']}"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    with saved_figure(path) as (_, ax):
        for number, latencies in enumerate(result["burst"]["per_round"]):
            answered = sorted(v for v in latencies if v is not None)
            ax.plot(answered, np.arange(1, len(answered) + 1), label=f"burst {number + 1}")
        ax.axvline(result["burst"]["window_ms"], color="gray", linestyle="--", label="2.5x SLO")
        ax.set_xlabel("ms since the burst was sent")
        ax.set_ylabel("frames answered")
        ax.set_title(f"{result['burst']['size']} frames at once ({result['frame_set']['name']})")
        ax.legend(fontsize=8)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    from compress.env import describe_machine
    from loadtest.run import load_test
    from loadtest.spec import add_spec_arguments, default_out, spec_from_args
    from tools.repository import RepositoryRecord

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="480p", help="frame set: dataset, 480p, 720p, 1080p or a folder")
    parser.add_argument("--burst", type=int, default=60, help="frames sent at once")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rest-s", type=float, default=2.0, help="pause before each burst")
    parser.add_argument("--sync-streams", type=int, default=12, help="streams on one phase afterwards (0: skip)")
    # --duration: of the synchronised-phase run
    add_spec_arguments(parser, only=("fps", "slo_ms", "duration_s"), duration_s=15.0)
    parser.add_argument("--url", help="a running server's gRPC host:port (default: start the local one)")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--out", type=Path, help="default: <artifacts>/burst")
    args = parser.parse_args(argv)
    if args.burst < 1 or args.rounds < 1:
        raise InputFileError("--burst and --rounds must be >= 1")
    out = default_out(args, "burst")
    out.mkdir(parents=True, exist_ok=True)
    frame_set = resolve_frames(args.frames, args.artifacts)
    settings = RepositoryRecord.load(args.repo).settings
    with ExitStack() as stack:
        url, metrics_url = args.url, None
        if url is None:
            server = stack.enter_context(TritonServer(args.repo, log_path=out / "server.log"))
            url, metrics_url = server.grpc_url, server.metrics_url
        print(f"==> {args.rounds} bursts of {args.burst} frames of {frame_set.label()} to {url}", flush=True)
        result = {"frame_set": frame_set.record(), "machine": describe_machine(),
                  "queue": {"max_queue_size": settings.max_queue_size, "queue_timeout_us": settings.queue_timeout_us},
                  "burst": run_bursts(url, frame_set, args.burst, args.rounds, args.rest_s, args.slo_ms)}
        if args.sync_streams > 0:
            spec = spec_from_args(args, streams=args.sync_streams, phase="sync")
            result["sync"] = load_test(spec, out / "sync", url=url, metrics_url=metrics_url, images=frame_set,
                                       artifacts=args.artifacts)
    (out / "burst.json").write_text(json.dumps(result, indent=2))
    (out / "burst.md").write_text(to_markdown(result))
    plot(result, out / "burst.png")
    print(to_markdown(result))
    print(f"report: {out}/burst.md, burst.json, burst.png")


if __name__ == "__main__":
    main()
