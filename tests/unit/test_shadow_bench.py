"""bench-shadow's repository variants and its report (the load itself runs in `make bench-shadow`)."""

from __future__ import annotations

from pathlib import Path

from loadtest import shadow_bench
from tools import triton_config as tc
from tools.repository import RepositoryRecord



def _built(repo: Path, settings: tc.RepositorySettings) -> Path:
    """Configs, record and the shadow's files as the builder leaves them (the files' bytes do not matter here)."""
    for config in tc.all_configs(settings):
        tc.write_config(config, repo / config.name)
    (repo / tc.POSTPROCESS / "1").mkdir(parents=True)
    for name in ("shadow.py", "onnx_session.py", tc.SHADOW_REFERENCE_FILE):
        (repo / tc.POSTPROCESS / "1" / name).write_text("x")
    RepositoryRecord(repo, "int8", "local", repo / "model.onnx", True, "a", "b", settings).save()
    return repo


def _postprocess(repo: Path):
    return tc.read_config(repo / tc.POSTPROCESS / "config.pbtxt")


def test_a_rate_variant_changes_only_the_rate_and_the_off_variant_drops_the_shadow(tmp_path):
    repo = _built(tmp_path / "repo", tc.RepositorySettings(image_size=(128, 128), num_classes=4, shadow=True,
                                                                 shadow_rate=0.05))

    at_one_percent = shadow_bench.rebuilt(repo, tmp_path / "rate", shadow_rate=0.01)
    config = _postprocess(at_one_percent)
    assert config.parameters["shadow_rate"].string_value == "0.01"
    assert "PIXELS" in [i.name for i in config.input]
    assert (at_one_percent / tc.POSTPROCESS / "1" / tc.SHADOW_REFERENCE_FILE).exists()
    assert RepositoryRecord.load(at_one_percent).settings.shadow_rate == 0.01
    assert _postprocess(repo).parameters["shadow_rate"].string_value == "0.05"  # the original is untouched

    off = shadow_bench.without_shadow(repo, tmp_path / "off")
    assert "PIXELS" not in [i.name for i in _postprocess(off).input]
    assert "shadow_rate" not in _postprocess(off).parameters
    assert not (off / tc.POSTPROCESS / "1" / tc.SHADOW_REFERENCE_FILE).exists()
    assert RepositoryRecord.load(off).settings.shadow is False


def _run(p99: float, compared: int = 0) -> dict:
    return {"p99_ms": p99, "p50_ms": p99 / 3, "failed": 0, "compared": compared, "skipped_busy": 0}


def test_a_rates_p99_is_judged_against_the_spread_of_shadow_offs_rounds():
    runs = {"off": [_run(30), _run(40), _run(35)], "on": [_run(43), _run(45), _run(44, 60)],
            "rate 0.01": [_run(50), _run(26), _run(27)], "rate 0.2": [_run(45), _run(40), _run(50)]}
    verdicts = shadow_bench.p99_verdicts(runs, 0.05)
    assert verdicts["off_p99_range_ms"] == [30, 40] and verdicts["off_p99_median_ms"] == 35
    on, low, high = verdicts["rates"]["on"], verdicts["rates"]["rate 0.01"], verdicts["rates"]["rate 0.2"]
    assert (on["rate"], on["p99_median_ms"], on["within_noise"]) == (0.05, 44, True)  # 44 <= 40 x 1.1
    assert (low["rate"], low["p99_median_ms"], low["within_noise"]) == (0.01, 27, True)  # 27 >= 30 x 0.9
    assert (high["rate"], high["p99_median_ms"], high["within_noise"]) == (0.2, 45, False)
    assert verdicts["on_within_noise"] is True and on["compared"] == [0, 0, 60]
    runs["on"] = [_run(45)] * 3  # just beyond the margin
    assert shadow_bench.p99_verdicts(runs, 0.05)["on_within_noise"] is False


def test_the_report_shows_each_rates_p99_against_the_noise_of_shadow_off():
    side = {"streams": 10.0, "rounds": [10, 10, 10]}
    cost = {"capacity": {"1080p": {"on": side, "off": side, "ratio": 1.0, "ratio_range": [1.0, 1.0]}},
            "p99_streams": 8, "rate": 0.05, "rounds": {"on": [_run(60, 60)] * 3, "off": [_run(30), _run(33), _run(36)]},
            "rates": {"on": {"rate": 0.05, "p99_median_ms": 60.0, "p50_median_ms": 20.0, "compared": [60] * 3,
                             "within_noise": False},
                      "rate 0.01": {"rate": 0.01, "p99_median_ms": 34.0, "p50_median_ms": 11.0, "compared": [12] * 3,
                                    "within_noise": True}},
            "off_p99_range_ms": [30, 36], "on_p99_median_ms": 60.0, "off_p99_median_ms": 33.0,
            "on_within_noise": False, "failed_frames": {"on": 0, "off": 0, "rate 0.01": 0}}
    text = shadow_bench.to_markdown({"cost": cost})
    rows = [line for line in text.splitlines() if line.startswith("| 0.0") or line.startswith("| off")]
    assert rows == ["| off | 33.0 | 11 | - | - |", "| 0.01 | 34 | 11 | 12, 12, 12 | yes |",
                    "| 0.05 (built) | 60 | 20 | 60, 60, 60 | no |"]
