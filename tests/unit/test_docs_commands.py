"""Every command the README and docs show is one the project accepts as typed: `make` lines name
a target of the Makefile and only variables it reads; `python -m` lines parse against the
module's own argument parser (nothing runs: parsing stops before main does any work)."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import signal

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


def make_problems(words: list[str]) -> list[str]:
    variables = [w.split("=", 1)[0] for w in words if "=" in w]
    targets = [w for w in words if "=" not in w] or ["all"]
    problems = [f"no target {t!r} in the Makefile" for t in targets if t not in TARGETS]
    problems += [f"the Makefile never reads {v}" for v in variables
                 if not re.search(rf"\$\({re.escape(v)}\)|origin {re.escape(v)}\)", MAKEFILE)]
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
    assert python_problems(["tools.client", "a.jpg", "--no-such-flag"], monkeypatch) == ["tools.client does not know --no-such-flag"]
    assert python_problems(["tools.client", "a.jpg", "--protocol", "carrier-pigeon"], monkeypatch)
    assert python_problems(["tools.client", "a.jpg", "--protocol", "grpc"], monkeypatch) == []
