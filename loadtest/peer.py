"""Cross-check with a peer tool: perf_analyzer and this load tester on the same server at matched
concurrency, throughputs side by side (`make bench-perf-analyzer`).

perf_analyzer comes from the tritonclient 2.41.1 wheel (newer wheels ship no binary), installed
apart from the project's tritonclient into .cache/perf_analyzer; it needs libb64 and libcudart,
which the nvidia-pytriton wheel carries. Matched concurrency for Locust: N streams with one
frame in flight each, fed faster than the server answers, i.e. closed loop like perf_analyzer's
`--concurrency-range N`.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import subprocess
from pathlib import Path

from compress.env import CACHE_DIR
from compress.errors import MissingDependencyError, ToolkitError, cli_entry
from compress.manifest import val_image_list
from loadtest.run import load_test
from loadtest.spec import LoadSpec
from tools.client import collect_images, encoded_batch
from tools.server import TritonServer, pytriton_paths

PERF_ANALYZER_DIR = CACHE_DIR / "perf_analyzer"
PERF_ANALYZER_WHEEL = "tritonclient==2.41.1"


def perf_analyzer_binary() -> Path:
    """The perf_analyzer `make venv` installed (nothing is downloaded at run time)."""
    binary = PERF_ANALYZER_DIR / "bin" / "perf_analyzer"
    if not binary.exists():
        raise MissingDependencyError(f"perf_analyzer is not installed in {PERF_ANALYZER_DIR}",
                                     hint=f"run `make venv`: it installs the {PERF_ANALYZER_WHEEL} wheel's binary there")
    binary.chmod(0o755)
    return binary


def library_dir() -> Path:
    """The libraries perf_analyzer links against, under the names it asks for (the pytriton wheel
    carries them with auditwheel's hashed names, e.g. libb64-98cb6333.so.0d)."""
    libs = pytriton_paths()["libs"]
    target = PERF_ANALYZER_DIR / "lib"
    target.mkdir(parents=True, exist_ok=True)
    for wanted, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
        found = sorted(libs.glob(pattern))
        if not found:
            raise MissingDependencyError(f"{wanted} not found in {libs}", hint="reinstall nvidia-pytriton (make venv)")
        link = target / wanted
        if not link.exists():
            link.symlink_to(found[0])
    return target


def input_data(images: list[Path], path: Path) -> Path:
    """perf_analyzer JSON input: BYTES tensors as base64 of Triton's serialized form."""
    from tritonclient.utils import serialize_byte_tensor

    data = [{"IMAGE": {"b64": base64.b64encode(serialize_byte_tensor(encoded_batch([p.read_bytes()])[0]).item()).decode(),
                       "shape": [1]}} for p in images]
    path.write_text(json.dumps({"data": data}))
    return path


def run_perf_analyzer(server: TritonServer, concurrency: int, data: Path, out: Path, model: str = "yolo",
                      interval_ms: int = 5000) -> dict:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(library_dir()), str(pytriton_paths()["libs"]),
                                                          env.get("LD_LIBRARY_PATH")) if p)
    command = [str(perf_analyzer_binary()), "-m", model, "-u", server.grpc_url, "-i", "grpc", "--input-data", str(data),
               "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms),
               "-f", str(out / f"perf_analyzer_c{concurrency}.csv")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    (out / f"perf_analyzer_c{concurrency}.log").write_text(result.stdout + result.stderr)
    csv_path = out / f"perf_analyzer_c{concurrency}.csv"
    if result.returncode != 0 or not csv_path.exists():
        raise ToolkitError(f"perf_analyzer failed (exit {result.returncode}): {(result.stderr or result.stdout)[-400:]}")
    return read_perf_analyzer_csv(csv_path)


# The parts of a request's life perf_analyzer's CSV reports (microseconds); their sum is its average latency
LATENCY_PARTS = ("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
                 "Server Compute Infer", "Server Compute Output", "Client Recv")


def read_perf_analyzer_csv(path: Path) -> dict:
    """Throughput and latency of the (one) concurrency row of the CSV perf_analyzer writes with -f."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "Inferences/Second" not in rows[0]:
        raise ToolkitError(f"perf_analyzer wrote no measurement row to {path}")
    row = rows[0]
    average_us = float(row["Avg latency"]) if row.get("Avg latency") else sum(float(row[k]) for k in LATENCY_PARTS)
    return {"throughput_fps": float(row["Inferences/Second"]), "avg_latency_ms": round(average_us / 1e3, 2),
            "p99_latency_ms": round(float(row["p99 latency"]) / 1e3, 2) if row.get("p99 latency") else None,
            "server_queue_ms": round(float(row["Server Queue"]) / 1e3, 3)}


def compare(repo: Path, concurrencies: list[int], images_dir: Path, out: Path, duration_s: float = 10.0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data = input_data(collect_images([images_dir])[:16], out / "perf_analyzer_input.json")
    rows = []
    with TritonServer(repo, log_path=out / "server.log") as server:
        for concurrency in concurrencies:
            pa = run_perf_analyzer(server, concurrency, data, out)
            spec = LoadSpec(streams=concurrency, fps=1000.0, duration_s=duration_s, max_in_flight=1)
            summary = load_test(spec, out / f"locust_c{concurrency}", url=server.grpc_url,
                                metrics_url=server.metrics_url, images=images_dir)
            locust_fps = summary["frames"]["throughput_fps"]
            rows.append({"concurrency": concurrency, "perf_analyzer_fps": pa["throughput_fps"],
                         "perf_analyzer_avg_latency_ms": pa["avg_latency_ms"], "locust_fps": locust_fps,
                         "locust_p50_ms": summary["frames"]["latency_ms"]["p50"],
                         "ratio": round(locust_fps / pa["throughput_fps"], 3) if pa["throughput_fps"] else None})
            print(f"    concurrency {concurrency}: perf_analyzer {pa['throughput_fps']} /s, locust {locust_fps} /s", flush=True)
    result = {"rows": rows}
    (out / "peer.json").write_text(json.dumps(result, indent=2))
    lines = ["# perf_analyzer vs Locust (same server, gRPC, matched concurrency)", "",
             "| concurrency | perf_analyzer frames/s | Locust frames/s | Locust / perf_analyzer |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['concurrency']} | {r['perf_analyzer_fps']} | {r['locust_fps']} | {r['ratio']} |" for r in rows]
    (out / "peer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--images", type=Path)
    args = parser.parse_args(argv)
    compare(args.repo, args.concurrency, args.images or val_image_list(args.artifacts), args.artifacts / "peer",
            args.duration)


if __name__ == "__main__":
    main()
