"""Shadow parity's parts without a server: sampling, the bounded evidence store, the counts, the configs."""

from __future__ import annotations

import numpy as np
import pytest

from compress.detection import AgreementCounts, Detections, agreement_counts, detection_agreement, frame_agreement
from compress.shadow import EvidenceStore, Sampler, ShadowSettings, drift_baseline, drift_tally, is_low


def dets(boxes, scores, classes) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(classes, np.int32))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_sampler_takes_every_nth_frame_and_caps_per_second():
    clock = Clock()
    sampler = Sampler(0.25, max_fps=1000, clock=clock)
    chosen = [sampler.choose() for _ in range(40)]
    assert chosen.count("chosen") == 10 and chosen[3] == "chosen" and chosen[0] is None
    capped = Sampler(1.0, max_fps=2, clock=clock)
    outcomes = [capped.choose() for _ in range(5)]  # no time passes: two tokens, then capped
    assert outcomes == ["chosen", "chosen", "capped", "capped", "capped"]
    clock.now += 0.5  # one token back
    assert [capped.choose() for _ in range(2)] == ["chosen", "capped"]
    assert all(Sampler(0.0, 5).choose() is None for _ in range(10))


def test_frame_agreement_counts_found_flips_drift_and_extra_boxes():
    reference = dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.8, 0.7], [0, 1, 2])
    # found (score 0.6), class flipped, missing; plus an extra box nowhere near the reference's
    candidate = dets([[0, 0, 10, 10], [20, 20, 30, 30], [80, 80, 90, 90]], [0.6, 0.8, 0.5], [0, 0, 1])
    counts = frame_agreement(reference, candidate, served=candidate, reference_low=reference)
    assert (counts.reference_boxes, counts.found, counts.overlapping, counts.class_flips) == (3, 1, 2, 1)
    assert counts.score_drift_sum == pytest.approx(0.3)
    assert (counts.served_boxes, counts.extra_boxes) == (3, 2)  # the flipped one and the far one
    summary = counts.summary()
    assert summary["box_recall"] == pytest.approx(1 / 3, abs=1e-4) and summary["class_flips"] == 0.5
    # the gate's figures are the same sums
    assert detection_agreement([reference], [candidate]) == {k: summary[k] for k in
                                                               ("reference_boxes", "box_recall", "score_drift", "class_flips")}
    total = agreement_counts([reference, reference], [candidate, candidate])
    assert total.frames == 2 and total.found == 2 and total + AgreementCounts() == total
    rescored = frame_agreement(reference, dets(reference.boxes, [0.5, 0.4, 0.3], [0, 1, 2]))  # all found, scores down
    assert rescored.found == 3 and is_low(rescored, ShadowSettings(min_frame_recall=0.5))
    assert is_low(counts, ShadowSettings(min_frame_recall=0.5)) and not is_low(
        frame_agreement(reference, reference, reference, reference), ShadowSettings(min_frame_recall=1.0))


def test_drift_tally_and_baseline():
    frames = [dets([[0, 0, 1, 1], [1, 1, 2, 2]], [0.35, 0.95], [0, 0]), dets([], [], [])]
    tally = drift_tally(frames)
    assert tally["yolo_frames_total"] == 2 and tally["yolo_empty_frames_total"] == 1
    assert tally['yolo_detections_by_confidence_total{le="0.4"}'] == 1
    assert tally['yolo_detections_by_confidence_total{le="1.0"}'] == 2
    baseline = drift_baseline(frames)
    assert baseline["detections_per_frame"] == 1.0 and baseline["mean_confidence"] == pytest.approx(0.65)


def job(size: int = 32) -> dict:
    return {"time": 1_700_000_000.0, "pixels": np.full((3, size, size), 100, np.uint8),
            "letterbox": np.array([1, 0, 0, size, size], np.float32)}


def test_evidence_store_keeps_at_most_its_caps_oldest_dropped(tmp_path):
    reference = dets([[0, 0, 10, 10]], [0.9], [0])
    counts = frame_agreement(reference, dets([], [], []), dets([], [], []), reference)
    store = EvidenceStore(tmp_path / "ev", max_frames=3, max_bytes=10 << 20)
    names = []
    for _ in range(5):
        assert store.save(job(), counts, dets([], [], []), reference) == "stored"
        names.append(sorted(p.name for p in (tmp_path / "ev").glob("*.png"))[-1])
    kept = store.frames()
    assert [f.path.name for f in kept] == names[-3:]  # the two oldest went
    assert kept[0].record["reference"][0]["class_id"] == 0 and kept[0].record["counts"]["found"] == 0
    tiny = EvidenceStore(tmp_path / "tiny", max_frames=100, max_bytes=1)  # no frame fits: none is kept
    assert tiny.save(job(), counts, dets([], [], []), reference) == "evicted" and tiny.frames() == []
    assert not list((tmp_path / "tiny").glob("*.png"))
    for _ in range(3):
        store.log(1.0, counts)
    assert len(store.agreement_log()) == 3


def test_evidence_store_disk_errors_are_an_outcome_not_an_exception(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = EvidenceStore(blocker / "evidence")
    reference = dets([[0, 0, 10, 10]], [0.9], [0])
    assert store.save(job(), frame_agreement(reference, reference), reference, reference) == "dropped_error"
    assert store.log(1.0, AgreementCounts()) is False  # swallowed, and said
    assert store.frames() == [] and store.agreement_log() == []


def test_shadow_settings_round_trip_through_config_parameters():
    from tools import triton_config as tc

    settings = tc.RepositorySettings((64, 64), 3, shadow=True, shadow_rate=0.1, shadow_max_fps=7, shadow_max_cpu=0.6,
                                     shadow_baseline={"agreement": {"box_recall": 0.97, "extra_boxes": 0.03},
                                                      "drift": {"detections_per_frame": 2.5, "mean_confidence": 0.61}})
    configs = {c.name: tc.read_config(tc.write_config(c, _tmp(c.name))) for c in tc.all_configs(settings)}
    post = configs[tc.POSTPROCESS]
    assert "PIXELS" in [i.name for i in post.input]
    params = {k: v.string_value for k, v in post.parameters.items()}
    shadow = ShadowSettings.from_parameters(params)
    assert (shadow.rate, shadow.max_fps, shadow.max_cpu, shadow.reference_file) == (0.1, 7.0, 0.6,
                                                                                   tc.SHADOW_REFERENCE_FILE)
    assert params["gate_box_recall"] == "0.97" and params["gate_mean_confidence"] == "0.61"
    step = [s for s in configs[tc.ENSEMBLE_NAME].ensemble_scheduling.step if s.model_name == tc.POSTPROCESS][0]
    assert step.input_map["PIXELS"] == "pixels"
    off = {c.name: c for c in tc.all_configs(tc.RepositorySettings((64, 64), 3))}
    assert "PIXELS" not in [i.name for i in off[tc.POSTPROCESS].input]
    assert not any(k.startswith("shadow_") for k in off[tc.POSTPROCESS].parameters)
    with pytest.raises(tc.ConfigError):
        tc.RepositorySettings((64, 64), 3, shadow_rate=1.5)
    with pytest.raises(tc.ConfigError):
        tc.RepositorySettings((64, 64), 3, shadow_max_cpu=0)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _proc_stat(root, cpus: dict[int, tuple[int, int]]) -> None:
    """/proc/stat with per-CPU (busy, idle) ticks; the worker's stat with 5 ticks."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{c} {busy} 0 0 {idle} 0 0 0 0 0 0" for c, (busy, idle) in cpus.items()]
    (root / "stat").write_text("\n".join(lines) + "\nintr 1 2 3\n")


def test_cpu_load_is_the_busy_share_of_the_servers_cores_without_the_worker(tmp_path, monkeypatch):
    import os

    from compress.shadow import CpuLoad

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    (tmp_path / "42").mkdir()
    worker = tmp_path / "42" / "stat"
    worker.write_text("42 (python3 shadow.py) S 1 2 3 4 5 6 7 8 9 10 0 0 0 0 20 0")
    _proc_stat(tmp_path, {0: (0, 0), 1: (0, 0), 2: (0, 0)})
    clock = FakeClock()
    load = CpuLoad(exclude_pid=42, proc=str(tmp_path), cgroup=str(tmp_path / "no-cgroup"), clock=clock)
    # 1 s later: cores 0 and 1 each 90 of 100 ticks busy; core 2 (not ours) idle; the worker used 10 ticks of it
    _proc_stat(tmp_path, {0: (90, 10), 1: (90, 10), 2: (0, 100)})
    worker.write_text("42 (python3 shadow.py) S 1 2 3 4 5 6 7 8 9 10 6 4 0 0 20 0")
    assert load.busy() == 0.0  # read again only after the interval
    clock.now += 1.0
    assert load.busy() == pytest.approx((180 - 10) / 200)
    # a container with a CPU limit: the cgroup's usage against its quota (1.5 cores)
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "cpu.max").write_text("150000 100000\n")
    (cgroup / "cpu.stat").write_text("usage_usec 1000000\nuser_usec 1\n")
    limited = CpuLoad(proc=str(tmp_path), cgroup=str(cgroup), clock=clock)
    (cgroup / "cpu.stat").write_text("usage_usec 1750000\nuser_usec 1\n")
    clock.now += 1.0
    assert limited.busy() == pytest.approx(0.75 / 1.5)
    (cgroup / "cpu.stat").unlink()  # unreadable: the last value stands, never an exception
    clock.now += 1.0
    assert limited.busy() == pytest.approx(0.5)


def test_a_sampled_frame_is_skipped_as_busy_while_the_cores_are_loaded():
    from compress.shadow import Shadow, ShadowSettings

    shadow = Shadow(ShadowSettings(rate=0.0), "/nonexistent", {}, report=lambda deltas: seen.append(deltas))
    seen: list = []
    shadow.sampler.rate = 1.0  # every frame chosen; no worker needed to reach the decision
    shadow.available = True

    class Loaded:
        value = 0.95  # the share the load thread read last

    shadow.load = Loaded()
    assert shadow.offer(np.zeros((3, 8, 8), np.uint8), np.zeros(4), {}) == "skipped_busy"
    from compress.shadow import outcome_key

    assert seen == [{outcome_key("skipped_busy"): 1}]
    Loaded.value = 0.5
    assert shadow.offer(np.zeros((3, 8, 8), np.uint8), np.zeros(4), {}) == "handed"


def _tmp(name: str):
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp()) / name


def test_evidence_goes_beside_the_repository_never_inside_it(tmp_path):
    from compress.shadow import EVIDENCE_ENV, resolve_evidence_dir

    model_dir = str(tmp_path / "model_repository" / "postprocess")
    assert resolve_evidence_dir("evidence", model_dir, {}) == str(tmp_path / "evidence")
    assert resolve_evidence_dir("/var/evidence", model_dir, {}) == "/var/evidence"
    assert resolve_evidence_dir("evidence", model_dir, {EVIDENCE_ENV: "/evidence"}) == "/evidence"
    assert resolve_evidence_dir("", model_dir, {}) == ""


def test_every_series_the_alarms_read_exists_from_the_start():
    """A ratio over a series that never appeared is absent in PromQL: the server creates them all at 0."""
    from compress.shadow import GATE_GAUGES, every_series
    from tools.alerts import ALARMS

    created = set(every_series())
    # the gate's gauges are not among them: made only with the gate's values, a 0 would be a baseline
    assert not created & set(GATE_GAUGES.values())
    for alarm in ALARMS:
        assert set(alarm.numerator + alarm.denominator) <= created, alarm.name
        assert alarm.gauge is None or alarm.gauge in GATE_GAUGES.values()


def test_a_result_the_reader_cannot_count_is_logged_and_the_shadow_goes_on():
    """The reader thread outlives a malformed result: the worker is free for the next frame again."""
    import io
    import pickle
    import struct

    from compress.shadow import Shadow, ShadowSettings, outcome_key

    seen, logged = [], []
    shadow = Shadow(ShadowSettings(rate=0.0), "/nonexistent", {}, report=seen.append, log=logged.append)
    results = [{"outcome": "compared", "counts": {"no_such_count": 1}, "low": False}, {"outcome": "failed"}]
    stream = b"".join(struct.pack("<Q", len(d)) + d for d in (pickle.dumps(r) for r in results))

    class Worker:
        stdout = io.BytesIO(stream)  # then end of file: the worker exited

    shadow.process, shadow.available = Worker(), True
    shadow._busy.set()
    shadow._read()
    assert any("a result was not counted: TypeError" in line for line in logged)
    assert {outcome_key("failed"): 1} in seen  # the result after the bad one was counted
    assert not shadow._busy.is_set() and not shadow.available  # then the end of the stream: off, said once
    assert any("shadow parity off: the worker exited" in line for line in logged)


def test_the_busy_share_is_re_read_by_its_own_thread_while_the_shadow_is_on():
    """Not only when a frame is sampled: after an idle spell the share is the last quarter second's."""
    import threading
    import time

    from compress.shadow import Shadow, ShadowSettings

    shadow = Shadow(ShadowSettings(rate=0.0), "/nonexistent", {}, report=lambda deltas: None)

    class Readings:
        interval_s, value, reads = 0.01, 0.0, 0

        def busy(self):
            self.reads += 1
            self.value = 0.9 if self.reads >= 3 else 0.1
            return self.value

    shadow.load, shadow.available = Readings(), True
    thread = threading.Thread(target=shadow._watch_load, daemon=True)
    thread.start()
    time.sleep(0.2)
    shadow.available = False  # off: the thread ends
    thread.join(timeout=2)
    assert not thread.is_alive() and shadow.load.reads >= 3 and shadow.load.value == 0.9
