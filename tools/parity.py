"""Accuracy parity: the gate before serving, and the check of what was deployed.

    python -m tools.parity                               # `make parity` (tools.gate); exit 3 if it fails
    python -m tools.parity --deployed model_repository   # `make verify` (tools.verify): served vs in-process

The gate judges the report's choice against its FP32 twin and the reference (Polygraphy,
detections, mAP; tools.gate); only a model that passes is recorded for `make repo`. `--deployed`
measures a built repository through the live Triton server beside the same model in-process.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from compress.errors import GateFailedError, cli_entry
from tools.gate import Gate, run_gate, to_markdown
from tools.verify import MAX_SERVED_DELTA, verify_deployed


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--deployed", type=Path, metavar="REPO",
                        help="instead of the gate: served-vs-offline mAP of this built repository")
    parser.add_argument("--frames", help="with --deployed: a labelled frame set (dataset, 480p, 720p, 1080p or a "
                        "folder with a data.yaml); camera sizes are also compared with every pixel decoded")
    parser.add_argument("--max-served-delta", type=float, default=MAX_SERVED_DELTA,
                        help="points of mAP50-95 the served repository may differ from the same model offline")
    parser.add_argument("--no-mixed-precision", action="store_true",
                        help="report a failing gate as is instead of keeping sensitive layers in float")
    for field, default in asdict(Gate()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=float, default=default,
                            help="default: MAX_MAP_DROP of the report" if default is None else f"default: {default}")
    args = parser.parse_args(argv)
    if args.deployed:
        result = verify_deployed(args.deployed, args.artifacts, args.max_served_delta, args.frames)
        print(json.dumps(result, indent=2))
        if not result.get("passed", True):
            raise GateFailedError(f"served mAP50-95 differs from offline by {result['delta_points']} points "
                                  f"(allowed {args.max_served_delta})", hint=f"details in {args.artifacts}/parity/")
        return
    gate = Gate(**{f: getattr(args, f) for f in asdict(Gate())})
    result = run_gate(args.artifacts, gate, allow_mixed_precision=not args.no_mixed_precision)
    print(to_markdown(result))
    if not result["passed"]:
        failed = [f"{name}: {value} (wanted {wanted})" for name, wanted, value, ok in result["checks"] if not ok]
        raise GateFailedError("parity gate FAILED: " + "; ".join(failed),
                              hint=result.get("advice") or f"details in {args.artifacts}/parity/")


if __name__ == "__main__":
    main()
