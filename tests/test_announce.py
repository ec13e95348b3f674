"""The announcement lines: ours round-trip, the guide's are understood, versions do not clash."""

from __future__ import annotations

from aml_debug_magics.node.announce import (
    Announcement,
    AttachOutcome,
    LogReader,
    format_announcement,
    format_outcome,
    guide_line_after_wait,
    guide_lines_before_wait,
    parse_line,
)

NODE = Announcement(addresses=("10.0.0.4", "10.0.1.4"), port=5679, attach_deadline=1800000000.5,
                    pid=42, rank=1, local_rank=1, script="/mnt/wd/train.py", cwd="/mnt/wd",
                    hostname="node-1", just_my_code=False, source_root="/mnt/wd")


def test_our_lines_round_trip():
    assert parse_line(format_announcement(NODE)) == NODE
    outcome = AttachOutcome(attached=True, pid=42, rank=1)
    assert parse_line(format_outcome(outcome)) == outcome


def test_other_lines_and_other_versions_are_ignored():
    assert parse_line("epoch 1: loss 0.3") is None
    assert parse_line(format_announcement(NODE).replace(" v1 ", " v2 ")) is None
    assert parse_line('AML_DEBUG v1 announce {"port": 1}') is None  # no addresses
    assert parse_line("AML_DEBUG v1 announce {not json}") is None


def test_the_guides_lines_make_an_announcement_with_a_deadline():
    now = [1000.0]
    reader = LogReader(clock=lambda: now[0])
    assert reader.feed("Timeout for debug connection: 300") == []
    now[0] = 1002.0
    [found] = reader.feed("ip_address: 10.0.0.7")
    assert found == Announcement(("10.0.0.7",), 5678, attach_deadline=1300.0, source="guide")
    assert found.seconds_left(1250.0) == 50.0
    assert reader.feed("Debugger attached = False") == [AttachOutcome(False, source="guide")]


def test_ours_win_over_the_guides_lines_printed_alongside():
    reader = LogReader()
    lines = [format_announcement(NODE), *guide_lines_before_wait(NODE, 300),
             guide_line_after_wait(True), format_outcome(AttachOutcome(True, 42, 1))]
    news = [n for line in lines for n in reader.feed(line)]
    assert news == [NODE, AttachOutcome(True, 42, 1)]
