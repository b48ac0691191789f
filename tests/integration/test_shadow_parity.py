"""Shadow parity in the real server: live agreement on Triton's /metrics is the in-process one.

The served INT8 model of the tiny pipeline is shadowed by its FP32 reference on every frame; what
the server exports is compared with compress.detection.compare_heads run in-process on the same
frames by tools.agreement (same files, same tensors, batch 1 on both sides): exact counts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TEST_CONF, copy_committed_repository

pytestmark = pytest.mark.integration

FRAMES = 12


def build_shadowed(tmp_path: Path, served: Path, reference: Path, name: str, **settings):
    from compress.export import read_info
    from tools import build_repo

    repo = copy_committed_repository(tmp_path / name)
    config = build_repo.settings_for(read_info(served), conf_threshold=TEST_CONF, max_batch_size=8, shadow=True,
                                     # every frame compared: the CPU gate off (its own tests are in tests/unit/test_shadow.py)
                                     shadow_rate=1.0, shadow_max_fps=1000.0, shadow_max_cpu=1.0,
                                     evidence_dir=str(tmp_path / f"{name}-evidence"),
                                     # correctness on 2 busy cores: no load shedding (test_loadtest covers it)
                                     queue_timeout_us=0, **settings)
    return build_repo.build(repo, served, config, {"stage": "test", "target": "local"}, shadow_reference=reference)


def serve(repo: Path, tmp_path: Path):
    from tools.server import TritonServer

    return TritonServer(repo, log_path=tmp_path / f"{repo.name}.log", exit_timeout_s=5).start()


def send_one_by_one(server, payloads: list[bytes], settle: str | None = None) -> list:
    """Each frame alone (batch 1 through every step, as the in-process side runs). `settle`: an
    outcome counter to wait on after each frame, so the shadow worker is idle again when the next
    one comes (a frame offered while it is busy is skipped by design)."""
    import tritonclient.http as http

    from compress.detection import unpad_detections
    from tools.triton_metrics import scrape

    answers = []
    with http.InferenceServerClient(server.http_url) as client:
        for payload in payloads:
            seen = scrape(server.metrics_url).get(settle, 0) if settle else 0
            image = http.InferInput("IMAGE", [1, 1], "BYTES")
            image.set_data_from_numpy(np.array([[payload]], dtype=object))
            result = client.infer("yolo", [image])
            answers += unpad_detections({k: result.as_numpy(k) for k in ("NUM_DETECTIONS", "BOXES", "SCORES", "CLASSES")})
            if settle:
                wait_for(server, settle, seen + 1)
    return answers


def wait_for(server, key: str, at_least: float, timeout_s: float = 60.0) -> dict[str, float]:
    from tools.triton_metrics import scrape

    deadline = time.monotonic() + timeout_s
    while True:
        values = scrape(server.metrics_url)
        if values.get(key, 0) >= at_least or time.monotonic() > deadline:
            return values
        time.sleep(0.25)


def delta(after: dict, before: dict, key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture(scope="module")
def models(tiny_artifacts):
    from compress.manifest import Manifest
    from compress.records import Report

    served = Report.load(tiny_artifacts).served
    return served.onnx, Manifest(tiny_artifacts).output("export", "onnx")


@pytest.fixture(scope="module")
def payloads(val_images) -> list[bytes]:
    return [p.read_bytes() for p in val_images[:FRAMES]]


def test_exported_agreement_is_the_in_process_agreement(models, payloads, tmp_path_factory, tiny_artifacts):
    from compress.detection import AgreementCounts
    from compress.shadow import COUNT_METRICS, EvidenceStore, ShadowSettings, is_low, outcome_key
    from tools.agreement import compare_on_frames
    from tools.repository import RepositoryRecord
    from tools.shadow_control import set_shadow_rate

    tmp_path = tmp_path_factory.mktemp("shadow")
    served, reference = models
    baseline = {"agreement": {"box_recall": 0.91, "extra_boxes": 0.07},
                "drift": {"detections_per_frame": 2.5, "mean_confidence": 0.42}}
    repo = build_shadowed(tmp_path, served, reference, "exact", shadow_min_frame_recall=1.0, shadow_baseline=baseline)
    record = RepositoryRecord.load(repo)
    local = record.in_process_detector()
    from compress.local_detector import LocalDetector

    shadow_reference = LocalDetector(repo / "postprocess" / "1" / "reference.onnx", conf_threshold=TEST_CONF,
                                     reduced_decode=record.settings.reduced_decode)
    counts, expected_served = compare_on_frames(shadow_reference, local, payloads, batch_size=1)
    total = sum(counts, AgreementCounts())
    assert total.reference_boxes > 0 and total.served_boxes > 0  # a comparison of nothing would prove nothing
    low = sum(is_low(c, ShadowSettings(min_frame_recall=1.0)) for c in counts)

    server = serve(repo, tmp_path)
    try:
        before = wait_for(server, "yolo_shadow_enabled", 1)
        assert before.get("yolo_shadow_enabled") == 1
        # what the gate saw, as gauges for the alarms; every counter exists from the start, at 0
        assert (before["yolo_gate_box_recall"], before["yolo_gate_extra_boxes"], before["yolo_gate_detections_per_frame"],
                before["yolo_gate_mean_confidence"]) == (0.91, 0.07, 2.5, 0.42)
        assert before["yolo_shadow_found_boxes_total"] == 0 and before[outcome_key("skipped_busy")] == 0
        answers = send_one_by_one(server, payloads, settle=outcome_key("compared"))
        after = wait_for(server, outcome_key("compared"), before.get(outcome_key("compared"), 0) + len(payloads))
        # the served answers are what the served model gives in-process: the shadow changed nothing
        for got, want in zip(answers, expected_served):
            assert np.array_equal(got.classes, want.classes) and np.allclose(got.boxes, want.boxes, atol=1e-3)
        assert delta(after, before, outcome_key("compared")) == len(payloads)
        for field, name in COUNT_METRICS.items():
            if field == "score_drift_sum":
                assert delta(after, before, name) == pytest.approx(total.score_drift_sum, abs=1e-6)
            else:
                assert delta(after, before, name) == getattr(total, field), name
        assert delta(after, before, "yolo_frames_total") == len(payloads)
        assert delta(after, before, "yolo_detections_total") == sum(len(d) for d in expected_served)
        assert delta(after, before, "yolo_shadow_low_agreement_frames_total") == low
        stored = EvidenceStore(tmp_path / "exact-evidence").frames()
        assert len(stored) == low == delta(after, before, 'yolo_evidence_frames_total{outcome="stored"}')
        for frame in stored:  # both sets of boxes kept, with the frame as the detector saw it
            assert frame.path.stat().st_size > 0 and {"served", "reference", "counts"} <= set(frame.record)
        log = EvidenceStore(tmp_path / "exact-evidence").agreement_log()
        assert sum(line["found"] for line in log[-len(payloads):]) == total.found
        # `make audit`: the kept frames rendered, and the budget question answered on them
        from tools.audit import audit

        audited = audit(repo, tmp_path / "audit", artifacts=tiny_artifacts, gate=True)
        assert audited["frames_kept"] == low and audited["compared"] == len(payloads)
        assert (tmp_path / "audit" / "worst_frames.png").stat().st_size > 0
        assert (tmp_path / "audit" / "agreement_over_time.png").stat().st_size > 0
        budget = audited["budget"]
        assert budget["frames"] == low and budget["maps"]["served"]["val_and_traffic"]["map50_95"] > 0
        verdict = "yes" if budget["within_budget"] else "NO"
        assert f"Within the budget on this traffic: {verdict}" in (tmp_path / "audit" / "audit.md").read_text()

        # switched off at run time: postprocess reloads with shadow_rate 0, the server keeps answering
        assert set_shadow_rate(server.http_url, 0.0)["shadow_rate"]["string_value"] == "0.0"
        off_before = wait_for(server, "yolo_frames_total", 0)
        assert off_before.get("yolo_shadow_rate") == 0
        assert len(send_one_by_one(server, payloads[:4])) == 4
        off_after = wait_for(server, "yolo_frames_total", off_before.get("yolo_frames_total", 0) + 4)
        assert delta(off_after, off_before, "yolo_frames_total") == 4  # drift signals still counted
        time.sleep(1.5)  # three flushes: a late shadow result would show by now
        settled = wait_for(server, "yolo_frames_total", 0)
        from compress.shadow import SHADOW_OUTCOMES

        assert all(delta(settled, off_before, outcome_key(o)) == 0 for o in SHADOW_OUTCOMES)
        assert settled["yolo_shadow_enabled"] == 0
    finally:
        server.stop()


def test_a_reference_that_fails_or_a_disk_that_refuses_never_fails_a_frame(models, payloads, tmp_path_factory):
    from compress.shadow import outcome_key

    tmp_path = tmp_path_factory.mktemp("shadow-faults")
    served, reference = models
    broken = build_shadowed(tmp_path, served, reference, "broken")
    (broken / "postprocess" / "1" / "reference.onnx").write_bytes(b"not an onnx model")
    server = serve(broken, tmp_path)
    try:
        answers = send_one_by_one(server, payloads[:6])
        assert len(answers) == 6
        after = wait_for(server, outcome_key("unavailable"), 6)
        assert after.get("yolo_shadow_enabled") == 0 and after[outcome_key("unavailable")] == 6
        assert after.get(outcome_key("compared"), 0) == 0
        assert "shadow parity off: the reference did not load" in (tmp_path / "broken.log").read_text()
    finally:
        server.stop()

    # a shadow that cannot even start (here its module; on Triton < 23.05 the metrics API) leaves
    # the served model loaded and answering, without shadow and drift signals
    unstartable = build_shadowed(tmp_path, served, reference, "unstartable")
    (unstartable / "postprocess" / "1" / "shadow.py").write_text("raise ImportError('a broken shadow module')\n")
    server = serve(unstartable, tmp_path)
    try:
        unwatched = send_one_by_one(server, payloads[:3])
        for alone, shadowed in zip(unwatched, answers[:3], strict=True):  # the same answers as with a shadow
            np.testing.assert_array_equal(alone.boxes, shadowed.boxes)
            np.testing.assert_array_equal(alone.classes, shadowed.classes)
        assert server.is_ready()
        log = (tmp_path / "unstartable.log").read_text()
        assert "shadow parity and drift signals off: ImportError: a broken shadow module" in log
    finally:
        server.stop()

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the evidence folder should be")
    full = build_shadowed(tmp_path, served, reference, "full", shadow_min_frame_recall=1.0)
    settings = json.loads((full / "repository.json").read_text())["settings"]
    from tools import triton_config as tc

    settings_obj = tc.RepositorySettings(**{**settings, "evidence_dir": str(blocked / "evidence")})
    for config in tc.all_configs(settings_obj):
        tc.write_config(config, full / config.name)
    server = serve(full, tmp_path)
    try:
        answers = send_one_by_one(server, payloads, settle=outcome_key("compared"))
        assert len(answers) == len(payloads)
        after = wait_for(server, outcome_key("compared"), len(payloads))
        low = after.get("yolo_shadow_low_agreement_frames_total", 0)
        assert low > 0, "no low-agreement frame to store: the disk-error path went untested"
        assert after.get('yolo_evidence_frames_total{outcome="dropped_error"}') == low
        assert server.is_ready()
        # under concurrent load the worker falls behind: sampled frames are skipped, never queued
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            answered = sum(len(a) for a in pool.map(lambda part: send_one_by_one(server, part),
                                                       [payloads * 2] * 4))
        assert answered == len(payloads) * 8
        wait_for(server, "yolo_frames_total", after["yolo_frames_total"] + answered)
        time.sleep(1.5)
        loaded = wait_for(server, "yolo_frames_total", 0)
        chosen = sum(delta(loaded, after, outcome_key(o)) for o in ("compared", "skipped_busy", "skipped_cap"))
        assert chosen == answered  # rate 1: every frame chosen, and every one has an outcome
        assert delta(loaded, after, outcome_key("skipped_busy")) > 0 and delta(loaded, after, outcome_key("compared")) > 0
    finally:
        server.stop()


def test_a_frame_the_reference_fails_on_is_counted_and_the_next_one_compared(models, tmp_path):
    """The worker on its own (no server): a tensor the reference cannot take fails that frame only."""
    import shutil

    from compress.export import read_info
    from compress.shadow import Shadow, ShadowSettings, outcome_key
    from tools.build_repo import served_copy

    served, reference = models
    info = read_info(served)
    model_dir = tmp_path / "postprocess"
    model_dir.mkdir()
    for source, name in (("shadow.py", "shadow.py"), ("onnx_session.py", "onnx_session.py"), ("detection.py", "yolo_ops.py")):
        shutil.copyfile(Path(__file__).parents[2] / "compress" / source, model_dir / name)  # as the builder lays them out
    served_copy(reference, model_dir / "reference.onnx", "uint8")
    reported: list[dict] = []
    head = {"image_size": list(info.image_size), "strides": list(info.strides), "conf": TEST_CONF, "iou": 0.45,
            "max_det": 300}
    shadow = Shadow(ShadowSettings(rate=1.0, max_fps=1000), str(model_dir), head, reported.append)
    try:
        assert shadow.available
        from compress.local_detector import LocalDetector

        candidate = LocalDetector(served, conf_threshold=TEST_CONF)
        pixels, letterbox = candidate.prepare([(Path(__file__).parents[2] / "build" / "test-artifacts" / "dataset" /
                                                "images" / "val" / "val_00000.jpg").read_bytes()])
        heads = {k: v[0] for k, v in candidate.heads(pixels).items()}
        wrong = np.zeros((3, 8, 8), np.uint8)  # not the reference's input size
        for tensor in (wrong, (pixels[0] * 255).round().astype(np.uint8)):
            assert shadow.offer(tensor, letterbox[0], heads) == "handed"
            deadline = time.monotonic() + 60
            while shadow._busy.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
        outcomes = [k for r in reported for k in r if k.startswith("yolo_shadow_frames_total")]
        assert outcomes == [outcome_key("failed"), outcome_key("compared")]
    finally:
        shadow.close()
    assert shadow.process.poll() is not None  # the worker ends with its model
