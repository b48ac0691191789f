"""Rollouts under load, behind a real load balancer (`make rollout-test`).

    python -m loadtest.rollout --repo model_repository --frames 720p [--streams N --fps F]

Starts two replicas of the repository, each behind the drain launcher (tools.server), HAProxy in
front (tools.haproxy), and runs the Locust camera streams through HAProxy's gRPC (or HTTP)
frontend while it, in turn: restarts the replicas one at a time (rolling update), kills one with
SIGKILL (no drain possible) and restarts it, kills one Python stub of one replica (its launcher
turns not ready and reloads the step, no restart), then scales from two replicas to one. Every frame is counted
by its due time in the window it fell in (steady, during and after each phase): answered, lost,
rejected, errors, dropped by the camera, p50/p99, and the requests each replica served (from
HAProxy's log). Writes into `--out`: rollout.json, rollout.md, rollout.png (latency over time,
phases shaded), haproxy.log and the replicas' logs, beside Locust's own report.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from compress.env import machine_line
from compress.errors import ToolkitError, cli_entry
from compress.plotting import saved_figure
from loadtest.run import run_locust
from loadtest.spec import LoadSpec, add_spec_arguments, default_out, spec_from_args, streams_for
from tools.frame_sets import FrameSet, resolve_frames

PHASES = ("rolling", "sigkill", "stub-kill", "scale-down")
STUB_VICTIM = "preprocess_0_0"  # the step a stub is killed of in the stub-kill phase (every step heals alike)
LOAD_SHARE = 0.8  # of the capacity `make capacity` measured, when no stream count is given
P99_GOAL = 2.0  # p99 during the rolling restart within this many times the steady p99
CHECK_MARGIN_S = 0.5  # over the check window: stats polling and scheduling on a busy machine
NOTICE_CAP_S = 0.25  # after a replica's death, the most its balancer may take to see the connection drop
ESTIMATE_MARGIN = 1.5  # the load's schedule is fixed up front: phases are given this much slack


@dataclass
class Window:
    name: str
    start: float  # epoch seconds, as the frames' due times
    end: float


@dataclass
class Timeline:
    """Windows of the run in order, and the events inside them (kill, marked down, back up)."""

    windows: list[Window] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)

    def close_window(self, name: str) -> None:
        """The window from the end of the previous one until now."""
        now = time.time()
        self.windows.append(Window(name, self.windows[-1].end if self.windows else now, now))

    def event(self, text: str, at: float | None = None) -> float:
        at = time.time() if at is None else at
        self.events.append((at, text))
        print(f"==> {text}", flush=True)
        return at


def phase_estimates(cluster, phases, settle_s: float, margin: float = ESTIMATE_MARGIN) -> dict[str, float]:
    """Seconds each phase should take: drains (grace, quiet window, Triton's stop), starts as long
    as the slowest start so far, and the balancer's rise and fall; times `margin`, plus the settle."""
    s, check = cluster.settings, cluster.check
    drain = s.grace_s + s.quiet_s + 1.0
    start = max((t for r in cluster.replicas for t in r.starts), default=10.0) + check.up_within_s
    heal = 3.0  # a step's reload (tools.health)
    each = {"rolling": (drain + start) * len(cluster.replicas), "sigkill": check.down_within_s + start,
            "stub-kill": check.down_within_s + heal + check.up_within_s, "scale-down": drain}
    return {p: each[p] * margin + settle_s for p in phases}


def rolling_restart(cluster, timeline: Timeline) -> dict:
    """Drain and restart each replica in turn; the next only once the balancer routes to the first."""
    record = {}
    for replica in cluster.replicas:
        started = timeline.event(f"rolling: draining {replica.name}")
        code = replica.drain()
        drained = timeline.event(f"rolling: {replica.name} stopped (exit {code}); starting it again")
        back = cluster.restart(replica.name)
        timeline.event(f"rolling: {replica.name} back in rotation", back)
        record[replica.name] = {"drain_s": round(drained - started, 2), "exit_code": code,
                                "start_s": round(replica.starts[-1], 2), "back_in_rotation_s": round(back - drained, 2)}
    timeline.close_window("rolling restart")
    return record


def sigkill(cluster, timeline: Timeline, victim: str) -> dict:
    """SIGKILL one replica (Triton and its launcher), time the balancer's reaction, restart it."""
    signalled = timeline.event(f"sigkill: killing {victim} (no drain)")
    killed = cluster.replica(victim).kill()
    timeline.event(f"sigkill: {victim} gone", killed)
    down = cluster.haproxy.wait_for_state(victim, "DOWN", cluster.check.down_within_s + 10)
    timeline.event(f"sigkill: the balancer marked {victim} down", down)
    timeline.close_window(f"sigkill {victim}")
    back = cluster.restart(victim)
    timeline.event(f"sigkill: {victim} restarted and back in rotation", back)
    timeline.close_window(f"{victim} restarting")
    # timed from the signal: what the balancer's reaction adds to the process's own death
    return {"victim": victim, "signalled_at": signalled, "killed_at": killed, "marked_down_at": down,
            "back_in_rotation_at": back, "died_after_s": round(killed - signalled, 3),
            "marked_down_after_s": round(down - signalled, 3), "bound_s": cluster.check.down_within_s}


def _wait(condition, timeout_s: float, poll_s: float = 0.02) -> float | None:
    """When (epoch s) `condition()` first held, or None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(poll_s)
    return None


def stub_kill(cluster, timeline: Timeline, victim: str, instance: str = STUB_VICTIM) -> dict:
    """SIGKILL one stub of one replica (Triton stays up): its launcher turns not ready, the balancer
    marks it down, the launcher reloads the step and the replica comes back, without a restart."""
    from tools.drain import http_ok

    import psutil

    replica = cluster.replica(victim)
    starts, triton = len(replica.starts), [c.pid for c in psutil.Process(replica.launcher.pid).children()]
    timeline.event(f"stub-kill: killing stub {instance} on {victim}")
    killed = replica.kill_stub(instance)
    not_ready = _wait(lambda: not http_ok(replica.ready_url, timeout_s=0.5), 10)
    timeline.event(f"stub-kill: {victim} answers not ready", not_ready)
    # the heal may be quicker than the balancer's fall: then it was never marked down
    down = _wait(lambda: cluster.haproxy.server_states().get(victim) != "UP"
                 or http_ok(replica.ready_url, timeout_s=0.5), cluster.check.down_within_s + 10)
    down = down if cluster.haproxy.server_states().get(victim) != "UP" else None
    if down:
        timeline.event(f"stub-kill: the balancer marked {victim} down", down)
    timeline.close_window(f"stub-kill {victim}")
    healed = _wait(lambda: http_ok(replica.ready_url, timeout_s=0.5), 30)
    timeline.event(f"stub-kill: {victim} healed (ready again, Triton never restarted)", healed)
    back = cluster.haproxy.wait_for_state(victim, "UP", cluster.check.up_within_s + 30)
    timeline.event(f"stub-kill: {victim} back in rotation", back)
    timeline.close_window(f"{victim} healing")
    return {"victim": victim, "instance": instance, "killed_at": killed, "not_ready_at": not_ready,
            "marked_down_at": down, "healed_at": healed, "back_in_rotation_at": back,
            "not_ready_after_s": round(not_ready - killed, 3) if not_ready else None,
            "marked_down_after_s": round(down - killed, 3) if down else None,
            "healed_after_s": round(healed - killed, 3) if healed else None,
            "restarts": len(replica.starts) - starts,
            "same_triton": triton == [c.pid for c in psutil.Process(replica.launcher.pid).children()],
            "bound_s": cluster.check.down_within_s}


def stub_kill_analysis(frames: list[dict], requests, record: dict, watch_poll_s: float) -> dict:
    """What the stub kill cost: frames that failed after the kill; the bound is what the victim
    had in flight at the kill plus what the balancer routed to it within one probe interval
    (the launcher's stub check, then the balancer's checks to mark it down); and frames that
    failed although they were due after the balancer had routed away from the victim."""
    victim, killed = record["victim"], record["killed_at"]
    away = record["marked_down_at"] or record["healed_at"] or killed

    def failed_at(frame):
        return frame["due"] + frame["latency_ms"] / 1e3

    failed = [f for f in frames if f["status"] != "ok" and f.get("latency_ms") is not None
              and killed <= failed_at(f) <= (record["back_in_rotation_at"] or away) + 1.0]
    window_end = killed + watch_poll_s + record["bound_s"]
    in_flight = sum(1 for r in requests if r.server == victim and r.started <= killed <= r.ended)
    routed = sum(1 for r in requests if r.server == victim and killed < r.started <= window_end)
    after = [f for f in failed if f["due"] > away + 0.05]
    return {**record, "frames_failed": len(failed), "in_flight_at_kill": in_flight,
            "routed_within_probe_interval": routed, "bound_frames": in_flight + routed,
            "failed_after_routed_away": len(after),
            "failed_by_status": {s: sum(f["status"] == s for f in failed) for s in sorted({f["status"] for f in failed})}}


def scale_down(cluster, timeline: Timeline, victim: str) -> dict:
    started = timeline.event(f"scale 2 -> 1: draining {victim}")
    code = cluster.replica(victim).drain()
    done = timeline.event(f"scale 2 -> 1: {victim} stopped (exit {code})")
    timeline.close_window(f"scale-down {victim}")
    return {"victim": victim, "drain_s": round(done - started, 2), "exit_code": code}


def wait_for_first_request(cluster, load, since: float, timeout_s: float = 90.0) -> float:
    """When the load's first frame reached the balancer (epoch s): Locust takes a while to start."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        requests = cluster.haproxy.requests(since)
        if requests:
            return min(r.started for r in requests)
        if load.done():
            load.result()  # raises what stopped it
            raise ToolkitError("the load test ended before sending a frame", hint="see Locust's output above")
        time.sleep(0.1)
    raise ToolkitError(f"no frame reached the balancer within {timeout_s:.0f} s of starting Locust")


def run_rollout(cluster, spec: LoadSpec, frame_set: FrameSet, out: Path, phases=PHASES, steady_s: float = 10.0,
                settle_s: float = 5.0, margin: float = ESTIMATE_MARGIN) -> dict:
    """Run the load through `cluster` (started) while doing `phases` in order; returns the counts.

    The load's schedule is fixed when it starts: long enough for the phases as estimated from
    the replicas' start times so far, times `margin`."""
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise ToolkitError(f"unknown rollout phase(s) {', '.join(sorted(unknown))}", hint=f"use {', '.join(PHASES)}")
    out.mkdir(parents=True, exist_ok=True)
    estimates = phase_estimates(cluster, phases, settle_s, margin)
    spec = replace(spec, duration_s=math.ceil(steady_s + sum(estimates.values()) + 2))
    timeline, record = Timeline(), {}
    url = cluster.haproxy.grpc_url if spec.protocol == "grpc" else cluster.haproxy.http_url
    print(f"==> {spec.streams} streams x {spec.fps:g} FPS of {frame_set.label()} over {spec.protocol} through HAProxy "
          f"{url} for {spec.duration_s:.0f} s; phases: {', '.join(phases)}", flush=True)
    launched = time.time()  # the balancer may have served earlier runs: only what follows counts
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(run_locust, spec, [url], frame_set.images, out)
        first = wait_for_first_request(cluster, load, launched)
        timeline.windows.append(Window("steady", first, first))
        time.sleep(max(0.0, first + steady_s - time.time()))
        timeline.windows[-1].end = time.time()
        for phase in phases:
            if phase == "rolling":
                record["rolling"] = rolling_restart(cluster, timeline)
            elif phase == "sigkill":
                record["sigkill"] = sigkill(cluster, timeline, cluster.replicas[0].name)
            elif phase == "stub-kill":
                record["stub-kill"] = stub_kill(cluster, timeline, cluster.replicas[0].name)
            else:
                record["scale-down"] = scale_down(cluster, timeline, cluster.replicas[-1].name)
            time.sleep(settle_s)
            timeline.close_window(f"after {phase}")
        load.result()
    frames = json.loads((out / "frames.json").read_text()) if (out / "frames.json").exists() else []
    if not frames:
        raise ToolkitError("locust wrote no frame records", hint=f"see its output above and {out}")
    last_due = max(f["due"] for f in frames)
    # the schedule was fixed up front: a phase that outlasted it ran (partly) without load
    uncovered = [w.name for w in timeline.windows if not w.name.startswith("after") and w.end > last_due]
    timeline.windows[-1].end = max(timeline.windows[-1].end, last_due + 1e-6)  # the last window takes the tail
    timeline.windows[0].start = min(timeline.windows[0].start, min(f["due"] for f in frames))  # and the first the head
    requests = cluster.haproxy.requests(launched)
    (out / "haproxy.log").write_text("".join(f"{t:.3f} {line}\n" for t, line in cluster.haproxy.output() if t >= launched))
    result = count(frames, timeline, requests, [r.name for r in cluster.replicas])
    result.update(record=record, spec=vars(spec), frame_set=frame_set.record(),
                  check={"inter_ms": cluster.check.inter_ms, "fall": cluster.check.fall, "rise": cluster.check.rise,
                         "timeout_ms": cluster.check.timeout_ms, "down_within_s": cluster.check.down_within_s},
                  drain=asdict(cluster.settings), estimates_s={p: round(v, 1) for p, v in estimates.items()},
                  phases_without_load=uncovered)
    if "sigkill" in record:
        result["sigkill"] = kill_analysis(frames, requests, record["sigkill"])
    if "stub-kill" in record:
        from tools.health import HealSettings

        result["stub-kill"] = stub_kill_analysis(frames, requests, record["stub-kill"], HealSettings.poll_s)
    result["goals"] = goals(result)
    (out / "rollout.json").write_text(json.dumps(result, indent=2))
    return result


def percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 1) if values else None


def count(frames: list[dict], timeline: Timeline, requests, replicas: list[str]) -> dict:
    """Per window (by due time): frames by status, latency percentiles of the answered ones, and
    the requests each replica served (by when HAProxy received them)."""
    rows = []
    for window in timeline.windows:
        inside = [f for f in frames if window.start <= f["due"] < window.end]
        ok = [f["latency_ms"] for f in inside if f["status"] == "ok"]
        served = [r for r in requests if window.start <= r.started < window.end]
        rows.append({
            "window": window.name, "start_s": round(window.start - timeline.windows[0].start, 2),
            "seconds": round(window.end - window.start, 2), "frames": len(inside), "ok": len(ok),
            **{status: sum(f["status"] == status for f in inside) for status in ("lost", "rejected", "error", "dropped")},
            "not_ok": len(inside) - len(ok), "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99),
            "by_replica": {name: sum(r.server == name for r in served) for name in replicas},
            "no_replica": sum(r.server == "<NOSRV>" for r in served),
            "redispatched": sum(r.redispatched for r in served),
        })
    origin = timeline.windows[0].start
    return {"windows": rows, "events": [{"at_s": round(t - origin, 2), "event": text} for t, text in timeline.events],
            "origin": origin, "frames_total": len(frames), "not_ok_total": sum(f["status"] != "ok" for f in frames)}


def kill_analysis(frames: list[dict], requests, kill: dict) -> dict:
    """What the kill cost against what the killed replica held, and how long the balancer kept
    trying it.

    The kill lasts from the signal until the balancer saw the replica's connection drop: the
    process dies first, and HAProxy keeps sending on its open connection until it reads the
    reset (tens of ms on a busy machine), then resets every stream on it at once (RST_STREAM,
    REFUSED_STREAM), without logging them. That moment is the first failure after the signal,
    capped at NOTICE_CAP_S after the death. Frames in flight on the victim during the kill are
    counted from both sides: frames the cameras had in flight, less the requests HAProxy logged
    on the other replicas meanwhile (a camera sees a request no later and for no shorter than
    HAProxy does, so this never undercounts). A request HAProxy redispatched after the kill had
    first been sent to the dead replica: the last of them shows when the balancer stopped trying.
    Times are from the signal.
    """
    victim, signalled, killed = kill["victim"], kill["signalled_at"], kill["killed_at"]
    down, back = kill["marked_down_at"], kill["back_in_rotation_at"]

    def failed_at(frame):  # a failed frame's record says when it failed: due + latency
        return frame["due"] + frame["latency_ms"] / 1e3

    failed = [f for f in frames if f["status"] != "ok" and f.get("latency_ms") is not None
              and signalled <= failed_at(f) <= down + 1.0]
    noticed = min(max(killed, min((failed_at(f) for f in failed), default=killed)), killed + NOTICE_CAP_S)
    cameras = sum(1 for f in frames if f.get("latency_ms") is not None and f["due"] <= noticed
                  and failed_at(f) >= signalled)
    others = sum(1 for r in requests if r.server != victim and r.started <= noticed and r.ended >= signalled)
    tried_dead = [r.started - signalled for r in requests if r.redispatched and killed < r.started < back]
    return {**kill, "balancer_saw_it_after_s": round(noticed - signalled, 3), "in_flight_at_kill": cameras - others,
            "frames_failed": len(failed),
            "failed_by_status": {s: sum(f["status"] == s for f in failed) for s in sorted({f["status"] for f in failed})},
            "redispatched_after_kill": len(tried_dead),
            "last_sent_to_dead_s": round(max(tried_dead), 3) if tried_dead else None}


def goals(result: dict) -> dict:
    """The rollout's goals, as measured here."""
    rows = {row["window"]: row for row in result["windows"]}
    verdict = {}
    if "rolling" in result["record"]:
        during = (rows["rolling restart"], rows["after rolling"])
        lost = sum(r["not_ok"] for r in during)
        steady, rolling = rows["steady"]["p99_ms"], rows["rolling restart"]["p99_ms"]
        ratio = round(rolling / steady, 2) if steady and rolling else None
        # dropped: a camera skipped the frame because its earlier ones were late (no server saw it)
        verdict["rolling_zero_lost"] = {"frames_not_ok": lost, "of_which_dropped_by_cameras":
                                        sum(r["dropped"] for r in during), "met": lost == 0}
        verdict["rolling_p99_within_2x"] = {"steady_p99_ms": steady, "rolling_p99_ms": rolling, "ratio": ratio,
                                            "met": ratio is not None and ratio <= P99_GOAL}
    if "sigkill" in result:
        k = result["sigkill"]
        verdict["sigkill_lost_within_in_flight"] = {"frames_failed": k["frames_failed"],
                                                    "in_flight_at_kill": k["in_flight_at_kill"],
                                                    "met": k["frames_failed"] <= k["in_flight_at_kill"]}
        last = k["last_sent_to_dead_s"]
        verdict["sigkill_routed_away_within_check_window"] = {
            "marked_down_after_s": k["marked_down_after_s"], "last_sent_to_dead_s": last, "bound_s": k["bound_s"],
            "met": k["marked_down_after_s"] <= k["bound_s"] + CHECK_MARGIN_S
            and (last is None or last <= k["bound_s"] + CHECK_MARGIN_S)}
    if "stub-kill" in result:
        k = result["stub-kill"]
        verdict["stub_kill_lost_within_in_flight_and_one_probe"] = {
            "frames_failed": k["frames_failed"], "bound_frames": k["bound_frames"],
            "met": k["frames_failed"] <= k["bound_frames"]}
        verdict["stub_kill_nothing_failed_once_routed_away"] = {"frames_failed": k["failed_after_routed_away"],
                                                               "met": k["failed_after_routed_away"] == 0}
        verdict["stub_kill_healed_within_10s_without_restart"] = {
            "healed_after_s": k["healed_after_s"], "restarts": k["restarts"],
            "same_triton": k["same_triton"],
            "met": k["healed_after_s"] is not None and k["healed_after_s"] <= 10 and k["restarts"] == 0
            and k["same_triton"]}
    if "scale-down" in result["record"]:
        name = next(w for w in rows if w.startswith("scale-down"))
        lost = rows[name]["not_ok"] + rows["after scale-down"]["not_ok"]
        verdict["scale_down_zero_lost"] = {"frames_not_ok": lost, "met": lost == 0}
    return verdict


def to_markdown(result: dict) -> str:
    s, m = result["spec"], result.get("machine", {})
    replicas = list(result["windows"][0]["by_replica"])
    lines = [f"# Rollout under load: {s['streams']} streams x {s['fps']:g} FPS of {result['frame_set']['name']} "
             f"({result['frame_set']['width']}x{result['frame_set']['height']}) through HAProxy", ""]
    if m:
        lines.append(f"- {machine_line(m)} Replicas, HAProxy and Locust share it.")
    if result.get("load_note"):
        lines.append(f"- load: {result['load_note']}")
    c, d = result["check"], result["drain"]
    lines += [f"- health checks: inter {c['inter_ms']} ms, fall {c['fall']}, rise {c['rise']} (down within "
              f"{c['down_within_s']:g} s); drain: grace {d['grace_s']:g} s, idle = nothing pending and no request "
              f"for {d['quiet_s']:g} s, capped at {d['max_wait_s']:g} s",
              f"- frames due {result['frames_total']}, not answered {result['not_ok_total']}"
              + (f"; **the load ended before {', '.join(result['phases_without_load'])} did** (raise --settle)"
                 if result["phases_without_load"] else ""), "",
              "| window | from s | for s | frames | ok | lost | rejected | errors | dropped | p50 ms | p99 ms | "
              + " | ".join(f"via {r}" for r in replicas) + " |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(replicas)]
    for w in result["windows"]:
        lines.append(f"| {w['window']} | {w['start_s']} | {w['seconds']} | {w['frames']} | {w['ok']} | {w['lost']} | "
                     f"{w['rejected']} | {w['error']} | {w['dropped']} | {w['p50_ms']} | {w['p99_ms']} | "
                     + " | ".join(str(w["by_replica"][r]) for r in replicas) + " |")
    lines += ["", "Goals:"]
    for name, g in result["goals"].items():
        details = ", ".join(f"{k} {v}" for k, v in g.items() if k != "met")
        lines.append(f"- {name.replace('_', ' ')}: **{'met' if g['met'] else 'missed'}** ({details})")
    lines += ["", "Events:"] + [f"- {e['at_s']} s: {e['event']}" for e in result["events"]]
    return "\n".join(lines) + "\n"


def plot(frames: list[dict], result: dict, path: Path) -> None:
    origin = result["origin"]
    ok = [(f["due"] - origin, f["latency_ms"]) for f in frames if f["status"] == "ok"]
    failed = [f["due"] - origin for f in frames if f["status"] != "ok"]
    with saved_figure(path, size=(11, 4.5)) as (_, ax):
        for index, w in enumerate(result["windows"]):
            if w["window"] != "steady" and not w["window"].startswith("after"):
                ax.axvspan(w["start_s"], w["start_s"] + w["seconds"], color=f"C{index % 10}", alpha=0.15,
                           label=w["window"])
        if ok:
            ax.scatter(*zip(*ok), s=4, alpha=0.5, color="C0", label="answered frame (latency from due time)")
        if failed:
            ax.scatter(failed, [0] * len(failed), marker="x", color="red", s=14, label="not answered")
        ax.set_xlabel("seconds since the first frame")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{result['spec']['streams']} streams x {result['spec']['fps']:g} FPS through HAProxy")
        ax.legend(fontsize=7, loc="upper left")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    from compress.env import describe_machine
    from tools.haproxy import HealthCheck
    from tools.rollout import Cluster

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--frames", default="720p", help="dataset, 480p, 720p (default), 1080p or a folder")
    # the load lasts as long as the phases take (estimated from the replicas' start times): no --duration
    add_spec_arguments(parser, only=("streams", "fps", "protocol", "workers", "max_in_flight", "slo_ms"), streams=0)
    parser.add_argument("--load", type=float, default=LOAD_SHARE, help="share of the measured capacity (with --streams 0)")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated, in order: " + ", ".join(PHASES))
    parser.add_argument("--steady", type=float, default=15.0, help="seconds of load before the first phase")
    parser.add_argument("--settle", type=float, default=8.0, help="seconds of load after each phase")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--out", type=Path, help="default: <artifacts>/rollout")
    args = parser.parse_args(argv)
    out = default_out(args, "rollout")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise ToolkitError(f"unknown rollout phase(s) {', '.join(unknown)}", hint=f"use {', '.join(PHASES)}")
    cluster = Cluster(args.repo, out, count=2, check=HealthCheck())  # checks haproxy and the repository
    streams, note = streams_for(args.streams, args.artifacts, args.frames, args.load)
    frame_set = resolve_frames(args.frames, args.artifacts)
    spec = spec_from_args(args, streams=streams)
    with cluster:
        print(f"==> two replicas behind HAProxy: gRPC {cluster.haproxy.grpc_url}, HTTP {cluster.haproxy.http_url} "
              f"(replicas ready in {', '.join(f'{r.starts[-1]:.1f} s' for r in cluster.replicas)})", flush=True)
        result = run_rollout(cluster, spec, frame_set, out, phases, args.steady, args.settle)
    result.update(machine=describe_machine(), load_note=note)
    (out / "rollout.json").write_text(json.dumps(result, indent=2))
    markdown = to_markdown(result)
    (out / "rollout.md").write_text(markdown)
    plot(json.loads((out / "frames.json").read_text()), result, out / "rollout.png")
    print(markdown)
    print(f"report: {out}/rollout.md, rollout.json, rollout.png (Locust's: locust.html)")


if __name__ == "__main__":
    main()
