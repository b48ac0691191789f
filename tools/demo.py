"""The last step of `make`: start the local Triton server on the built repository, send real
images through the ensemble over HTTP and gRPC, print a short summary, stop the server.

Writes `<artifacts>/demo/summary.json` and annotated images beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2

from compress.errors import InputFileError, ServerError, cli_entry
from compress.export import read_info
from compress.manifest import Manifest
from tools.client import TritonDetectorClient, annotate, collect_images
from tools.repository import RepositoryRecord
from tools.server import TritonServer


def demo_images(artifacts: Path, count: int = 2) -> list[Path]:
    """Ultralytics' bundled photos plus a few images of the val split."""
    from ultralytics.utils import ASSETS

    images = sorted(Path(ASSETS).glob("*.jpg"))
    record = Manifest(artifacts).get("dataset")
    if record and "val_images" in record.outputs:
        images += collect_images([artifacts / record.outputs["val_images"]])[:count]
    return images


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--repeats", type=int, default=10, help="timed single-image requests")
    args = parser.parse_args(argv)
    record = RepositoryRecord.load(args.repo)
    if record.servable_here():
        raise ServerError(f"{args.repo} is built for target {record.target!r}; the local server runs only "
                          "the Python backend", hint="use `make serve-docker`, or rebuild with TARGET=local")
    repository = {"stage": record.stage, "target": record.target}
    names = read_info(record.detector_file).names
    images = demo_images(args.artifacts)
    out_dir = args.artifacts / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"==> starting tritonserver on {args.repo} (serving stage {repository['stage']!r})", flush=True)
    started = time.perf_counter()
    with TritonServer(args.repo, log_path=args.artifacts / "demo" / "server.log") as server:
        ready_s = time.perf_counter() - started
        results = {}
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            with TritonDetectorClient(url, protocol) as client:
                detections = client.detect([p.read_bytes() for p in images])
                latencies = []
                for _ in range(args.repeats):
                    tick = time.perf_counter()
                    client.detect([images[0].read_bytes()])
                    latencies.append((time.perf_counter() - tick) * 1e3)
            results[protocol] = {"detections": detections, "median_ms": statistics.median(latencies)}
        exit_code = server.stop()
    http, grpc = results["http"]["detections"], results["grpc"]["detections"]
    agree = all(len(a) == len(b) and (a.boxes == b.boxes).all() for a, b in zip(http, grpc))
    summary = {
        "repository": str(args.repo), "stage": repository["stage"], "target": repository["target"],
        "server_ready_s": round(ready_s, 2), "server_exit_code": exit_code, "http_grpc_identical": agree,
        "median_latency_ms": {p: round(r["median_ms"], 2) for p, r in results.items()},
        "images": [{"image": str(p), "detections": d.to_json(names)} for p, d in zip(images, http)],
        "metrics": {name: rec.metrics for name, rec in Manifest(args.artifacts).records.items()},
    }
    for path, dets in zip(images, http):
        cv2.imwrite(str(out_dir / f"{path.stem}.jpg"), annotate(cv2.imread(str(path)), dets, names))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    baseline = summary["metrics"].get("baseline", {})
    print("\n== Summary ==")
    print(f"served: stage {repository['stage']!r}, target {repository['target']}, ensemble 'yolo' "
          f"(preprocess -> detector -> postprocess), ready in {ready_s:.1f} s, clean stop: {exit_code == 0}")
    if baseline:
        print(f"baseline mAP50-95 {baseline.get('map50_95')}  mAP50 {baseline.get('map50')}  "
              f"params {baseline.get('params'):,}  GMACs {baseline.get('gmacs')}")
    for path, dets in zip(images, http):
        top = ", ".join(f"{names[int(c)]} {s:.2f}" for c, s in list(zip(dets.classes, dets.scores))[:4])
        print(f"  {path.name:>24}: {len(dets):3d} detections  {top}")
    print(f"single-image latency (median of {args.repeats}): HTTP {summary['median_latency_ms']['http']} ms, "
          f"gRPC {summary['median_latency_ms']['grpc']} ms; HTTP == gRPC detections: {agree}")
    print(f"annotated images and summary.json in {out_dir}")


if __name__ == "__main__":
    main()
