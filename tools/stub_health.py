"""Are the Python-backend stubs of a Triton server's models alive? Standard library only.

Used by the launcher's stub watch (tools.health) and, copied into the server image, by the
Kubernetes readiness and liveness probes, where no launcher runs:

    python3 stub_health.py --url http://127.0.0.1:8000 --model yolo --repository /models   # exit 0: all alive

A stub is a `triton_python_backend_stub` process whose second-last argument is its instance
name (<model>_<group index>_<instance index>, as Triton names instances); a model's instances
come from the config the server runs (GET /v2/models/<model>/config).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request

STUB_BINARY = "triton_python_backend_stub"


def instance_names(model: str, config: dict) -> list[str]:
    """The instances Triton makes of `model` from its config."""
    return [f"{model}_{group}_{index}" for group, spec in enumerate(config.get("instance_group") or [{}])
            for index in range(int(spec.get("count", 1)))]


def _parent_and_state(pid: str) -> tuple[int, str]:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def stubs(server_pid: int | None = None, repository: str | None = None) -> dict[str, int]:
    """{instance name: pid} of the live stubs, from /proc: of `server_pid`'s, or of the models
    under `repository` (a stub's first argument is its model.py), when given."""
    found = {}
    for pid in (entry for entry in os.listdir("/proc") if entry.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().split(b"\0")[:-1]
            if not command or not command[0].endswith(STUB_BINARY.encode()) or len(command) < 2:
                continue
            parent, state = _parent_and_state(pid)
        except (OSError, ValueError, IndexError):  # exited while we looked
            continue
        model_file = command[1].decode(errors="replace")
        if state != "Z" and (server_pid is None or parent == server_pid) and (
                repository is None or model_file.startswith(repository.rstrip("/") + "/")):
            found[command[-2].decode(errors="replace")] = int(pid)
    return found


def live_stubs(server_pid: int | None = None, repository: str | None = None) -> set[str]:
    """Instance names of the live stubs (see `stubs`)."""
    return set(stubs(server_pid, repository))


def missing_stubs(expected: dict[str, list[str]], alive: set[str]) -> dict[str, list[str]]:
    """{model: its instances without a live stub}, for the models missing any."""
    return {model: [name for name in names if name not in alive]
            for model, names in expected.items() if any(name not in alive for name in names)}


def _get(url: str, headers: dict) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, headers=headers), timeout=3) as response:
        return json.loads(response.read())


def python_steps(url: str, model: str, headers: dict | None = None) -> dict[str, list[str]]:
    """{step: its instance names} of `model`'s Python-backend steps (the model itself if it is
    not an ensemble), from the server at `url` (http://host:port)."""
    headers = headers or {}
    config = _get(f"{url}/v2/models/{model}/config", headers)
    steps = [s["model_name"] for s in config.get("ensemble_scheduling", {}).get("step", [])] or [model]
    configs = {step: config if step == model else _get(f"{url}/v2/models/{step}/config", headers) for step in steps}
    return {step: instance_names(step, c) for step, c in configs.items() if c.get("backend") == "python"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("TRITON_HTTP_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--model", default="yolo")
    parser.add_argument("--repository", default=os.environ.get("MODEL_REPOSITORY", "/models"),
                        help="the server's model repository: stubs of models under it count")
    # the entrypoint's own default: with the key mounted there, the model-config API needs it
    parser.add_argument("--key-file", default=os.environ.get("ADMIN_KEY_FILE", "/var/run/secrets/yolo-triton/admin-key"),
                        help="the admin key, where the model-config API is restricted")
    args = parser.parse_args(argv)
    key = os.environ.get("TRITON_ADMIN_KEY", "")
    if not key and args.key_file and os.path.exists(args.key_file):
        with open(args.key_file) as handle:
            key = handle.read().strip()
    try:
        expected = python_steps(args.url, args.model, {"admin-key": key} if key else {})
    except OSError as error:
        print(f"not ready: cannot read the configs of {args.model} from {args.url}: {error}", file=sys.stderr)
        return 1
    # a repository in object storage (s3://...) is read by Triton itself: then every stub here is its
    repository = None if "://" in args.repository else os.path.realpath(args.repository)
    missing = missing_stubs(expected, live_stubs(repository=repository))
    if missing:
        print("not ready: no live stub for " + ", ".join(n for names in missing.values() for n in names), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
