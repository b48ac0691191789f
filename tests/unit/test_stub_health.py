"""The stub check behind the launcher's readiness and the Kubernetes probes, on real processes
named as Triton's Python stubs are (no server needed), and the watch's give-up rule."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tools.stub_health import STUB_BINARY, instance_names, live_stubs, missing_stubs


def test_instances_are_named_as_triton_names_them():
    config = {"instance_group": [{"count": 2, "kind": "KIND_CPU"}, {"count": 1}]}
    assert instance_names("detector", config) == ["detector_0_0", "detector_0_1", "detector_1_0"]
    assert instance_names("postprocess", {}) == ["postprocess_0_0"]  # no group: one instance


def test_missing_stubs_name_the_models_and_their_instances():
    expected = {"preprocess": ["preprocess_0_0"], "detector": ["detector_0_0", "detector_0_1"]}
    assert missing_stubs(expected, {"preprocess_0_0", "detector_0_0", "detector_0_1"}) == {}
    assert missing_stubs(expected, {"preprocess_0_0", "detector_0_0"}) == {"detector": ["detector_0_1"]}


def fake_stub(model_file, instance: str) -> subprocess.Popen:
    """A process whose command line reads like a stub's: <stub binary> <model.py> ... <instance> DEFAULT."""
    model_file.parent.mkdir(parents=True, exist_ok=True)
    model_file.write_text("import time\ntime.sleep(60)\n")
    return subprocess.Popen(["bash", "-c", f'exec -a "/opt/backends/python/{STUB_BINARY}" "{sys.executable}" '
                                           f'"{model_file}" shm 1048576 "{instance}" DEFAULT'])


def test_live_stubs_are_read_from_the_process_table(tmp_path):
    repo, other = tmp_path / "repo", tmp_path / "other"
    mine = fake_stub(repo / "preprocess" / "1" / "model.py", "preprocess_0_0")
    theirs = fake_stub(other / "preprocess" / "1" / "model.py", "postprocess_0_0")
    try:
        deadline = time.monotonic() + 10
        while "preprocess_0_0" not in live_stubs(repository=str(repo)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_stubs(repository=str(repo)) == {"preprocess_0_0"}  # another server's stubs do not count
        assert {"preprocess_0_0", "postprocess_0_0"} <= live_stubs()
        mine.kill()
        mine.wait()  # reaped; a zombie would not count either
        assert live_stubs(repository=str(repo)) == set()
    finally:
        for process in (mine, theirs):
            process.kill()
            process.wait()


class FakeServer:
    """A server whose stub of one model is always found dead, and whose reloads are counted."""

    process = None

    def __init__(self):
        self.reloads = []

    def reload(self, model):
        self.reloads.append(model)


def test_a_step_that_keeps_dying_is_given_up_after_its_heals():
    from tools.health import HealSettings, StubWatch

    now = [0.0]
    said = []
    watch = StubWatch(FakeServer(), settings=HealSettings(max_heals=2, window_s=60), say=said.append,
                      clock=lambda: now[0])
    watch.expected = {"preprocess": ["preprocess_0_0"]}
    for step in range(2):  # two deaths within the window: healed twice
        now[0] += 10
        watch.heal()
    assert watch.server.reloads == ["preprocess", "preprocess"] and watch.alive()
    now[0] += 10
    watch.heal()  # the third within 60 s: given up
    assert not watch.alive() and not watch.healthy() and len(watch.server.reloads) == 2
    assert "preprocess died 3 times within 60 s" in said[-1]
    later = StubWatch(FakeServer(), settings=HealSettings(max_heals=2, window_s=60), say=said.append,
                      clock=lambda: now[0])
    later.expected = {"preprocess": ["preprocess_0_0"]}
    for step in range(4):  # deaths a minute apart: every one healed
        now[0] += 61
        later.heal()
    assert later.alive() and len(later.server.reloads) == 4
