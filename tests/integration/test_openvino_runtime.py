"""`make openvino` and `make repo RUNTIME=openvino|auto` as typed on the tiny pipeline: the gated
model's NNCF twin, held to the parity gate's checks, timed beside the ONNX Runtime file, served by
the real Triton server on OpenVINO and verified against the same IR in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compress.records import OPENVINO_FILE, GatedModel, OpenVinoModel, ir_hash
from tests.integration.test_parity_gate import TINY_GATE
from tools.gate import run_gate

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def make(*args, check=True):
    result = subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                            env={**os.environ, "MAKEFLAGS": ""})
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def gated_twin(tiny_artifacts) -> dict:
    run_gate(tiny_artifacts, TINY_GATE, allow_mixed_precision=False)
    make("openvino", f"ARTIFACTS={tiny_artifacts}")
    return json.loads((tiny_artifacts / "openvino" / "openvino_gate.json").read_text())


def test_the_twin_is_the_gated_models_nncf_quantization_held_to_the_gates_own_checks(gated_twin, tiny_artifacts):
    import openvino as ov

    gated = GatedModel.load(tiny_artifacts)
    record = OpenVinoModel.load(tiny_artifacts, gated)  # tied to the gated bytes and the IR's
    ops = [op.get_type_name() for op in ov.Core().read_model(str(record.xml)).get_ops()]
    assert ops.count("FakeQuantize") > 10
    # the thresholds the gated model passed under, not defaults
    assert gated_twin["gate"]["min_box_recall"] == TINY_GATE.min_box_recall == gated.gate["min_box_recall"]
    names = [row[0] for row in gated_twin["checks"]]
    assert "polygraphy fp32_vs_openvino" in names and "box recall vs FP32" in names
    # the allowance against the reference is the report's budget, as the parity gate gives it
    from compress.records import Report

    assert gated_twin["gate"]["max_map_drop_vs_baseline"] == Report.load(tiny_artifacts).served.budget_points
    # Polygraphy ran the IR through the OpenVINO runner, on real val images
    outputs = json.loads((tiny_artifacts / "openvino" / "fp32_vs_openvino_outputs.json").read_text())
    assert "openvino-int8" in json.dumps(outputs)[:100000]
    # the mAP is the IR's through the one evaluator, at the precision it is served at, not the ONNX file's
    from compress.evaluate import evaluate_onnx
    from compress.manifest import Manifest

    data = Manifest(tiny_artifacts).output("dataset", "data_yaml")
    again = evaluate_onnx(record.xml, data, threads=gated_twin["threads"], runtime="openvino",
                          precision=record.precision)["map50_95"]
    assert gated_twin["measured"]["map"]["int8"] == pytest.approx(again, abs=1e-4)
    assert record.inference_precision == gated_twin["facts"]["openvino"]["inference_precision"]


def test_both_runtimes_are_timed_side_by_side_in_processes_of_their_own(gated_twin):
    from compress.benchmark import ROUNDS

    facts = gated_twin["facts"]
    assert facts["openvino"]["pid"] != facts["onnxruntime"]["pid"]
    assert facts["openvino"]["runtime"] == "openvino" and facts["onnxruntime"]["runtime"] == "onnxruntime"
    assert facts["openvino"]["threads"] == facts["onnxruntime"]["threads"] == gated_twin["threads"]
    assert facts["openvino"]["cpu_pinning"] is False  # as the served detector runs it
    for timing in ("detector", "end_to_end"):
        for batch, count in ROUNDS.items():
            for runtime in ("onnxruntime", "openvino"):
                assert len(gated_twin["latency"][timing][runtime][f"bs{batch}_rounds"]) == count
    for batch in ("bs1", "bs8"):
        interval = gated_twin["speedup_interval"][batch]
        assert interval["p10"] <= interval["p90"] and gated_twin["speedup"][batch] > 0
    # end to end ran the served post-processing on both sides: the last request returned boxes
    # (a count, not a timing: the tiny model's decode is within the timing noise of its detector)
    for runtime in ("onnxruntime", "openvino"):
        assert facts[runtime]["end_to_end_boxes"] > 0


def test_repo_serves_the_twin_on_openvino_and_verify_holds_it_to_the_ir_in_process(gated_twin, tiny_artifacts, tmp_path):
    if not gated_twin["passed"]:
        refused = make("repo", f"ARTIFACTS={tiny_artifacts}", f"REPO={tmp_path / 'refused'}", "RUNTIME=openvino",
                       check=False)
        assert refused.returncode != 0 and "failed the parity gate's checks" in refused.stderr
        assert "Traceback" not in refused.stderr
        pytest.fail("the tiny model's OpenVINO twin failed the gate's checks: nothing to serve "
                    f"({[row for row in gated_twin['checks'] if not row[3]]})")
    repo = tmp_path / "repo"
    built = make("repo", f"ARTIFACTS={tiny_artifacts}", f"REPO={repo}", "RUNTIME=openvino")
    from tools.repository import RepositoryRecord

    record = RepositoryRecord.load(repo)
    assert record.settings.runtime == "openvino" and record.detector_file.name == "model.xml"
    assert "on openvino" in built.stdout
    # the shadow holds the IR against the reference on ONNX Runtime, with the IR's own baseline
    assert record.settings.shadow and (repo / "postprocess" / "1" / "reference.onnx").exists()
    twin_baseline = OpenVinoModel.load(tiny_artifacts, GatedModel.load(tiny_artifacts)).shadow
    if twin_baseline and twin_baseline["conf"] == record.settings.conf_threshold:
        assert record.settings.shadow_baseline["drift"] == twin_baseline["drift"]
    else:  # gated at another threshold: measured again on the IR at the served one
        assert "measuring it again" in built.stdout and record.settings.shadow_baseline["conf"] == record.settings.conf_threshold
    for name in ("model.xml", "model.bin", "metadata.yaml", "openvino_session.py", "model.py"):
        assert (repo / "detector" / "1" / name).exists(), name
    assert record.model_sha256 == ir_hash(OpenVinoModel.load(tiny_artifacts, GatedModel.load(tiny_artifacts)).xml)
    from compress.export import read_info

    assert read_info(record.detector_file).pixel_type == "uint8"  # preprocess's bytes, scaled inside the IR
    verified = subprocess.run([sys.executable, "-m", "tools.parity", "--artifacts", str(tiny_artifacts), "--deployed",
                               str(repo)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    deployed = json.loads((tiny_artifacts / "parity" / "deployed.json").read_text())
    assert deployed["passed"] and deployed["served"]["map50"] > 0
    server_log = (tiny_artifacts / "parity" / "server.log").read_text()
    assert "OpenVINO CPU" in server_log  # the served detector said what it runs on


def as_the_openvino_backend_loads(xml: Path, config) -> tuple[dict, dict]:
    """The model as Triton's OpenVINO backend (src/openvino.cc) prepares it, which the local wheel
    does not carry: a batch layout on every input, the batch fixed at max_batch_size, compiled with
    the config's parameters, tensors looked up by get_any_name(); then one padded batch of zeros.
    Returns ({name: port}, {output name: shape})."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    steps = ov.preprocess.PrePostProcessor(model)
    for port in model.inputs:
        steps.input(port.get_any_name()).tensor().set_layout(ov.Layout("N..."))
    model = steps.build()
    ov.set_batch(model, config.max_batch_size)
    properties = {k: v.string_value for k, v in config.parameters.items() if k in ("NUM_STREAMS",)}
    compiled = core.compile_model(model, "CPU", properties)
    ports = {port.get_any_name(): port for port in [*model.inputs, *model.outputs]}
    feed = {i.name: np.zeros((config.max_batch_size, *i.dims), np.uint8) for i in config.input}
    answer = compiled.create_infer_request().infer(feed)
    return ports, {port.get_any_name(): value.shape for port, value in answer.items()}


def test_the_openvino_target_hands_the_twin_to_the_images_openvino_backend(gated_twin, tiny_artifacts, tmp_path):
    """TARGET=openvino: the NGC image's OpenVINO backend (not in the local wheel: what runs here is
    the IR prepared as that backend prepares it, matched against the config's tensors)."""
    import openvino as ov

    from tools import triton_config as tc
    from tools.container import check_target
    from tools.repository import RepositoryRecord

    if not gated_twin["passed"]:
        pytest.fail("the tiny model's OpenVINO twin failed the gate's checks: nothing to serve")
    repo = tmp_path / "repo"
    built = make("repo", f"ARTIFACTS={tiny_artifacts}", f"REPO={repo}", "TARGET=openvino")
    assert "target openvino" in built.stdout and "resolves them on the CPU it runs on" in built.stdout
    record = check_target(repo)  # what `make image` / the entrypoint accept
    assert record.target == "openvino" and record.settings.runtime == "openvino"
    assert record.model_sha256 == ir_hash(OpenVinoModel.load(tiny_artifacts, GatedModel.load(tiny_artifacts)).xml)
    detector = tc.read_config(repo / "detector" / "config.pbtxt")
    assert detector.backend == "openvino" and detector.default_model_filename == "model.xml"
    assert not (repo / "detector" / "1" / "model.py").exists()  # the backend's own, no Python detector
    assert "padding smaller ones" in built.stdout  # the cost of the backend's fixed batch, said at build time
    ports, answered = as_the_openvino_backend_loads(repo / "detector" / "1" / "model.xml", detector)
    # every tensor the config names is one the backend finds, with the config's type and shape
    for tensor, element in ((detector.input[0], ov.Type.u8), *((o, ov.Type.f32) for o in detector.output)):
        assert tensor.name in ports, (tensor.name, list(ports))
        assert list(ports[tensor.name].get_shape()) == [detector.max_batch_size, *tensor.dims]
        assert ports[tensor.name].get_element_type() == element
    assert answered == {o.name: (detector.max_batch_size, *o.dims) for o in detector.output}
    refused = make("repo", f"ARTIFACTS={tiny_artifacts}", f"REPO={tmp_path / 'gpu'}", "TARGET=openvino", "DEVICE=gpu",
                   check=False)
    assert refused.returncode != 0 and "runs on the CPU" in refused.stderr and "Traceback" not in refused.stderr


def test_auto_serves_openvino_only_where_it_was_measured_faster(gated_twin, tiny_artifacts, tmp_path):
    """Both branches, by the record's measured speed-up as written and with it turned around."""
    from tools.repository import RepositoryRecord

    path = tiny_artifacts / OPENVINO_FILE
    saved = path.read_text()
    try:
        for p10 in (1.2, 0.8):
            record = json.loads(saved)
            path.write_text(json.dumps({**record, "speedup_p10": {k: p10 for k in record["speedup_p10"]}}))
            built = make("repo", f"ARTIFACTS={tiny_artifacts}", f"REPO={tmp_path / f'auto-{p10}'}", "RUNTIME=auto",
                         "SHADOW=0")
            runtime = RepositoryRecord.load(tmp_path / f"auto-{p10}").settings.runtime
            if p10 > 1 and record["passed"]:
                assert runtime == "openvino" and (tmp_path / f"auto-{p10}" / "detector" / "1" / "model.xml").exists()
            else:
                assert runtime == "onnxruntime" and "RUNTIME=auto serves on onnxruntime" in built.stdout
                assert (tmp_path / f"auto-{p10}" / "detector" / "1" / "model.onnx").exists()
    finally:
        path.write_text(saved)


def test_a_stale_twin_or_an_ungated_model_is_refused_in_one_readable_line(gated_twin, tiny_artifacts, tmp_path):
    path = tiny_artifacts / OPENVINO_FILE
    saved = path.read_text()
    try:
        path.write_text(json.dumps({**json.loads(saved), "gated_sha256": "0" * 64}))
        stale = make("repo", f"ARTIFACTS={tiny_artifacts}", f"REPO={tmp_path / 'stale'}", "RUNTIME=openvino",
                     check=False)
        assert stale.returncode != 0 and "twin of another model" in stale.stderr and "Traceback" not in stale.stderr
        fallback = make("repo", f"ARTIFACTS={tiny_artifacts}", f"REPO={tmp_path / 'fallback'}", "RUNTIME=auto",
                        "SHADOW=0")
        assert "twin of another model" in fallback.stdout
    finally:
        path.write_text(saved)
    ungated = make("repo", f"ARTIFACTS={tiny_artifacts}", f"REPO={tmp_path / 'ungated'}", "RUNTIME=openvino",
                   "STAGE=export", check=False)
    assert ungated.returncode != 0 and "gated model's OpenVINO twin only" in ungated.stderr
    assert "Traceback" not in ungated.stderr


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_openvino_detector_answers_good_frames_beside_a_corrupt_one(gated_twin, tiny_artifacts, tmp_path, protocol,
                                                                        val_images, photos):
    """Concurrent good requests sharing execute() calls with a corrupt frame, over both protocols: the
    bad one gets its readable refusal, the good ones the IR's own in-process detections, the server
    stays ready. No queue timeout: correctness on 2 busy cores, as the shared test repository (load
    shedding is test_loadtest's)."""
    from compress.errors import BadImageError
    from tests.conftest import TEST_CONF
    from tests.integration.test_malformed_inputs import beside_good_requests
    from tools.repository import RepositoryRecord
    from tools.server import TritonServer

    if not gated_twin["passed"]:
        pytest.fail("the tiny model's OpenVINO twin failed the gate's checks: nothing to serve")
    repo = tmp_path / "repo"
    built = subprocess.run([sys.executable, "-m", "tools.build_repo", "--artifacts", str(tiny_artifacts), "--repo",
                            str(repo), "--runtime", "openvino", "--conf-threshold", str(TEST_CONF), "--no-shadow",
                            "--queue-delay-us", "20000", "--queue-timeout-us", "0"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    local = RepositoryRecord.load(repo).in_process_detector()
    payloads = [p.read_bytes() for p in val_images[:3] + photos]
    good = [(payload, local.detect([payload])[0]) for payload in payloads]
    assert sum(len(expected) for _, expected in good) > 0  # detections to compare, not empty answers
    # the served copy (uint8 pixels scaled inside it) detects what the IR the gate measured does
    from compress.local_detector import LocalDetector
    from tests.integration.test_served_ensemble import assert_same_detections

    record = OpenVinoModel.load(tiny_artifacts, GatedModel.load(tiny_artifacts))
    gated_ir = LocalDetector(record.xml, conf_threshold=TEST_CONF, runtime="openvino", precision=record.precision)
    for payload, expected in good:
        assert_same_detections(expected, gated_ir.detect([payload])[0])
    with TritonServer(repo, log_path=tmp_path / "server.log") as server:
        outcome = beside_good_requests(server, protocol, lambda client: client.detect([b"\xff\xd8 not a jpeg"]), good)
    assert isinstance(outcome, BadImageError), repr(outcome)
