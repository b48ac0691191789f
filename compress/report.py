"""The report: every candidate the search measured, the accuracy/latency front, and the served choice.

Latencies of all rows come from one side-by-side run (compress.benchmark); mAP of every ONNX
comes from the same evaluator the served ensemble uses (compress.evaluate). Speed is measured
against the FP32 baseline; accuracy against the fair reference (the equal-budget baseline: the
unpruned model fine-tuned for as many extra epochs as the students got, unless those epochs made
it worse), so that extra training is not counted as a compression gain.

The serving decision is made here once (`compress.budget.choose_served`) and written into
report.json's `served`; the parity gate, the plan stage and `make repo` read it from there
(`compress.records.Report`). Candidates the parity gate refused are not served; the float-kept
variants it made instead are measured here like every other row (compress.records.GateVerdicts).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from compress.benchmark import BATCH_SIZES, ROUNDS, competing_load, measure_in_subprocess, speedup, verdict
from compress.budget import choose_served, fits, points_below
from compress.env import describe_machine, machine_line
from compress.onnx_session import execution_providers
from compress.records import GateVerdicts, SearchRecord, read_json, write_json
from compress.plotting import saved_figure
from compress.profile import plot as profile_plot
from compress.profile import profile_in_subprocess
from compress.profile import to_markdown as profile_markdown

# Speed goals (x faster than the FP32 baseline at batch 1 / 8) for a budget of at least this many
# points: what the accuracy budget is expected to buy on the default data.
SPEED_GOALS = {1.0: (2.0, 2.4), 3.0: (3.0, 3.5)}
# The budget table: what each of these budgets would serve among the measured candidates.
TABLE_BUDGETS = (0.5, 1.0, 2.0, 3.0, 5.0)
# The extra epochs may add this much to the unpruned baseline (or the budget, if larger) before the
# reference counts as still learning: then a drop measures training budget, not compression.
CONVERGED_BASELINE_POINTS = 2.0
# A reference below this mAP50-95 is too weak for its compression figures to mean much.
WEAK_REFERENCE_MAP = 0.25


def drop_points(reference: dict, row: dict) -> float:
    return points_below(reference["map50_95"], row["map50_95"])


def pareto_front(rows: list[dict], latency_key: str = "bs1_ms") -> list[dict]:
    """Rows no other row beats on both latency (lower) and mAP50-95 (higher)."""
    return [r for r in rows if not any(o is not r and o[latency_key] <= r[latency_key] and o["map50_95"] >= r["map50_95"]
                                       and (o[latency_key] < r[latency_key] or o["map50_95"] > r["map50_95"])
                                       for o in rows)]


def _speed_goal(budget: float) -> tuple[float, float] | None:
    fitting = [b for b in SPEED_GOALS if b <= budget]
    return SPEED_GOALS[max(fitting)] if fitting else None


def _candidates(ctx, search: SearchRecord, verdicts: GateVerdicts) -> dict[str, tuple[dict, dict[str, Path]]]:
    """{name: (metrics, files)} of the search's candidates and of the float-kept variants the
    parity gate made."""
    from compress.candidates import CandidateStore

    found = {name: (c.metrics, c.files) for name, c in search.candidates.items()}
    store = CandidateStore(ctx, search.reference)
    for name in verdicts.variants:
        record = store.variant(name)
        # a variant of a candidate this search no longer has (other settings since) is not measured
        if record is not None and record.metrics.get("base") in found:
            found[name] = (record.metrics, record.files())
    return found


def collect(ctx) -> dict:
    manifest = ctx.manifest
    imgsz = ctx.imgsz()
    search = SearchRecord.load(manifest)
    reference_info = search.reference
    verdicts = GateVerdicts.load(ctx.artifacts)
    candidates = _candidates(ctx, search, verdicts)
    # rows: (label, onnx, weights, precision, candidate name or None, twin key)
    wanted = {"baseline": ("baseline FP32", manifest.output("export", "onnx"), manifest.output("baseline", "weights"),
                           "fp32", None, None),
              "equal_budget": ("baseline FP32, +extra epochs (equal budget)", manifest.output("finetune", "onnx"),
                               manifest.output("finetune", "weights"), "fp32", None, None)}
    reference_key = reference_info.row_key
    for name, (info, files) in candidates.items():
        # a student, or the reference's INT8 at a smaller input: an FP32 twin of its own
        own_twin = info["trained"] or info.get("imgsz", imgsz) != imgsz
        if own_twin and "mixed_precision" not in info:
            twin_label = info["label"] if info["trained"] else f"Unpruned reference, {info['imgsz']}x{info['imgsz']} input"
            wanted[f"{name}:fp32"] = (f"{twin_label}, FP32", files["fp32"], files["weights"], "fp32", name, None)
        base = info.get("base", name)  # a float-kept variant shares its base's FP32 twin
        twin = f"{base}:fp32" if own_twin else reference_key
        label = f"{info['label']}, INT8" if info["trained"] else info["label"]  # already says INT8
        wanted[f"{name}:int8"] = (label, files["int8"], files["weights"], "int8", name, twin)
    threads = ctx.latency_threads()
    print(f"    measuring latency of {len(wanted)} models side by side ({threads} threads)", flush=True)
    with competing_load() as load:  # (each fed at its own input size: the files say which)
        latency = measure_in_subprocess({key: row[1] for key, row in wanted.items()}, (imgsz, imgsz), threads=threads)
    scores = reference_info.scores
    rows, by_key = [], {}
    spread_keys = {f"bs{b}" for b in BATCH_SIZES} | {f"bs{b}_rounds" for b in BATCH_SIZES}
    for key, (label, path, weights, precision, name, twin) in wanted.items():
        info = candidates[name][0] if name is not None else {}
        if name is None:
            accuracy = scores["export" if key == "baseline" else "finetune"]
            size = _torch_numbers(weights, imgsz)
        else:
            accuracy = info[f"{precision}_map"]
            size = {"params": info["params"], "gmacs": info["gmacs"]}
        row = {"key": key, "model": label, "precision": precision, "candidate": name, "twin": twin,
               "imgsz": info.get("imgsz", imgsz),
               "onnx": str(path.relative_to(ctx.artifacts)), "weights": str(weights.relative_to(ctx.artifacts)),
               "params": size["params"], "gmacs": size["gmacs"], "file_mb": round(path.stat().st_size / 1e6, 3),
               **{k: v for k, v in latency[key].items() if k not in spread_keys},
               **{f"bs{b}_median_ms": latency[key][f"bs{b}"]["median"] for b in BATCH_SIZES},
               **{f"bs{b}_iqr_ms": [latency[key][f"bs{b}"]["p25"], latency[key][f"bs{b}"]["p75"]] for b in BATCH_SIZES},
               "map50": accuracy["map50"], "map50_95": accuracy["map50_95"]}
        if name is not None:
            row["quantization"] = info["quantization"] if precision == "int8" else None
            row["mixed_precision"] = info.get("mixed_precision") if precision == "int8" else None
        rows.append(row)
        by_key[key] = row
    base = by_key["baseline"]
    reference = by_key[reference_key]
    servable = [r for r in rows if r["precision"] == "int8" or r["candidate"] is None]
    twins = {r["key"]: by_key[r["twin"]] for r in rows if r["twin"]}
    refused = verdicts.refused_keys({name: files["int8"] for name, (_, files) in candidates.items()})
    excluded = frozenset(f"{name}:int8" for name in refused)
    budget, allow = ctx.profile.max_map_drop, ctx.profile.allow_over_budget
    served, rule = choose_served(servable, reference["map50_95"], budget, allow, twins, excluded)
    if refused:
        rule += f" (the parity gate refused {', '.join(sorted(refused))})"
    front = pareto_front(rows)
    for row in rows:
        row["pareto"] = row in front
        row["served"] = row is served
        row["drop_points"] = drop_points(reference, row)
        row["refused_by_gate"] = row["key"] in excluded
    ratios = {f"speedup_bs{b}": speedup(latency, "baseline", served["key"], b) for b in BATCH_SIZES}
    gain = reference_info.extra_epochs_gain_points()
    weak = _weak_reference(reference, gain, budget)
    goal = _speed_goal(budget)
    measured = {"speedup_bs1": ratios["speedup_bs1"]["estimate"], "speedup_bs8": ratios["speedup_bs8"]["estimate"],
                "map_drop_points": drop_points(reference, served),
                "size_ratio": round(served["file_mb"] / base["file_mb"], 3),
                "macs_reduction": round(base["gmacs"] / served["gmacs"], 3)}
    met = {"map_drop_points": fits(measured["map_drop_points"], budget)}
    wanted_targets = {"map_drop_points": budget}
    if goal:
        wanted_targets.update(speedup_bs1=goal[0], speedup_bs8=goal[1])
        for key, target in (("speedup_bs1", goal[0]), ("speedup_bs8", goal[1])):
            met[key] = verdict(ratios[key], target) == "met"
    twin = by_key.get(served["twin"]) if served["twin"] else served
    return {
        "image_size": imgsz, "threads": threads, "providers": execution_providers(), "rows": rows, "machine": describe_machine(), "machine_during_latency": load,
        "served": {"name": served["candidate"] or served["key"], "key": served["key"], "model": served["model"],
                   "precision": served["precision"], "imgsz": served["imgsz"], "onnx": served["onnx"],
                   "fp32_onnx": twin["onnx"],
                   "weights": served["weights"], "quantization": served.get("quantization"),
                   "mixed_precision": served.get("mixed_precision"), "rule": rule,
                   "budget_points": budget, "allow_over_budget": allow, "drop_points": measured["map_drop_points"],
                   "within_budget": fits(measured["map_drop_points"], budget)},
        "targets": {"wanted": wanted_targets, "measured": measured, "met": met, "all_met": all(met.values()),
                    "speedup_spread": {key: {**ratio, **({"verdict": verdict(ratio, wanted_targets[key])}
                                                         if key in wanted_targets else {})}
                                       for key, ratio in ratios.items()},
                    "speedup_rounds": {f"bs{b}": ROUNDS[b] for b in BATCH_SIZES},
                    "accuracy_reference": reference["model"],
                    "map_drop_vs_unfair_baseline_points": drop_points(base, served),
                    "baseline_gain_from_extra_epochs_points": gain},
        "weak_reference": weak,
        "budget_table": budget_table(servable, reference, twins, latency, weak, excluded),
        "search": {k: search.metrics[k] for k in ("budget_points", "seconds_limit", "seconds_spent", "probes", "log")},
        "baseline_ultralytics_val": {k: manifest.get("baseline").metrics.get(k) for k in ("map50", "map50_95")},
        "plan": {"note": "TensorRT plans are built from the served model by the plan stage (`make plan`)"},
    }


def _weak_reference(reference: dict, gain_points: float, budget: float) -> str | None:
    """Why the reference's figures measure training rather than compression, or None."""
    if gain_points > max(budget, CONVERGED_BASELINE_POINTS):
        return (f"the reference was still learning: the extra epochs added {gain_points} points to the unpruned "
                f"model (more than {max(budget, CONVERGED_BASELINE_POINTS):g}), so drops measure training budget as much as "
                "compression; train the baseline longer (EPOCHS=) or bring converged weights (WEIGHTS=)")
    if reference["map50_95"] < WEAK_REFERENCE_MAP:
        return (f"the reference scores mAP50-95 {reference['map50_95']:.3f} (below {WEAK_REFERENCE_MAP}): too weak "
                "for compression figures to mean much; train longer (EPOCHS=), bring trained weights (WEIGHTS=) or "
                "more labelled data")
    return None


def budget_table(servable: list[dict], reference: dict, twins: dict, latency: dict, weak: str | None,
                 excluded: frozenset[str] = frozenset()) -> list[dict]:
    """For each budget in TABLE_BUDGETS: what the rule would serve among the measured candidates."""
    table = []
    for budget in TABLE_BUDGETS:
        served, _ = choose_served(servable, reference["map50_95"], budget, False, twins, excluded)
        table.append({"budget_points": budget, "model": served["model"], "drop_points": drop_points(reference, served),
                      **{f"speedup_bs{b}": speedup(latency, "baseline", served["key"], b)["estimate"]
                         for b in BATCH_SIZES},
                      "file_mb": served["file_mb"], "imgsz": served["imgsz"], "measures_training": weak is not None})
    return table


def _torch_numbers(weights: Path, imgsz: int) -> dict:
    from compress import yolo

    return yolo.describe(yolo.load(weights), imgsz)


def served_line(report: dict) -> str:
    """The report's headline: what is served, its accuracy against the budget, its speed-ups."""
    served, measured = report["served"], report["targets"]["measured"]
    return (f"**Served: {served['model']}**, {served['drop_points']:+.2f} points of mAP50-95 against the reference "
            f"(budget {served['budget_points']:g}), {measured['speedup_bs1']}x / {measured['speedup_bs8']}x "
            f"faster than the FP32 baseline at batch 1 / 8. Why: {served['rule']}.")


def to_markdown(report: dict) -> str:
    m, served, t = report["machine"], report["served"], report["targets"]
    lines = [
        f"# Compression report (trained at {report['image_size']}x{report['image_size']}, "
        f"ONNX Runtime {m['onnxruntime']} on "
        f"{', '.join(p.removesuffix('ExecutionProvider') for p in report.get('providers') or ['CPUExecutionProvider'])}, "
        f"{report['threads']} threads)", "",
        f"{machine_line(m)} Speed-ups depend "
        "on the CPU: compare them only with figures from the same machine.", "",
        served_line(report),
    ]
    if report.get("weak_reference"):
        lines += ["", f"**Weak reference**: {report['weak_reference']}."]
    lines += ["", "## Budget table", "",
              "What each accuracy budget would serve among the candidates measured for this model and data (`make MAX_MAP_DROP=<points>`"
              " searches for that budget and may train deeper candidates)"
              + (": **these figures measure training, not compression** (weak reference)" if report.get("weak_reference")
                 else "") + ".", "",
              "| budget (points) | served | input | drop (points) | speed-up bs1 | speed-up bs8 | file MB |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for row in report["budget_table"]:
        size = row.get("imgsz", report["image_size"])
        lines.append(f"| {row['budget_points']:g} | {row['model']} | {size}x{size} | {row['drop_points']:+.2f} | "
                     f"{row['speedup_bs1']}x | {row['speedup_bs8']}x | {row['file_mb']:.2f} |")
    lines += ["", "## Measured models", "",
              "Latency: the fastest decile of the interleaved rounds, the median in brackets; speed-ups are ratios of "
              "fastest deciles with a bootstrap interval (p10-p90).", "",
              "| model | params | GMACs | file MB | bs1 ms (median) | bs8 ms (median) | mAP50 | mAP50-95 | drop | front |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        mark = "**served**" if r.get("served") else ("refused by the parity gate" if r.get("refused_by_gate")
                                                     else ("yes" if r.get("pareto") else ""))
        lines.append(f"| {r['model']} | {r['params']:,} | {r['gmacs']:.3f} | {r['file_mb']:.2f} | "
                     f"{r['bs1_ms']:.2f} ({r['bs1_median_ms']:.2f}) | {r['bs8_ms']:.2f} ({r['bs8_median_ms']:.2f}) | "
                     f"{r['map50']:.4f} | {r['map50_95']:.4f} | {r['drop_points']:+.2f} | {mark} |")
    search = report["search"]
    lines += ["", f"## The search (budget {search['budget_points']:g} points, {search['seconds_spent'] / 60:.1f} of "
                  f"{search['seconds_limit'] / 60:g} minutes)", "",
              "Every candidate's INT8 architecture was timed before training; only those faster than the fastest one "
              "known to fit were trained, bisecting the pruning depth per activation.", "",
              "| # | candidate | architecture bs1 ms | mAP50-95 (INT8) | drop | status |", "|---:|---|---:|---:|---:|---|"]
    for p in sorted(search["probes"], key=lambda p: (p["order"] is None, p["order"] or 0, p["bs1_ms"])):
        lines.append(f"| {'' if p['order'] is None else p['order'] + 1} | {p['name']} | {p['bs1_ms']:.2f} | "
                     f"{'' if p['map50_95'] is None else format(p['map50_95'], '.4f')} | "
                     f"{'' if p['drop_points'] is None else format(p['drop_points'], '+.2f')} | "
                     f"{p['status']}" + (f" ({p['note']})" if p["note"] else "") + " |")
    names = {"speedup_bs1": "speed-up at batch 1 vs baseline FP32 (x, >=)",
             "speedup_bs8": "speed-up at batch 8 vs baseline FP32 (x, >=)",
             "map_drop_points": "mAP50-95 drop vs the reference, points (<=; negative = gain)"}
    lines += ["", "## Goals (served model)", "", "| goal | wanted | measured | met |", "|---|---:|---|---|"]
    for key, label in names.items():
        if key not in t["wanted"]:
            continue
        measured = t["measured"][key]
        if key in t["speedup_spread"]:
            ratio = t["speedup_spread"][key]
            measured = f"{ratio['estimate']} (interval {ratio['p10']}-{ratio['p90']}: {ratio['verdict']})"
        lines.append(f"| {label} | {t['wanted'][key]} | {measured} | {'yes' if t['met'][key] else 'NO'} |")
    machine = report.get("machine_during_latency") or {}
    if machine:
        lines += ["", f"During the latency rounds ({machine['seconds']} s) other processes kept "
                      f"{machine['other_processes_cores']} cores busy and the hypervisor took {machine['steal_cores']}."
                  + (" **Busy machine**: the speed-ups are not comparable with a quiet run; measure again with "
                     "nothing else running (`make bench`)." if machine["busy"] else "")]
    if t.get("previous_run"):
        agreement = ", ".join(f"{k} {v:+.1%}" for k, v in t["previous_run"]["change"].items())
        lines += ["", f"Against the previous `make bench` ({t['previous_run']['when']}): {agreement} "
                      f"({'all within' if t['previous_run']['within_10pct'] else 'NOT all within'} 10%"
                      f"{'; one of the two ran on a busy machine' if t['previous_run'].get('busy_machine') else ''})."]
    q = served.get("quantization") or {}
    lines += [
        "", f"Accuracy reference: {t['accuracy_reference']}. "
        + (f"Against the baseline without the extra epochs the served drop would read "
           f"{t['map_drop_vs_unfair_baseline_points']} points instead of {t['measured']['map_drop_points']}: that "
           "difference is training budget, not compression."
           if t["map_drop_vs_unfair_baseline_points"] != t["measured"]["map_drop_points"] else
           "The extra epochs did not improve the unpruned model, so the original baseline is the reference."),
        *([f"INT8: {q['calibration']} calibration on {q['calibration_images']} training images, {q['activation']} "
           f"activations, per-channel int8 weights; kept in float: {', '.join(q['float_nodes'] or [])}."] if q else []),
        f"mAP here is measured with the served pre/post-processing (conf 0.001, NMS IoU 0.7); Ultralytics' validator "
        f"gives the baseline mAP50-95 {report['baseline_ultralytics_val']['map50_95']}.",
        f"TensorRT plans: {report['plan']['note']}.",
    ]
    if report.get("op_profile"):
        lines += ["", "## Where the time goes (ONNX Runtime profiler, kernel time per run)", "",
                  profile_markdown(report["op_profile"]).rstrip("\n"), "", "Plot: op_profile.png."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    # a row far below the others (a student that learned little) would squash the differences
    # that matter into one line: it is named in the legend instead of drawn
    best = max(row["map50_95"] for row in report["rows"])
    shown = [row for row in report["rows"] if row["map50_95"] >= 0.5 * best]
    hidden = [row for row in report["rows"] if row not in shown]
    reference = next((r for r in shown if r["model"] == report["targets"]["accuracy_reference"]), None)
    budget = report["served"]["budget_points"]
    with saved_figure(path, columns=2, size=(15, 5)) as (_, axes):
        for ax, key, title in ((axes[0], "bs1_ms", "batch 1"), (axes[1], "bs8_ms", "batch 8")):
            for row, marker in zip(shown, itertools.cycle("osD^vP*X")):
                high = max(row[f"{key[:3]}_iqr_ms"][1], row[key])
                label = row["model"] + (" (served)" if row.get("served") else "")
                ax.errorbar(row[key], row["map50_95"], xerr=[[0.0], [high - row[key]]], fmt=marker,
                            markersize=12 if row.get("served") else 7, capsize=3, label=label)
            if reference:
                ax.axhline(reference["map50_95"] - budget / 100, color="gray", linestyle="--", linewidth=1,
                           label=f"accuracy budget: {budget:g} points below the reference")
            for row in hidden:
                ax.plot([], [], " ", label=f"{row['model']}: mAP50-95 {row['map50_95']:.3f}, off the chart")
            if ax is axes[1]:  # one legend, beside the plots: inside it would hide the points
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
            ax.set_xlabel(f"ms at {title}: fastest decile, bar to the 3rd quartile")
            ax.set_ylabel("mAP50-95 (val)")
            ax.set_title(f"accuracy vs ONNX Runtime CPU latency, {title}")
            ax.grid(alpha=0.3)


def op_profile(ctx, report: dict) -> dict:
    """ONNX Runtime's per-node profile of the FP32 baseline and the INT8 rows on the front."""
    models = {"baseline FP32": ctx.artifacts / report["rows"][0]["onnx"]}
    for row in report["rows"]:
        if row["precision"] == "int8" and (row["pareto"] or row["served"]):
            models[row["model"]] = ctx.artifacts / row["onnx"]
    print(f"    profiling {len(models)} models by operator (ONNX Runtime profiler)", flush=True)
    return profile_in_subprocess(models, (ctx.imgsz(), ctx.imgsz()), threads=report["threads"])


def summary_lines(report: dict, artifacts: Path) -> list[str]:
    """The end of `make`: what is served, what it costs and gains, and where the details are."""
    served, t = report["served"], report["targets"]["measured"]
    lines = [f"Served: {served['model']} ({served['precision'].upper()}), mAP50-95 "
             f"{next(r['map50_95'] for r in report['rows'] if r['served']):.4f}, {served['drop_points']:+.2f} points "
             f"against the reference (budget {served['budget_points']:g}), {t['speedup_bs1']}x / {t['speedup_bs8']}x "
             f"faster than the FP32 baseline at batch 1 / 8 on {report['machine']['cpu']}.",
             f"Why: {served['rule']}."]
    if report.get("weak_reference"):
        lines.append(f"WARNING: weak reference: {report['weak_reference']}.")
    lines.append(f"Report: {Path(artifacts) / 'report' / 'report.md'} (plot: accuracy_vs_latency.png)")
    return lines


def write_report(ctx, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    report = collect(ctx)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "accuracy_vs_latency.png"}
    previous = read_json(paths["json"], "compression report", "run `make bench`") if paths["json"].exists() else {}
    if previous.get("served", {}).get("onnx") == report["served"]["onnx"]:
        # the same model measured again: do the ratios hold from one run to the next?
        before, now = previous["targets"]["measured"], report["targets"]["measured"]
        change = {k: round(now[k] / before[k] - 1, 4) for k in ("speedup_bs1", "speedup_bs8") if before.get(k)}
        report["targets"]["previous_run"] = {"when": previous.get("measured_at", "unknown"), "change": change,
                                             "within_10pct": all(abs(v) <= 0.10 for v in change.values()),
                                             "busy_machine": any((run.get("machine_during_latency") or {}).get("busy")
                                                                 for run in (previous, report))}
    report["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report["op_profile"] = op_profile(ctx, report)
    paths["op_profile_plot"] = out / "op_profile.png"
    profile_plot(report["op_profile"], paths["op_profile_plot"])
    write_json(paths["json"], report)
    paths["markdown"].write_text(to_markdown(report))
    plot(report, paths["plot"])
    print(to_markdown(report), flush=True)
    print("\n".join(summary_lines(report, ctx.artifacts)), flush=True)
    return paths


def main(argv: list[str] | None = None) -> None:
    """`make summary`: the end of `make`, from the report and the gate's record."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    args = parser.parse_args(argv)
    report = read_json(args.artifacts / "report" / "report.json", "compression report", "run `make` first")
    lines = summary_lines(report, args.artifacts)
    gate = args.artifacts / "parity" / "parity.json"
    if gate.exists():
        passed = read_json(gate, "parity gate result", "run `make parity`").get("passed")
        lines.append(f"Parity gate: {'PASS' if passed else 'FAIL'} ({args.artifacts / 'parity' / 'parity.md'})")
    print("\n".join(["", "=" * 78, *lines, "=" * 78]))


if __name__ == "__main__":
    from compress.errors import cli_entry

    cli_entry(main)()
