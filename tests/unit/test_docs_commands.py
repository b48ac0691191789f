"""Every command the README and docs show is one the project accepts as typed: `make` lines name
a target of the Makefile, and every variable they set changes the command that target runs
(`make -n`, the recipe as make would run it); `python -m` lines parse against the module's own
argument parser (nothing runs: parsing stops before main does any work). And `make help` names
every variable the Makefile reads."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import signal
import subprocess

import pytest

from compress.env import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted(p for p in (PROJECT_ROOT / "docs").glob("*.md") if p.name != "results.md")]
MAKEFILE = (PROJECT_ROOT / "Makefile").read_text()
TARGETS = set(re.findall(r"^([a-zA-Z][\w-]*):", MAKEFILE, flags=re.M))


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for each line of the pages' ```bash blocks."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"^\s*```bash\n(.*?)^\s*```", page.read_text(), flags=re.M | re.S):
            for line in block.splitlines():
                line = line.split(" #", 1)[0].strip().rstrip("&").strip()
                if line:
                    commands.append((page.name, line))
    return commands


COMMANDS = shown_commands()


def dry_run(words: list[str]) -> str:
    """What `make <words>` would run, as make prints it with -n (nothing runs)."""
    result = subprocess.run(["make", "-n", "--no-print-directory", *words], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"make -n {' '.join(words)}: {result.stderr[-500:]}"
    return result.stdout


def make_problems(words: list[str]) -> list[str]:
    """A target the Makefile lacks, or a variable that does not reach the command the target runs."""
    settings = [w for w in words if "=" in w]
    targets = [w for w in words if "=" not in w] or ["all"]
    problems = [f"no target {t!r} in the Makefile" for t in targets if t not in TARGETS]
    if problems:
        return problems
    typed = dry_run(words)
    for setting in settings:
        without = dry_run([w for w in words if w != setting])
        if without == typed:
            problems.append(f"{setting.split('=', 1)[0]} does not change what `make {' '.join(targets)}` runs")
    return problems


class _Parsed(BaseException):
    """Raised by the patched parse_args once the command line parsed: main stops there."""


def python_problems(words: list[str], monkeypatch) -> list[str]:
    module_name, argv = words[0], words[1:]
    unknown: list[str] = []

    def parse_and_stop(self, args=None, namespace=None):
        _, rest = self.parse_known_args(args, namespace)
        unknown.extend(rest)
        raise _Parsed

    module = importlib.import_module(module_name)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
        try:
            module.main(argv)
        except _Parsed:
            pass
        except SystemExit as error:  # argparse's own error: a bad choice, a missing positional
            return [f"{module_name} refused the arguments (exit {error.code})"]
        else:
            return [f"{module_name}.main did not parse a command line"]
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    return [f"{module_name} does not know {a}" for a in unknown]


def test_the_pages_show_commands():
    pages = {page for page, _ in COMMANDS}
    assert {"README.md", "serving.md", "loadtesting.md", "deployment.md"} <= pages
    assert sum(command.startswith("python -m ") for _, command in COMMANDS) >= 4


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}:{c}"[:80] for p, c in COMMANDS])
def test_shown_command_is_accepted_as_typed(page, command, monkeypatch):
    words = shlex.split(command)
    if words[0] == "make":
        problems = make_problems(words[1:])
    elif words[:2] == ["python", "-m"]:
        problems = python_problems(words[2:], monkeypatch)
    else:
        pytest.fail(f"{page}: `{command}` is neither a make target nor a python -m command; show it as one")
    assert problems == [], f"{page}: `{command}`"


def test_a_wrong_flag_or_target_is_caught(monkeypatch):
    assert make_problems(["no-such-target"]) and make_problems(["loadtest", "NO_SUCH_VARIABLE=1"])
    assert make_problems(["loadtest", "STREAMS=4", "RESIZE_TO_MODEL=1"]) == []
    # read elsewhere in the Makefile is not enough: the variable must reach this target's command
    assert make_problems(["capacity", "RESIZE_TO_MODEL=1"]) == ["RESIZE_TO_MODEL does not change what `make capacity` runs"]
    assert python_problems(["tools.client", "a.jpg", "--no-such-flag"], monkeypatch) == ["tools.client does not know --no-such-flag"]
    assert python_problems(["tools.client", "a.jpg", "--protocol", "carrier-pigeon"], monkeypatch)
    assert python_problems(["tools.client", "a.jpg", "--protocol", "grpc"], monkeypatch) == []


INTERNAL = {"SHELL", "PY", "MAKEFILE_LIST", "CURDIR", "MAKE", "PIPELINE_ARGS", "REPO_ARGS", "SPEC_ARGS", "FRAMES_ARG"}


def test_make_help_names_every_variable_the_makefile_reads():
    read = set(re.findall(r"\$\(([A-Z][A-Z0-9_]*)\)", MAKEFILE)) - INTERNAL
    read -= {name for name in read if re.search(rf"^export {name} :?=", MAKEFILE, flags=re.M)}  # set, not read
    shown = subprocess.run(["make", "--no-print-directory", "help"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                           timeout=60).stdout.split("Variables", 1)[1]  # the variables' list, not a target's text
    assert read and sorted(v for v in read if not re.search(rf"\b{v}\b", shown)) == []


@pytest.mark.parametrize("words, flag", [
    (["repo", "TARGET=onnxruntime", "DEVICE=gpu"], "--device gpu"),
    (["capacity", "DURATION=30s"], "--duration 30s"),
    (["tune", "DURATION=30s"], "--duration 30s"),
    (["rollout-test", "PROTOCOL=http", "WORKERS=2"], "--protocol http --workers 2"),
    (["pipeline", "DEVICE=gpu", "MAX_BATCH=32"], "--device gpu --max-batch 32"),
])
def test_variables_the_review_found_unread_now_reach_their_command(words, flag):
    assert flag in " ".join(dry_run(words).replace("\\\n", " ").split())
