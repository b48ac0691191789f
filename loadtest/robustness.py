"""Robustness bench (`make bench-robustness`): bad frames among good ones, on the real server.

    python -m loadtest.robustness --repo model_repository

1. Poisoning: 60 concurrent single-image gRPC requests (12 in flight), every tenth one a bad
   frame of a kind (1x600, 600x1, a PNG whose header claims 40000x40000). Counts good requests
   that failed: each bad frame must fail only itself. Requests the server shed under the burst
   (503, its queue policy) are counted apart: they are load, not poisoning.
2. Refusal time: median client-side latency of a good frame and of header-lie and real
   decompression-bomb PNGs (48 MP and 400 MP), sent one at a time.

Writes summary.json / summary.md into `--out`. The server must stay ready throughout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from compress.env import describe_machine, machine_line
from compress.errors import ServerBusyError, cli_entry
from compress.manifest import val_image_list
from loadtest.bad_frames import decompression_bomb, png_claiming, thin_png
from loadtest.spec import default_out
from tools.client import TritonDetectorClient, collect_images
from tools.repository import RepositoryRecord
from tools.server import TritonServer

POISON_KINDS = {"png_1x600": lambda: thin_png(1, 600), "png_600x1": lambda: thin_png(600, 1),
                "png_header_claims_40000x40000": lambda: png_claiming(40000, 40000)}


def poisoning(url: str, good: bytes, bad: bytes, requests: int = 60, every: int = 10, in_flight: int = 12) -> dict:
    payloads = [bad if i % every == 0 else good for i in range(requests)]
    local = threading.local()

    def send(payload):
        if not hasattr(local, "client"):
            local.client = TritonDetectorClient(url, "grpc")
        try:
            local.client.detect([payload])
            return "ok"
        except ServerBusyError as error:  # load shedding (503): not caused by the bad frame, counted apart
            return "shed: " + str(error)[:160]
        except Exception as error:
            return type(error).__name__ + ": " + str(error)[:160]

    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        outcomes = list(pool.map(send, payloads))
    good = [o for i, o in enumerate(outcomes) if i % every]
    good_failed = [o for o in good if o != "ok" and not o.startswith("shed")]
    bad_outcomes = [o for i, o in enumerate(outcomes) if i % every == 0]
    return {"requests": requests, "bad": len(bad_outcomes), "good": len(good), "good_failed": len(good_failed),
            "good_shed": sum(o.startswith("shed") for o in good), "bad_refused": sum(o != "ok" for o in bad_outcomes),
            "example_bad_reply": bad_outcomes[0], "example_good_failure": good_failed[0] if good_failed else None}


def refusal_times(url: str, payloads: dict[str, bytes], repeats: int) -> dict:
    rows = {}
    with TritonDetectorClient(url, "grpc") as client:
        for name, payload in payloads.items():
            latencies, outcome = [], "ok"
            for _ in range(repeats):
                tick = time.perf_counter()
                try:
                    client.detect([payload])
                except Exception as error:
                    outcome = str(error)[:200]
                latencies.append((time.perf_counter() - tick) * 1e3)
            rows[name] = {"bytes": len(payload), "median_ms": round(statistics.median(latencies), 2),
                          "max_ms": round(max(latencies), 2), "outcome": outcome}
    return rows


def to_markdown(result: dict) -> str:
    lines = ["# Robustness: bad frames beside good ones", "", machine_line(result.get("machine")), "",
             "| bad kind (6 of 60 concurrent gRPC requests) | good requests failed | good shed (503) | bad refused | "
             "reply to the bad one |", "|---|---:|---:|---:|---|"]
    for kind, r in result["poisoning"].items():
        lines.append(f"| {kind} | {r['good_failed']} of {r['good']} | {r['good_shed']} | {r['bad_refused']} of {r['bad']} | "
                     f"{r['example_bad_reply'][:110]} |")
    lines += ["", "| payload | bytes | median ms | max ms | outcome |", "|---|---:|---:|---:|---|"]
    for name, r in result["refusal"].items():
        lines.append(f"| {name} | {r['bytes']:,} | {r['median_ms']} | {r['max_ms']} | {r['outcome'][:110]} |")
    lines += ["", f"Server ready afterwards: {result['server_ready_after']}"]
    return "\n".join(lines) + "\n"


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--images", type=Path, help="folder of good frames (default: the dataset's val split)")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--out", type=Path, help="default: <artifacts>/robustness")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    RepositoryRecord.load(args.repo)  # built, or one error saying how
    args.out = default_out(args, "robustness")
    good = collect_images([args.images or val_image_list(args.artifacts)])[0].read_bytes()
    print("==> building bad frames (the 400 MP bomb takes a few seconds)", flush=True)
    refusal_payloads = {"good frame": good, "png_header_claims_40000x40000": png_claiming(40000, 40000),
                        "png_bomb_48mp": decompression_bomb(8000, 6000),
                        "png_bomb_400mp": decompression_bomb(20000, 20000)}
    args.out.mkdir(parents=True, exist_ok=True)
    with TritonServer(args.repo, log_path=args.out / "server.log") as server:
        result = {"machine": describe_machine(), "poisoning": {}}
        for kind, make in POISON_KINDS.items():
            print(f"==> poisoning with {kind}", flush=True)
            result["poisoning"][kind] = poisoning(server.grpc_url, good, make())
        print("==> refusal times", flush=True)
        result["refusal"] = refusal_times(server.grpc_url, refusal_payloads, args.repeats)
        result["server_ready_after"] = server.is_ready()
    (args.out / "summary.json").write_text(json.dumps(result, indent=2))
    (args.out / "summary.md").write_text(to_markdown(result))
    print(to_markdown(result))
    print(f"report: {args.out}/summary.md")


if __name__ == "__main__":
    main()
