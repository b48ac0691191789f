"""The capacity search's order of probes, alone and with two sides in lockstep (no server: the
probes are stand-ins that hold up to a known stream count and record when they were asked)."""

import pytest

from loadtest.capacity import bisection, drive, find_capacities_side_by_side


class Holds:
    """Holds up to `limit` streams; `calls` records (name, streams) in the order asked."""

    def __init__(self, name, limit, calls):
        self.name, self.limit, self.calls = name, limit, calls
        self.asked = []

    def __call__(self, streams):
        self.calls.append((self.name, streams))
        self.asked.append(streams)
        return streams <= self.limit

    def result(self, capacity):
        return {"capacity_streams": capacity, "asked": list(self.asked)}


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 7, 12, 15, 16, 17, 63, 64])
def test_the_bisection_finds_the_largest_count_held_and_never_asks_twice(limit):
    probe = Holds("one", limit, [])
    assert drive(bisection(64), probe) == limit
    assert len(probe.asked) == len(set(probe.asked))
    assert probe.asked[0] == 1


def test_the_bisection_asks_doubling_counts_then_halves_the_gap():
    probe = Holds("one", 13, [])
    drive(bisection(64), probe)
    assert probe.asked == [1, 2, 4, 8, 16, 12, 14, 13]


def test_side_by_side_each_side_gets_its_own_capacity_and_the_sides_take_turns():
    calls = []
    probes = {"on": Holds("on", 13, calls), "off": Holds("off", 5, calls)}
    found = find_capacities_side_by_side(probes, max_streams=64)
    assert found["on"]["capacity_streams"] == 13 and found["off"]["capacity_streams"] == 5
    # the same probes as each side alone
    assert found["on"]["asked"] == [1, 2, 4, 8, 16, 12, 14, 13]
    assert found["off"]["asked"] == [1, 2, 4, 8, 6, 5]
    # while both search, they alternate and the first of each pair alternates too
    both = calls[:2 * 6]
    assert [name for name, _ in both] == ["on", "off", "off", "on", "on", "off", "off", "on", "on", "off", "off", "on"]
    # once one side is done the other goes on alone
    assert [name for name, _ in calls[12:]] == ["on", "on"]


def test_three_sides_side_by_side_each_opens_a_step_in_turn():
    """Rotated, not reversed: with dataset, 720p and 1080p the middle size opens steps too, and no
    size runs twice in a row while all three search."""
    calls = []
    probes = {name: Holds(name, 40, calls) for name in ("dataset", "720p", "1080p")}
    find_capacities_side_by_side(probes, max_streams=64)
    steps = [[name for name, _ in calls[i:i + 3]] for i in range(0, 9, 3)]
    assert steps == [["dataset", "720p", "1080p"], ["720p", "1080p", "dataset"], ["1080p", "dataset", "720p"]]
    order = [name for name, _ in calls]
    assert all(a != b for a, b in zip(order, order[1:])), order
