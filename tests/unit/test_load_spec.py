"""One source of load defaults: every load CLI's options come from LoadSpec, a command changes only
the defaults that differ for it, and a stream count left unset is a share of the capacity."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

import pytest

from compress.errors import ToolkitError
from loadtest.spec import FALLBACK_STREAMS, LoadSpec, add_spec_arguments, default_out, parse_duration, spec_from_args, streams_for


def parsed(argv: list[str], **defaults) -> LoadSpec:
    parser = argparse.ArgumentParser()
    add_spec_arguments(parser, **defaults)
    return spec_from_args(parser.parse_args(argv))


def test_every_field_is_an_option_with_the_spec_default():
    assert parsed([]) == LoadSpec()
    spec = parsed(["--streams", "3", "--fps", "5", "--duration", "2m", "--protocol", "http", "--slo-ms", "80",
                   "--workers", "2", "--max-in-flight", "4", "--phase", "sync", "--model", "slow",
                   "--remote-workers", "1", "--master-port", "6000", "--resize-to-model"])
    assert spec == LoadSpec(3, 5.0, 120.0, "http", 80.0, 2, 4, "sync", "slow", 1, 6000, True)
    assert len(fields(LoadSpec)) == 12  # a new field must get an option and a place above


def test_a_command_changes_only_its_own_defaults_and_offers_only_what_it_reads():
    assert parsed([], streams=0, duration_s=600.0) == LoadSpec(streams=0, duration_s=600.0)
    parser = argparse.ArgumentParser()
    add_spec_arguments(parser, only=("fps", "slo_ms"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--duration", "30s"])  # not offered: the command's load lasts as long as it needs
    with pytest.raises(TypeError, match="not LoadSpec fields"):
        add_spec_arguments(argparse.ArgumentParser(), streamz=3)


def test_durations_read_as_people_write_them():
    assert [parse_duration(t) for t in ("30s", "2m", "1h", "45", 12.5)] == [30, 120, 3600, 45, 12.5]
    for bad in ("soon", "", "-5s"):
        with pytest.raises(ToolkitError):
            parse_duration(bad)


def test_unset_streams_are_a_share_of_the_measured_capacity(tmp_path):
    assert streams_for(6, tmp_path, "720p", 0.8) == (6, "6 streams as asked")
    streams, note = streams_for(0, tmp_path, "720p", 0.8)
    assert streams == FALLBACK_STREAMS and "make capacity FRAMES=720p" in note
    (tmp_path / "capacity").mkdir()
    (tmp_path / "capacity" / "capacity.json").write_text(json.dumps({"by_frames": {
        "720p": {"capacity_streams": 15, "frame_set": {"width": 1280, "height": 720}}}}))
    assert streams_for(0, tmp_path, "720p", 0.8) == (12, "12 streams = 80% of the capacity of 15 streams measured "
                                                          "with 720p frames")
    assert streams_for(0, tmp_path, "720p", 0.7)[0] == 10


def test_results_follow_the_artifacts_folder(tmp_path):
    args = argparse.Namespace(out=None, artifacts=tmp_path / "elsewhere")
    assert default_out(args, "soak") == tmp_path / "elsewhere" / "soak"
    args.out = tmp_path / "mine"
    assert default_out(args, "soak") == tmp_path / "mine"


@pytest.mark.parametrize("module, argv, expected", [
    ("loadtest.run", [], LoadSpec()),
    ("loadtest.soak", [], LoadSpec(streams=0, duration_s=600.0)),
    ("loadtest.capacity", ["capacity"], LoadSpec(duration_s=15.0)),
])
def test_the_clis_defaults_are_the_spec_s(module, argv, expected, monkeypatch):
    """What each CLI would run with no option given (parsing stops before any work)."""
    import importlib
    import signal

    captured = {}
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}  # cli_entry installs its own

    def stop(self, args=None, namespace=None):
        captured["args"] = argparse.ArgumentParser.parse_known_args(self, args, namespace)[0]
        raise KeyboardInterrupt

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    try:
        with pytest.raises(SystemExit):  # cli_entry turns the interrupt into exit 130
            importlib.import_module(module).main(argv)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert spec_from_args(captured["args"]) == expected
