"""Render docs/results.md from the artifacts the runs wrote (`make docs`, the end of `make`).

    python -m tools.results --artifacts artifacts --out docs/results.md --readme README.md

Every figure in the file comes from a run's own report (each bench writes its markdown from its
JSON) or from the pipeline's manifest (stage times); this only gathers them, stamps the commit
and machine of the rendering and when each report was written (a report older than the commit
came from the code before it), and names the command for whatever was not measured. With
`--readme`, the block between README's results markers is replaced by a headline made from the
same records by the same functions the reports print with, so every figure on the front page is
one in results.md. Figures are never typed in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
from pathlib import Path

from compress.env import PROJECT_ROOT, describe_machine
from compress.errors import InputFileError, cli_entry
from compress.records import read_json

# (section title, report written by the run, the command that writes it)
SECTIONS = (
    ("Compression: what the accuracy budget serves", "report/report.md", "make"),
    ("Accuracy parity gate", "parity/parity.md", "make parity"),
    ("Served mAP on the dataset's val images", "parity/deployed.md", "make verify"),
    ("Served mAP on 720p camera frames", "parity/deployed_720p.md", "make verify FRAMES=720p"),
    ("Served mAP on 1080p camera frames", "parity/deployed_1080p.md", "make verify FRAMES=1080p"),
    ("Against Ultralytics' OpenVINO INT8 export", "peers/peers.md", "make bench-peers"),
    ("The served model on OpenVINO", "openvino/openvino.md", "make openvino"),
    ("Per-step costs at camera sizes", "bench-steps/steps.md", "make bench-steps"),
    ("Capacity per frame size", "capacity/capacity.md", "make capacity"),
    ("Bursts", "burst/burst.md", "make bench-burst"),
    ("Rolling restarts behind a load balancer", "rollout/rollout.md", "make rollout-test"),
    ("Capacity plan", "plan/plan.md", "make plan-capacity"),
    ("Camera streams", "loadtest/summary.md", "make loadtest"),
    ("Camera streams, frames shrunk by the cameras", "loadtest-resized/summary.md", "make loadtest RESIZE_TO_MODEL=1"),
    ("Serving overhead", "bench-serving/serving.md", "make bench-serving"),
    ("Soak", "soak/soak.md", "make soak"),
    ("Bad frames and decompression bombs", "robustness/summary.md", "make bench-robustness"),
    ("Shadow parity on live traffic: cost and alarms", "shadow/shadow.md", "make bench-shadow"),
)
RENDERED_PAGES = ("docs/results.md", "README.md")
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"
# Sections of report.md worth quoting; the rest (op profiles, per-layer sensitivity) stays in it
REPORT_PARTS = ("Budget table", "Measured models", "Goals (served model)")


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        # the pages this command writes itself do not make the checkout dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":!{page}" for page in RENDERED_PAGES)], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}{' with uncommitted changes' if dirty else ''}"


def demote(markdown: str, levels: int = 2) -> str:
    """Headings two levels down, so a report's title sits under its section."""
    return re.sub(r"^(#+) ", lambda m: "#" * min(len(m.group(1)) + levels, 6) + " ", markdown, flags=re.M)


def report_excerpt(markdown: str) -> str:
    """The served line, the machine and the named parts of report.md."""
    blocks = re.split(r"^## ", markdown, flags=re.M)
    head = [line for line in blocks[0].splitlines() if line.startswith(("Machine:", "**Served"))]
    kept = ["## " + block.strip() for block in blocks[1:] if block.split("\n", 1)[0].strip() in REPORT_PARTS]
    return "\n\n".join(["\n\n".join(head), *kept])


def pipeline_total(stages: dict) -> str:
    return f"Pipeline stages in all: **{sum(r.get('seconds', 0) for r in stages.values()) / 60:.1f} minutes**."


def _stages(artifacts: Path) -> dict:
    path = artifacts / "manifest.json"
    return read_json(path, "pipeline manifest", "run `make`").get("stages", {}) if path.exists() else {}


def stage_times(artifacts: Path) -> str | None:
    """The pipeline's stage times from the manifest: how long each stage took when it last ran."""
    stages = _stages(artifacts)
    if not stages:
        return None
    rows = [f"| {name} | {record.get('seconds', 0) / 60:.1f} | {record.get('finished', '')} |"
            for name, record in stages.items()]
    return "\n".join([
        "Each stage's time when it last ran (a stage reused by a later `make` keeps its earlier time; "
        "the manifest does not record what else ran on the machine meanwhile).", "",
        "| stage | minutes | finished |", "|---|---:|---|", *rows, "", pipeline_total(stages)])


def test_run(artifacts: Path) -> str | None:
    """The last full `make test`, from the JUnit record pytest wrote."""
    import xml.etree.ElementTree as ElementTree

    path = artifacts / "tests" / "junit.xml"
    if not path.exists():
        return None
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return (f"`make test`: {counts['tests']} tests, {counts['failures']} failed, {counts['errors']} errors, "
            f"{counts['skipped']} skipped, in **{float(suite.get('time', 0)) / 60:.1f} minutes** "
            f"(started {suite.get('timestamp', 'unknown')[:16]}).")


def sections(artifacts: Path) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str]]]:
    """([(title, command, where and when written, text)], [(title, command) not measured])."""
    found, missing = [], []
    times = stage_times(artifacts)
    if times:
        found.append(("Pipeline stage times", "make", f"`{artifacts / 'manifest.json'}`", times))
    tests = test_run(artifacts)
    if tests:
        found.append(("Test suite", "make test", f"`{artifacts / 'tests' / 'junit.xml'}`", tests))
    for title, relative, command in SECTIONS:
        path = artifacts / relative
        if not path.exists():
            missing.append((title, command))
            continue
        written = dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        text = path.read_text()
        if relative == "report/report.md":
            text = report_excerpt(text)
        found.append((title, command, f"written {written} (`{path}`)", demote(text).strip()))
    return found, missing


def headline(artifacts: Path, stamp: str) -> str:
    """The front page's lines, from the runs' own records by the functions their reports print
    with (so every line is also in results.md): the served model, the capacity per frame size,
    the capacity plan and the pipeline's and the tests' time. `stamp`: results.md's first line."""
    from compress.report import served_line
    from tools.capacity_plan import capacity_table, frames_line, plan_title, replicas_line

    parts = [stamp]
    report = artifacts / "report" / "report.json"
    if report.exists():
        parts.append(served_line(read_json(report, "compression report", "run `make`")))
    capacity = artifacts / "capacity" / "capacity.json"
    if capacity.exists():
        result = read_json(capacity, "capacity measurement", "run `make capacity`")
        parts += [f"Camera streams one server holds at {result['fps']:g} FPS within the latency SLO, per frame size:",
                  "\n".join(capacity_table(result))]
    plan = artifacts / "plan" / "plan.json"
    if plan.exists():
        result = read_json(plan, "capacity plan", "run `make plan-capacity`")
        parts.append("\n".join([f"{plan_title(result)}:", "", frames_line(result), replicas_line(result)]))
    stages = _stages(artifacts)
    if stages:
        parts.append(pipeline_total(stages))
    tests = test_run(artifacts)
    if tests:
        parts.append(tests)
    return "\n\n".join(parts)


def update_readme(readme: str, block: str) -> str:
    if README_BEGIN not in readme or README_END not in readme:
        raise InputFileError(f"the README has no {README_BEGIN} ... {README_END} block to fill",
                             hint="put the two markers where the headline results belong")
    head, rest = readme.split(README_BEGIN, 1)
    return f"{head}{README_BEGIN}\n{block}\n{README_END}{rest.split(README_END, 1)[1]}"


def generated_line() -> str:
    """When, from which commit and on which machine the results were gathered."""
    machine = describe_machine()
    return (f"Generated by `make docs` on {dt.date.today().isoformat()} from commit {commit()}, on "
            f"{machine['cpu']} ({machine['cores']} cores; {', '.join(machine['vector_extensions']) or 'no vector extensions found'}; "
            f"ONNX Runtime {machine['onnxruntime']}).")


def render(artifacts: Path, stamp: str | None = None) -> str:
    lines = ["# Results", "", f"{stamp or generated_line()} Each section below is the report its run wrote, "
             "with the time it was written; speed figures hold for that machine only.", ""]
    found, missing = sections(artifacts)
    for title, command, where, text in found:
        lines += [f"## {title}", "", f"`{command}`, {where}.", "", text, ""]
    if missing:
        lines += ["## Not measured in these artifacts", "", *[f"- {title}: `{command}`" for title, command in missing], ""]
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--readme", type=Path, help="also fill this README's results block with the headline")
    args = parser.parse_args(argv)
    if args.readme and not args.readme.exists():
        raise InputFileError(f"{args.readme} does not exist")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    stamp = generated_line()
    text = render(args.artifacts, stamp)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    if args.readme:
        args.readme.write_text(update_readme(args.readme.read_text(), headline(args.artifacts, stamp)))
        print(f"updated the results block of {args.readme}")


if __name__ == "__main__":
    main()
