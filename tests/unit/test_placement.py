"""Where the load generator runs while capacity is measured: placements, pinning, and the records
that say which figure a plan used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from compress.errors import ToolkitError
from tools import capacity_plan
from tools import triton_config as tc
from tools.capacity_plan import capacity_for, capacity_table, measured_capacity
from tools.placement import client_side, default_placements, placement
from tools.process import ManagedProcess


def test_isolated_gives_the_load_generator_the_last_core_and_the_server_the_rest():
    chosen = placement("isolated", cpus=(0, 1, 2, 3))
    assert chosen.server_cpus == (0, 1, 2) and chosen.client_cpus == (3,)
    assert placement("shared", cpus=(0, 1)).server_cpus == placement("shared", cpus=(0, 1)).client_cpus == (0, 1)
    assert default_placements((0, 1)) == ["shared", "isolated"] and default_placements((0,)) == ["shared"]
    with pytest.raises(ToolkitError, match="more than 1 core"):
        placement("isolated", cpus=(0,))
    with pytest.raises(ToolkitError, match="unknown placement"):
        placement("elsewhere")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning apart needs two cores")
def test_a_managed_process_runs_on_its_cores_and_the_driver_gets_its_own_back(tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    probe = ManagedProcess("probe", [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                           log_path=tmp_path / "probe.log", cpus=(cores[0],)).start()
    probe.process.wait(timeout=30)
    assert (tmp_path / "probe.log").read_text().strip() == str([cores[0]])
    chosen = placement("isolated")
    before = os.sched_getaffinity(0)
    with client_side(chosen):
        # children started by the driver inherit the client's cores
        seen = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert seen == str(list(chosen.client_cpus))
    assert os.sched_getaffinity(0) == before


def _entry(name: str, width: int, height: int, streams: int, cpus: int) -> dict:
    probe = {"compute_ms_per_frame": {"preprocess": 6.0, "detector": 7.0, "postprocess": 1.0}, "bottleneck": "detector",
             "client_cpu_ms_per_frame": 2.0}
    return {"capacity_streams": streams, "fps": 10.0, "slo_ms": 100.0, "machine": {"cpus": cpus},
            "probes": {str(streams): probe},
            "frame_set": {"name": name, "width": width, "height": height, "mean_kib": 100.0}}


def _record(shared: dict, isolated: dict | None) -> dict:
    by_placement = {"shared": {"name": "shared", "server_cpus": [0, 1], "client_cpus": [0, 1],
                               "by_frames": {k: {**v, "placement": {"name": "shared"}} for k, v in shared.items()}}}
    if isolated:
        by_placement["isolated"] = {"name": "isolated", "server_cpus": [0], "client_cpus": [1],
                                    "by_frames": {k: {**v, "placement": {"name": "isolated"}} for k, v in isolated.items()}}
    return {"fps": 10.0, "slo_ms": 100.0, "by_placement": by_placement, "by_frames": by_placement["shared"]["by_frames"]}


def test_capacity_is_read_at_the_placement_asked_and_the_plan_prefers_isolated(tmp_path):
    (tmp_path / "capacity").mkdir()
    record = _record({"dataset": _entry("dataset", 256, 256, 24, 2), "1080p": _entry("1080p", 1920, 1080, 12, 2)},
                     {"dataset": _entry("dataset", 256, 256, 13, 1), "1080p": _entry("1080p", 1920, 1080, 10, 1)})
    (tmp_path / "capacity" / "capacity.json").write_text(json.dumps(record))
    assert capacity_for(tmp_path, "1080p")["capacity_streams"] == 12  # shared unless asked: what soak/rollout run
    assert capacity_for(tmp_path, "1080p", "isolated")["capacity_streams"] == 10
    chosen = measured_capacity(tmp_path)
    assert chosen["capacity_streams"] == 10 and chosen["placement"]["name"] == "isolated"
    assert measured_capacity(tmp_path, placement="shared")["capacity_streams"] == 12
    rows = capacity_table(record)
    assert len(rows) == 2 + 4 and any("isolated (cores 1)" in r and "| 10 |" in r and "77%" in r for r in rows), rows
    # only shared measured (a 1-core machine): the plan uses it and says so
    (tmp_path / "capacity" / "capacity.json").write_text(json.dumps(_record({"1080p": _entry("1080p", 1920, 1080, 12, 2)},
                                                                            None)))
    assert measured_capacity(tmp_path)["placement"]["name"] == "shared"
    with pytest.raises(Exception, match="placement isolated"):
        measured_capacity(tmp_path, placement="isolated")


def test_rounds_give_the_lower_median_a_round_measured_and_the_table_every_round():
    from loadtest.capacity import combine_rounds

    rounds = [_entry("1080p", 1920, 1080, streams, 1) for streams in (9, 7, 8, 10)]
    combined = combine_rounds(rounds)
    # the lower median of 7, 8, 9, 10 is 8: a count a round held, with that round's probes (the per-step costs)
    assert combined["capacity_streams"] == 8 and combined["probes"] == rounds[2]["probes"]
    assert combined["rounds"] == [9, 7, 8, 10] and combined["round_probes"] == [r["probes"] for r in rounds]
    assert combined["chosen_round"] == 3
    assert combine_rounds(rounds[:1]) == rounds[0]  # one round: the record as measured
    dataset = combine_rounds([_entry("dataset", 256, 256, streams, 1) for streams in (10, 10, 11, 12)])
    rows = capacity_table(_record({"dataset": dataset, "1080p": combined}, None))
    # the ratios within each round (the sizes ran side by side): 9/10, 7/10, 8/11, 10/12; their median
    # 78% (not the medians' ratio 8/10), their range 70-90%
    assert any(r.startswith("| 1080p |") and "| 8 (9, 7, 8, 10) | 78% (70%-90%) |" in r for r in rows), rows
    assert any(r.startswith("| dataset |") and "| 10 (10, 10, 11, 12) | 100% (100%-100%) |" in r for r in rows), rows


def test_the_plan_says_which_placement_it_used_and_keeps_the_conservative_line(tmp_path):
    (tmp_path / "capacity").mkdir()
    record = _record({"1080p": _entry("1080p", 1920, 1080, 12, 2)}, {"1080p": _entry("1080p", 1920, 1080, 10, 1)})
    (tmp_path / "capacity" / "capacity.json").write_text(json.dumps(record))
    settings = tc.RepositorySettings(image_size=(256, 256), num_classes=3)
    capacity = measured_capacity(tmp_path)
    planned = capacity_plan.plan(500, 10.0, capacity, None, settings, "cpu")
    capacity_plan.with_conservative_line(planned, tmp_path, capacity, None, settings)
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "plan.json").write_text(json.dumps(planned))
    (tmp_path / "plan" / "plan.md").write_text(capacity_plan.to_markdown(planned))
    result = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert result["inputs"]["placement"] == "isolated"
    assert result["resources"]["cpu"] == "1" and result["replicas"] == 72  # ceil(5000 / (100 * 0.7))
    assert result["conservative"] == {"placement": "shared", "streams": 12, "cpus": "2", "replicas": 60, "cores": 120.0}
    text = (tmp_path / "plan" / "plan.md").read_text()
    assert "load generator isolated" in text and "60 replicas, 120 cores" in text
