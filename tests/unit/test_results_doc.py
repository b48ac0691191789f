"""docs/results.md is gathered from the runs' own reports, never typed: provenance, excerpts, gaps."""

from __future__ import annotations

from tools.results import render


def test_results_gather_each_report_under_its_section_and_name_what_was_not_measured(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text(
        "# Compression report\n\nMachine: Test CPU, 2 cores.\n\n**Served: ReLU student**, +0.30 points\n\n"
        "## Budget table\n\n| budget | served |\n|---|---|\n| 1 | relu_1x |\n\n"
        "## Op profile\n\nConv 61% of the time\n")
    (tmp_path / "capacity").mkdir()
    (tmp_path / "capacity" / "capacity.md").write_text("# Capacity at 10 FPS\n\n| frames | streams held |\n| 1080p | 14 |\n")
    text = render(tmp_path)
    assert text.startswith("# Results") and "from commit " in text and "cores;" in text
    assert "| 1080p | 14 |" in text and "### Capacity at 10 FPS" in text  # the run's table, title demoted
    assert "**Served: ReLU student**" in text and "| 1 | relu_1x |" in text
    assert "Conv 61%" not in text  # only the named parts of the compression report
    missing = text.split("## Not measured in these artifacts", 1)[1]
    assert "`make bench-burst`" in missing and "`make capacity`" not in missing
