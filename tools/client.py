"""Send images to the served ensemble (HTTP or gRPC) and print detections as JSON.

    python -m tools.client photo.jpg folder/ --protocol grpc --batch 4 --concurrency 2
    python -m tools.client photo.jpg --annotate out/     # also write annotated images
    python -m tools.client photo.jpg --local artifacts/export/baseline.onnx   # no server: in-process
    python -m tools.client frames/ --resize-to-model     # shrink on this side: fewer bytes on the wire

Images travel encoded (JPEG/PNG bytes), so the wire carries what a camera would send; the
server decodes, letterboxes, detects and maps boxes back to original pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from compress.detection import Detections, unpad_detections
from compress.errors import (BadImageError, InputFileError, ServerBusyError, ServerError, ToolkitError, cli_entry,
                             require_file)
from compress.local_detector import LocalDetector

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
OUTPUT_NAMES = ("NUM_DETECTIONS", "BOXES", "SCORES", "CLASSES")
BUSY_RETRIES = 3  # a request the server shed (503 / UNAVAILABLE) is retried with backoff
CAMERA_SIDE_JPEG_QUALITY = 90


def shrink_to_model(data: bytes, size: tuple[int, int]) -> tuple[bytes, float]:
    """A frame resized on the sending side to fit the model input `size` (h, w), aspect kept, as
    JPEG; returns (bytes, gain). Frames already that small are sent as they are (gain 1)."""
    import cv2

    from compress.detection import decode_for_model

    try:
        image, scale, (width, height) = decode_for_model(data, size)  # the cheap decode, as the server's
    except ValueError as error:
        raise BadImageError(str(error)) from None
    gain = min(size[0] / height, size[1] / width)
    if gain >= 1:
        return data, 1.0
    new_size = (max(1, round(width * gain)), max(1, round(height * gain)))
    resized = cv2.resize(image, new_size, interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, CAMERA_SIDE_JPEG_QUALITY])[1].tobytes(), \
        new_size[0] / width


def model_input_size(client) -> tuple[int, int]:
    """(h, w) the served preprocess letterboxes to, from its config on the server."""
    kwargs = {"as_json": True} if client.protocol == "grpc" else {}
    config = client.client.get_model_config("preprocess", **kwargs)
    params = config.get("config", config)["parameters"]  # gRPC wraps the config, HTTP does not
    return int(params["image_height"]["string_value"]), int(params["image_width"]["string_value"])


def collect_images(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted), `.txt` files read as image lists."""
    images = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            images.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.suffix == ".txt" and path.is_file():
            images.extend(Path(line.strip()) for line in path.read_text().splitlines() if line.strip())
        elif path.is_file():
            images.append(path)
        else:
            raise InputFileError(f"no such image or folder: {path}")
    if not images:
        raise InputFileError("no images found", hint=f"pass files or folders with {sorted(IMAGE_SUFFIXES)}")
    return images


def encoded_batch(payloads: list[bytes]) -> np.ndarray:
    """The ensemble's IMAGE input: BYTES [N, 1]."""
    return np.array([[p] for p in payloads], dtype=np.object_)


class TritonDetectorClient:
    """One client (HTTP or gRPC) for the `yolo` ensemble; `detect` returns per-image detections."""

    def __init__(self, url: str, protocol: str = "http", model: str = "yolo", timeout_s: float = 60.0,
                 concurrency: int = 1, resize_to_model: bool = False):
        self.protocol, self.model, self.url = protocol, model, url
        self.resize_to_model, self._model_size = resize_to_model, None
        if protocol == "http":
            import tritonclient.http as client_module

            self.client = client_module.InferenceServerClient(url, concurrency=concurrency,
                                                              connection_timeout=timeout_s, network_timeout=timeout_s)
        elif protocol == "grpc":
            import tritonclient.grpc as client_module

            self.client = client_module.InferenceServerClient(url)
        else:
            raise ValueError(f"protocol must be http or grpc, not {protocol!r}")
        self._module = client_module
        self.timeout_s = timeout_s

    def check_ready(self) -> None:
        try:
            ready = self.client.is_model_ready(self.model)
        except Exception as error:
            raise ServerError(f"cannot reach Triton at {self.url} ({self.protocol}): {error}",
                              hint="start it with `make serve`") from None
        if not ready:
            raise ServerError(f"model {self.model!r} is not ready on {self.url}")

    def infer_raw(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] = OUTPUT_NAMES,
                  model_version: str = "") -> dict[str, np.ndarray]:
        """One request with arbitrary named inputs; raises tritonclient's InferenceServerException."""
        from tritonclient.utils import np_to_triton_dtype

        infer_inputs = []
        for name, array in inputs.items():
            item = self._module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            item.set_data_from_numpy(array)
            infer_inputs.append(item)
        requested = [self._module.InferRequestedOutput(name) for name in outputs]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        result = self.client.infer(self.model, infer_inputs, model_version=model_version, outputs=requested, **kwargs)
        return {name: result.as_numpy(name) for name in outputs}

    def detect(self, payloads: list[bytes]) -> list[Detections]:
        """Encoded images -> detections (in original pixels), in one request; server errors become
        BadImageError/ServerError. With `resize_to_model`, frames shrink here before sending."""
        if not self.resize_to_model:
            return self._detect(payloads)
        if self._model_size is None:
            self._model_size = model_input_size(self)
        shrunk = [shrink_to_model(p, self._model_size) for p in payloads]
        detections = self._detect([data for data, _ in shrunk])
        for detection, (_, gain) in zip(detections, shrunk):
            detection.boxes = detection.boxes / gain  # back to the pixels of the frame as captured
        return detections

    def _detect(self, payloads: list[bytes]) -> list[Detections]:
        from tritonclient.utils import InferenceServerException

        try:
            return unpad_detections(self.infer_raw({"IMAGE": encoded_batch(payloads)}))
        except InferenceServerException as error:
            status = str(error.status() or "")
            message = error.message() or str(error)
            if status in ("400", "StatusCode.INVALID_ARGUMENT"):
                raise BadImageError(f"server rejected the request: {message}") from None
            if status in ("503", "StatusCode.UNAVAILABLE"):
                raise ServerBusyError(f"server is shedding load ({status}): {message}",
                                      hint="retry later, or lower --concurrency") from None
            raise ServerError(f"inference failed ({status or 'no status'}): {message}") from None

    def close(self) -> None:
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def annotate(image: np.ndarray, detections: Detections, names: dict[int, str] | None) -> np.ndarray:
    import cv2

    out = image.copy()
    for box, score, cls in zip(detections.boxes, detections.scores, detections.classes):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = tuple(int(c) for c in np.random.default_rng(int(cls)).integers(64, 256, 3))
        label = f"{(names or {}).get(int(cls), int(cls))} {score:.2f}"
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        cv2.putText(out, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return out


def run(images: list[Path], make_detector, batch: int, concurrency: int) -> list[Detections | Exception]:
    """Send images in batches, `concurrency` requests in flight; one result (or error) per image.

    A batch the server refuses for a bad image is sent again image by image, so only the bad
    file fails. Each worker thread gets its own detector from `make_detector()`: tritonclient's
    HTTP client runs on gevent and must stay in the thread that made it (sharing one fails with
    "greenlet.error: Cannot switch to a different thread").
    """
    chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
    local, made, lock = threading.local(), [], threading.Lock()

    def detect(chunk):
        for attempt in range(BUSY_RETRIES + 1):
            try:
                return local.detector.detect([p.read_bytes() for p in chunk])
            except ServerBusyError as error:  # shed under load: back off and try again
                if attempt == BUSY_RETRIES:
                    return error
                time.sleep(0.2 * 2 ** attempt)
            except (ToolkitError, OSError) as error:  # this request's failure, reported beside the others
                return error

    def send(chunk) -> list[Detections | Exception]:
        if not hasattr(local, "detector"):
            local.detector = make_detector()
            with lock:
                made.append(local.detector)
        result = detect(chunk)
        if not isinstance(result, Exception):
            return list(result)
        if len(chunk) > 1 and isinstance(result, (BadImageError, InputFileError)):
            return [item for path in chunk for item in send([path])]  # find the bad file: the others are served
        return [result] * len(chunk)

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return [item for items in pool.map(send, chunks) for item in items]
    finally:
        for detector in made:
            getattr(detector, "close", lambda: None)()


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="image files or folders")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--url", help="host:port (default 127.0.0.1:8000 for http, :8001 for grpc)")
    parser.add_argument("--model", default="yolo")
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("--annotate", type=Path, help="write annotated copies into this folder")
    parser.add_argument("--local", type=Path, metavar="ONNX", help="run in-process on this ONNX, no server")
    parser.add_argument("--names", type=Path, help="ONNX whose metadata names the classes (for labels)")
    parser.add_argument("--resize-to-model", action="store_true",
                        help="shrink frames to the served model's input here before sending (bandwidth-bound "
                             "links); boxes still come back in the original pixels")
    args = parser.parse_args(argv)
    if args.local:
        require_file(args.local, "ONNX model")
    images = collect_images(args.images)
    names = None
    if args.local:
        shared = LocalDetector(args.local)  # one ONNX Runtime session serves every thread
        names = shared.info.names

        def make_detector():
            return shared
    else:
        url = args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")

        def make_detector():
            return TritonDetectorClient(url, args.protocol, args.model, resize_to_model=args.resize_to_model)

        with make_detector() as probe:
            probe.check_ready()
    if args.names:
        from compress.export import read_info

        names = read_info(args.names).names
    results = run(images, make_detector, max(1, args.batch), max(1, args.concurrency))
    report, failures = [], 0
    for path, result in zip(images, results):
        if isinstance(result, Exception):
            failures += 1
            report.append({"image": str(path), "error": str(result)})
            continue
        report.append({"image": str(path), "detections": result.to_json(names)})
        if args.annotate:
            import cv2

            args.annotate.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(args.annotate / path.name), annotate(cv2.imread(str(path)), result, names))
    json.dump(report, sys.stdout, indent=1)
    print()
    if failures:
        print(f"error: {failures} of {len(images)} images failed (see 'error' entries)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
