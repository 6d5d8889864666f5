"""The IP's holds shared by a host's processes (fleet/binance/host_holds.py): real files, real processes."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys

from fleet.binance.host_holds import LONGEST_HOLD_S, HostHolds
from fleet.binance.ratelimit import Cost, RateBudget

URL = "http://127.0.0.1:8123"
MINUTE = 1_796_000_040_000  # a minute's boundary on the exchange's clock (ms)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _pair(tmp_path, url: str = URL):
    """Two budgets as two processes of one host would hold them: each its own view of the file."""
    wall, mono = Clock(1_800_000_000.0), Clock(50.0)
    out = []
    for target in (URL, url):
        budget = RateBudget(clock=mono)
        budget.share_host_holds(HostHolds(target, tmp_path, wall=wall, monotonic=mono))
        out.append(budget)
    return out, wall, mono


def test_a_429_or_a_ban_one_budget_is_told_holds_the_others_until_it_ends(tmp_path):
    (a, b), wall, mono = _pair(tmp_path)
    a.note_retry_after(5.0)
    assert b.wait_time(Cost(weight=1)) == 5.0 and b.holds() == ["rate_limited"]
    assert b.orders_available(risk=True) == 0 and "another process of this host was told of (429)" in b.why_wait(Cost(weight=1))
    wall.t += 5.0
    mono.t += 5.0
    assert b.wait_time(Cost(weight=1)) == 0.0 and b.holds() == []
    a.note_banned(120.0)
    mono.t += 1.0
    wall.t += 1.0
    assert b.blocked_for() == 119.0 and "418 ban" in b.why_wait(Cost(weight=1))
    a.note_retry_after(3.0)   # a shorter hold never cuts a longer one short
    mono.t += 1.0
    wall.t += 1.0
    assert b.blocked_for() == 118.0
    assert (b.rate_limited, b.banned) == (0, 0)   # the other's holds are not its own answers


def test_an_order_count_429_is_the_accounts_and_stays_with_its_budget(tmp_path):
    (a, b), _, _ = _pair(tmp_path)
    a.note_retry_after(5.0, orders_only=True)
    assert b.holds() == [] and not list(tmp_path.glob("ip-*.hold"))


def test_a_minute_of_weight_spent_as_the_exchange_reports_it_holds_the_host_to_the_minutes_end(tmp_path):
    (a, b), wall, mono = _pair(tmp_path)
    a.observe_headers({"X-MBX-USED-WEIGHT-1M": "2401"}, server_ms=MINUTE + 45_000)
    left = b.blocked_for()
    assert 15.0 <= left <= 15.0 + 1.0 and "weight spent" in b.why_wait(Cost(orders_10s=1, orders_1m=1))


def test_a_minute_spent_only_beyond_a_limit_a_429_named_holds_this_process_alone(tmp_path):
    """A 429 named a lower IP limit (100), which this budget keeps a while as its ceiling; the exchange lists
    2,400 (it raised it again): a count of 300 is this process's own caution, not the exchange's refusal.
    It held every process of the host as "weight spent" (minutes after the exchange had raised the limit,
    a kill waited 12 s for it); it holds this one alone now. Beyond the listed limit it holds the host."""
    (a, b), wall, mono = _pair(tmp_path)
    a.set_limits(weight_per_min=2400)
    a.set_limits(weight_per_min=100, named=True)
    a.observe_headers({"X-MBX-USED-WEIGHT-1M": "300"}, server_ms=MINUTE + 45_000)
    assert a.orders_available() == 0 and b.blocked_for() == 0.0
    a.observe_headers({"X-MBX-USED-WEIGHT-1M": "2401"}, server_ms=MINUTE + 46_000)
    mono.t += 1.0   # (the file is read again at most every CHECK_EVERY_S)
    assert b.blocked_for() > 0 and "weight spent" in b.why_wait(Cost(orders_10s=1, orders_1m=1))


def test_another_exchange_address_shares_nothing(tmp_path):
    (a, b), _, _ = _pair(tmp_path, "http://127.0.0.1:8124")
    a.note_retry_after(5.0)
    assert b.holds() == [] and b.wait_time(Cost(weight=1)) == 0.0


def test_a_file_that_does_not_read_is_no_hold_said_once(tmp_path, caplog):
    wall, mono = Clock(1_800_000_000.0), Clock(50.0)
    holds = HostHolds(URL, tmp_path, wall=wall, monotonic=mono)
    for text in ('{"until": "soon"', '["until"]', f'{{"until": {wall.t + 9}, "for": {LONGEST_HOLD_S * 2}, "what": "x"}}',
                 '{"until": NaN, "for": 5, "what": "x"}', f'{{"until": {wall.t + 9}, "for": 9, "what": "x", "limit": "0"}}',
                 f'{{"until": {wall.t + 9}, "for": 9, "what": "x", "limit": 0}}'):
        holds.path.unlink(missing_ok=True)
        holds.path.write_text(text)
        mono.t += 1.0
        with caplog.at_level(logging.WARNING, logger="fleet.binance.host_holds"):
            assert holds.left() == 0.0, text
    assert len([r for r in caplog.records if "does not read" in r.getMessage()]) == 1
    holds.hold(2.0, "429", 1200)   # and a hold written over it reads again, with the limit the 429 named
    assert holds.left() == 2.0 and holds.weight_limit == 1200


def test_a_wall_clock_stepped_back_does_not_lengthen_a_hold(tmp_path):
    (a, b), wall, mono = _pair(tmp_path)
    a.note_retry_after(5.0)
    wall.t -= 3_600.0
    mono.t += 1.0
    assert b.blocked_for() == 5.0


def test_a_directory_or_file_not_the_users_own_shares_nothing_and_never_blocks(tmp_path, caplog):
    """A name in /dev/shm another user made first (writable by others), a link or a pipe at the hold's
    path: no hold read from it, none written into it, said; a pipe never blocks the reader."""
    shared = tmp_path / "planted"
    shared.mkdir()
    shared.chmod(0o777)
    holds = HostHolds(URL, shared)
    holds.path.write_text('{"until": 9999999999, "for": 259200, "what": "planted"}')
    with caplog.at_level(logging.WARNING, logger="fleet.binance.host_holds"):
        assert holds.left() == 0.0
        holds.hold(5.0, "429")
    assert holds.written == 0 and "planted" in holds.path.read_text()
    said = [r.getMessage() for r in caplog.records]
    assert any("only it may write" in m for m in said)
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    piped = HostHolds(URL, own)
    os.mkfifo(piped.path)
    assert piped.left() == 0.0   # returns: no writer on the pipe, and it is not a regular file
    target = own / "elsewhere.json"
    target.write_text('{"until": 9999999999, "for": 259200, "what": "linked"}')
    linked = HostHolds("http://127.0.0.1:9", own)
    linked.path.symlink_to(target)
    assert linked.left() == 0.0


def _told(directory, seconds, what, barrier):
    holds = HostHolds(URL, directory)
    barrier.wait()
    holds.hold(seconds, what)


def test_processes_told_at_once_keep_the_longest_hold(tmp_path):
    """Writers take the directory's lock around read, compare and replace: a 429's second written at the
    same moment as a ban never replaces the ban (unlocked, 186 of 300 such rounds ended with the second)."""
    ctx = multiprocessing.get_context("fork")
    for round_ in range(30):
        d = tmp_path / f"r{round_}"
        d.mkdir(mode=0o700)
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_told, args=(d, seconds, what, barrier))
                 for seconds, what in ((120.0, "418 ban"), (1.0, "429"))]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
        held = HostHolds(URL, d)
        assert held.left() > 100 and held.what == "418 ban", round_


def test_a_hold_written_by_another_process_is_read_here(tmp_path):
    """The writer is a real second process, as two agents of one host are."""
    code = ("from fleet.binance.host_holds import HostHolds; import sys; "
            "HostHolds(sys.argv[1]).hold(30.0, '418 ban')")
    env = {**os.environ, "MMFLEET_HOST_HOLDS_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code, URL], check=True, env=env, cwd=os.getcwd(), timeout=60)
    here = HostHolds(URL, tmp_path)
    assert 25.0 < here.left() <= 30.0 and here.what == "418 ban"
    assert (here.path.stat().st_mode & 0o077) == 0   # the user's own
