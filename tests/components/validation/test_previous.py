"""The previous interval of an episode output: the sibling of the SAME length that ends where it
starts (a 12-hour base period is not the previous interval of the hour after it)."""

from __future__ import annotations

from components.validation.sources import find_previous_episodes

from .builders import END, START, make_episodes, write_episodes


def _output(root, start, end):
    return write_episodes(root, start=start, end=end, episodes=make_episodes(start=start))


def test_only_an_equally_long_sibling_ending_at_the_start_is_the_previous_interval(tmp_path):
    span = END - START
    cur = _output(tmp_path / "interval=cur", START, END)
    _output(tmp_path / "interval=longer", START - 2 * span, START)  # ends at START, twice as long

    assert find_previous_episodes(str(cur)) is None

    same = _output(tmp_path / "interval=prev", START - span, START)
    assert find_previous_episodes(str(cur)) == str(same)
