"""A short run of the power-cut harness (`python -m sim.powercut`): the real daemon in its own
process, killed with SIGKILL in each phase at least once, the ccTalk acceptor in a process of its
own crediting coins while the kiosk is down, and every invariant checked after every restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim.cctalk_device import SimCcTalkAcceptor
from sim.powercut import PHASES
from sim.powercut_world import replay

TIMEOUT_S = 240.0  # a generous ceiling for a run that takes about half a minute


def test_a_short_campaign_of_power_cuts_breaks_no_invariant(tmp_path: Path) -> None:
    # Five lives: ccTalk killed in a burst, a ledger write and an outbox send, with seven
    # coins into the acceptor after each kill (more than its buffer holds); then the pulse
    # profile killed mid-vend and in a burst.
    done = subprocess.run(
        [
            *(sys.executable, "-m", "sim.powercut", "--cycles", "5", "--seed", "7", "--json"),
            *("--phases", "burst,ledger_write,outbox,vend", "--downtime", "7"),
            *("--dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout)
    assert figures["violations"] == []
    assert figures["cycles"] == 5
    assert figures["kills"] == {"burst": 2, "ledger_write": 1, "outbox": 1, "vend": 1}
    assert figures["mid_vend"] >= 1  # the vend kill left a vend pending
    assert figures["interrupted_vends"] >= 1  # ... and the restart resolved it uncharged
    assert figures["sales"] >= 1
    assert figures["lost_by_device"] >= 2  # seven coins while down, five kept: reported lost
    assert len(figures["first_229_s"]) == 4  # three restarts and the final start, timed
    assert all(0 < s < 30 for s in figures["first_229_s"])
    assert set(figures["kills"]) <= set(PHASES)


def test_the_world_journal_replays_where_a_cut_turn_stopped(tmp_path: Path) -> None:
    journal = tmp_path / "world.jsonl"
    lines = [
        {"t": 10.0, "ev": "on", "slot": 1, "progress": 0.0},
        {"t": 10.9, "ev": "drop", "slot": 1},
        {"t": 11.0, "ev": "home", "slot": 1},
        {"t": 11.0, "ev": "off", "slot": 1, "progress": 0.0},
        {"t": 12.0, "ev": "on", "slot": 2, "progress": 0.2},
        {"t": 12.1, "ev": "coin", "value": 5, "done": 13.0},
        {"t": 12.5, "ev": "power_cut"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    journal.write_text(text + '{"t": 12.6, "ev": "drop", "sl')  # torn by the kill
    truth = replay(journal, revolution_s=1.0)
    assert truth.drops == {1: 1}
    assert truth.progress == {1: 0.0, 2: pytest.approx(0.7)}
    assert truth.turning_since == {}
    assert truth.cashbox == [(5, 13.0)]
    assert truth.power_cuts == [12.5]


def test_a_killed_host_reads_again_what_it_had_not_kept() -> None:
    device = SimCcTalkAcceptor(echo=False)
    try:
        device.master_enabled, device.masks = True, 0b111
        device.insert(5)
        with device._lock:  # a host read it (229) ...
            device._handle(229, b"")
        device.host_down(None)  # ... and died before keeping it
        for value in (1, 1, 1, 1, 1):
            device.insert(value)
        assert device.truth.lost_values == [5]  # pushed off the buffer unread by any survivor
        with device._lock:
            device._handle(229, b"")
        device.host_down(6)  # this one kept everything, up to the counter's 6th event
        device.power_cycle()
        assert device.truth.wiped == []
        device.master_enabled, device.masks = True, 0b111
        device.insert(2)
        device.power_cycle()
        assert device.truth.wiped == [2]
    finally:
        device.close()
