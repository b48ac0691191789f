"""docs/results.md is gathered from the runs' own reports, never typed; the README's figures are cut from it."""

from __future__ import annotations

import json
import re

import pytest

from compress.env import PROJECT_ROOT
from compress.errors import InputFileError
from tools.results import README_BEGIN, README_END, headline, render, update_readme

# A measured figure: a decimal, a ratio (2.3x) or a share (75%). Settings are written without
# them on the front page, so whatever matches here was measured and must come from results.md.
FIGURE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:x\b|%)|(?<![\w.])\d+\.\d+(?![\w.])")


def fake_artifacts(root):
    (root / "report").mkdir()
    (root / "report" / "report.md").write_text(
        "# Compression report\n\nMachine: Test CPU, 2 cores.\n\n**Served: ReLU student**, +0.30 points, 2.07x\n\n"
        "## Budget table\n\n| budget | served |\n|---|---|\n| 1 | relu_1x |\n\n"
        "## Op profile\n\nConv 61% of the time\n")
    (root / "capacity").mkdir()
    (root / "capacity" / "capacity.md").write_text(
        "# Capacity at 10 FPS per stream\n\n| frames | streams held |\n|---|---:|\n| 1080p | 14 |\n\nPer-step note.\n")
    (root / "plan").mkdir()
    (root / "plan" / "plan.md").write_text(
        "# Capacity plan: 500 cameras x 10 FPS on cpu nodes\n\n- demand: 500 x 10 = **5000 frames/s**\n"
        "- frames this plan assumes: **1080p (1920x1080)**\n- replicas = max(2, ceil(5000 / (90 x 0.7))) = **80**\n"
        "- HPA: min 80\n")
    (root / "tests").mkdir()
    (root / "tests" / "junit.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" '
        'skipped="2" tests="454" time="1290.0" timestamp="2026-01-01T11:00:00.000000"></testsuite></testsuites>')
    (root / "manifest.json").write_text(json.dumps({"stages": {
        "baseline": {"seconds": 720.0, "finished": "2026-01-01T10:00:00"},
        "search": {"seconds": 1320.0, "finished": "2026-01-01T10:30:00"}}}))


def test_results_gather_each_report_under_its_section_and_name_what_was_not_measured(tmp_path):
    fake_artifacts(tmp_path)
    text = render(tmp_path)
    assert text.startswith("# Results") and "from commit " in text and "cores;" in text
    assert "| 1080p | 14 |" in text and "### Capacity at 10 FPS" in text  # the run's table, title demoted
    assert "**Served: ReLU student**" in text and "| 1 | relu_1x |" in text
    assert "Conv 61%" not in text  # only the named parts of the compression report
    assert "| baseline | 12.0 |" in text and "**34.0 minutes**" in text  # stage times from the manifest
    assert "`make test`: 454 tests, 1 failed, 0 errors, 2 skipped, in **21.5 minutes**" in text
    missing = text.split("## Not measured in these artifacts", 1)[1]
    assert "`make bench-burst`" in missing and "`make capacity`" not in missing


def test_headline_is_cut_verbatim_from_the_results_and_fills_only_the_marked_block(tmp_path):
    fake_artifacts(tmp_path)
    text = render(tmp_path)
    block = headline(text)
    assert "**Served: ReLU student**, +0.30 points, 2.07x" in block and "| 1080p | 14 |" in block
    assert "**34.0 minutes**" in block and "**21.5 minutes**" in block and "Each section below" not in block
    assert "Capacity plan: 500 cameras x 10 FPS on cpu nodes:" in block and "**1080p (1920x1080)**" in block
    assert "= **80**" in block and "HPA" not in block
    assert all(line in text for line in block.splitlines() if line and not line.startswith(("Camera streams", "Capacity plan")))
    readme = f"# Title\n\nintro\n\n{README_BEGIN}\nold 9.9x\n{README_END}\n\n## After\n"
    updated = update_readme(readme, block)
    assert "old 9.9x" not in updated and updated.startswith("# Title\n\nintro\n\n") and updated.endswith("\n\n## After\n")
    assert update_readme(updated, block) == updated  # idempotent
    with pytest.raises(InputFileError, match="no <!-- results:begin -->"):
        update_readme("# Title without markers\n", block)


def test_every_figure_on_the_front_page_is_in_the_generated_results():
    """A measured number typed into README.md (or left there from an older run) fails here."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    results = (PROJECT_ROOT / "docs" / "results.md").read_text()
    figures = FIGURE.findall(readme)
    assert figures, "the README quotes no headline at all: run `make docs`"
    assert [f for f in figures if f not in results] == []


def test_the_figure_pattern_catches_ratios_shares_and_decimals_but_not_names():
    assert FIGURE.findall("2.303x at batch 8, 75% of it, 0.9271 mAP, 15 streams") == ["2.303x", "75%", "0.9271"]
    assert FIGURE.findall("YOLOv8n on 1080p frames, port 8003, MAX_MAP_DROP=3, opset 17, v1.31") == []
