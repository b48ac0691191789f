"""The load a test sends: `LoadSpec`, the one place its defaults live.

Every load CLI (loadtest.run, capacity, tune, soak, rollout, burst, serving bench) generates its
options from `LoadSpec`'s fields (`add_spec_arguments`), a command changing only the defaults
that differ for it (a soak lasts 10 minutes), and reads them back with `spec_from_args`. The
Makefile passes only the variables the user set, so an unset STREAMS= is the command's default.
`streams_for` turns "no stream count given" into a share of the measured capacity.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from compress.defaults import DEFAULT_CAMERA_FPS, DEFAULT_SLO_MS
from tools.periodic import parse_duration  # noqa: F401  (where every command reads DURATION)

FALLBACK_STREAMS = 4  # a share of the capacity was asked for, but none was measured


def _option(help_text: str, **argparse_options) -> dict:
    return {"help": help_text, **argparse_options}


@dataclass(frozen=True)
class LoadSpec:
    streams: int = field(default=16, metadata=_option("camera streams (0: a share of the measured capacity, "
                                                      "where the command says so)"))
    fps: float = field(default=DEFAULT_CAMERA_FPS, metadata=_option("frames per second per stream"))
    duration_s: float = field(default=60.0, metadata=_option("how long the streams run (30s, 2m, 45)",
                                                             flag="--duration"))
    protocol: str = field(default="grpc", metadata=_option("what the cameras speak", choices=("grpc", "http")))
    slo_ms: float = field(default=DEFAULT_SLO_MS, metadata=_option("latency a frame must be answered within, from its due time"))
    workers: int = field(default=0, metadata=_option("distributed Locust: worker processes (0: one process)"))
    max_in_flight: int = field(default=2, metadata=_option("frames a camera may have unanswered before it drops one"))
    phase: str = field(default="staggered", metadata=_option("cameras' frame phases", choices=("staggered", "sync")))
    model: str = field(default="yolo", metadata=_option("the model the frames are sent to"))
    remote_workers: int = field(default=0, metadata=_option(
        "run only the master and wait for this many workers started elsewhere (Kubernetes)"))
    master_port: int = field(default=5557, metadata=_option("with --remote-workers: the port workers reach"))
    resize_to_model: bool = field(default=False, metadata=_option(
        "cameras shrink frames to the model input before sending (bandwidth-bound links)"))

    def with_streams(self, streams: int) -> "LoadSpec":
        return replace(self, streams=streams)


def _flag(name: str, metadata) -> str:
    return metadata.get("flag", f"--{name.replace('_', '-')}")


def add_spec_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None, **defaults) -> None:
    """LoadSpec's fields as options (`only` these, when given), with a command's own `defaults`
    ({field: value}) in place of LoadSpec's."""
    unknown = set(defaults) - {f.name for f in fields(LoadSpec)}
    if unknown:
        raise TypeError(f"not LoadSpec fields: {sorted(unknown)}")
    for spec_field in fields(LoadSpec):
        if only is not None and spec_field.name not in only:
            continue
        meta, default = spec_field.metadata, defaults.get(spec_field.name, spec_field.default)
        help_text = f"{meta['help']} (default: {default})"
        if spec_field.type in (bool, "bool"):
            parser.add_argument(_flag(spec_field.name, meta), dest=spec_field.name, action="store_true",
                                default=default, help=meta["help"])
            continue
        kind = {"int": int, "float": float, "str": str}[spec_field.type if isinstance(spec_field.type, str)
                                                        else spec_field.type.__name__]
        if spec_field.name == "duration_s":
            kind = parse_duration
        parser.add_argument(_flag(spec_field.name, meta), dest=spec_field.name, type=kind, default=default,
                            choices=meta.get("choices"), help=help_text)


def spec_from_args(args, **overrides) -> LoadSpec:
    """The LoadSpec the parsed options describe (fields a command did not offer keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in fields(LoadSpec) if hasattr(args, f.name)}
    values.update(overrides)
    if values.get("duration_s") is not None:
        values["duration_s"] = parse_duration(values["duration_s"])
    return LoadSpec(**values)


def streams_for(requested: int, artifacts: Path, frames: str | None, share: float) -> tuple[int, str]:
    """The streams to run and why: `requested` when > 0, else `share` of the capacity `make capacity`
    measured with `frames`, else FALLBACK_STREAMS (with the command that measures it)."""
    if requested > 0:
        return requested, f"{requested} streams as asked"
    from tools.capacity_plan import capacity_for

    measured = capacity_for(artifacts, frames)
    if measured is None:
        return FALLBACK_STREAMS, (f"{FALLBACK_STREAMS} streams: no capacity measured with {frames} frames "
                                  f"(`make capacity FRAMES={frames}` first for {share:.0%} of it, or STREAMS=)")
    capacity = measured["capacity_streams"]
    chosen = max(1, math.floor(share * capacity))
    return chosen, f"{chosen} streams = {share:.0%} of the capacity of {capacity} streams measured with {frames} frames"


def default_out(args, name: str) -> Path:
    """`--out` when given, else <artifacts>/<name>: results follow ARTIFACTS=."""
    return args.out if getattr(args, "out", None) is not None else Path(args.artifacts) / name
