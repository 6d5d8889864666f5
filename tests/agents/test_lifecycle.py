"""The agent's lifecycle, lease clock and watchdog as tables, on an injected clock (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from agents.lifecycle import Block, LeaseClock, State, derive_state
from agents.watchdog import Act, Seen, Timing, watch

B = Block

# blocks, started, stopped, stopping, ownership lost, kill state -> state
STATE_TABLE = [
    (set(), False, False, False, False, "running", State.STARTING),
    ({B.STARTING}, False, False, False, False, "running", State.STARTING),
    (set(), True, False, False, False, "running", State.QUOTING),
    ({B.MARKET_STALE}, True, False, False, False, "running", State.PAUSED),
    ({B.MARKET_LAG}, True, False, False, False, "running", State.PAUSED),
    ({B.MARKET_STREAM}, True, False, False, False, "running", State.PAUSED),
    ({B.LEASE}, True, False, False, False, "running", State.PAUSED),
    ({B.ASKING}, True, False, False, False, "running", State.PAUSED),
    ({B.USER_STREAM, B.MARKET_STALE}, True, False, False, False, "running", State.RESYNCING),
    ({B.RESYNC}, True, False, False, False, "halted", State.RESYNCING),
    (set(), True, False, False, False, "halted", State.HALTED),
    ({B.MARKET_STALE}, True, False, False, False, "halted", State.HALTED),
    (set(), True, False, False, False, "flattening", State.FLATTENING),
    ({B.LEASE}, True, False, False, True, "running", State.HALTED),
    ({B.STOPPING}, True, False, True, False, "running", State.HALTED),
    ({B.STOPPING}, True, True, True, False, "running", State.STOPPED),
]


@pytest.mark.parametrize("blocks,started,stopped,stopping,lost,kill,expected", STATE_TABLE)
def test_state_table(blocks, started, stopped, stopping, lost, kill, expected):
    got = derive_state(blocks, started=started, stopped=stopped, stopping=stopping, ownership_lost=lost,
                       kill_state=kill)
    assert got is expected


def test_block_names_are_the_status_strings():
    assert {b.value for b in Block} == {"starting", "user_stream", "market_stream", "market_stale", "market_lag",
                                        "resync", "lease", "asking", "deadman", "key_refused", "stopping"}
    assert "market_stale" in {Block.MARKET_STALE}


def test_lease_clock_margin_renewal_and_loss():
    clock = LeaseClock(margin_s=1.0)
    assert not clock.ok(0.0) and clock.left(0.0) is None
    clock.granted(sent_at=10.0, ttl_s=3.0)  # valid from the send, less the margin
    assert clock.ok(11.9) and not clock.ok(12.0)
    assert clock.left(11.0) == pytest.approx(1.0)
    clock.granted(sent_at=11.5, ttl_s=3.0)
    assert clock.ok(13.4)
    clock.lose()
    assert not clock.ok(13.4) and clock.lost
    clock.granted(sent_at=14.0, ttl_s=3.0)  # a late answer cannot bring a lost lease back
    assert not clock.ok(14.5)


T = Timing(market_stale_sec=5.0, user_stream_grace_sec=2.0, stream_max_lifetime_sec=100.0, lease_pull_sec=10.0)


def seen(**kw) -> Seen:
    base = dict(now=50.0, lease_ok=True, lease_blocked=False, ownership_lost=False, rearming=False, last_book=49.0,
                market_opened=0.0, market_connected=True, market_stale_blocked=False, user_lost_at=None,
                user_opened=0.0, user_connected=True, last_mark=49.5)
    base.update(kw)
    return Seen(**base)


WATCH_TABLE = [
    ("all well", {}, []),
    ("lease lapsed", {"lease_ok": False}, [Act.LEASE_LAPSED]),
    ("lease lapsed, already blocked", {"lease_ok": False, "lease_blocked": True}, []),
    ("lease lapsed 9.9 s ago", {"lease_ok": False, "lease_blocked": True, "lease_lapsed_at": 40.1}, []),
    ("lease lapsed 10 s ago: pull", {"lease_ok": False, "lease_blocked": True, "lease_lapsed_at": 40.0},
     [Act.LEASE_PULL]),
    ("lease lapsed 10 s ago, pulled", {"lease_ok": False, "lease_blocked": True, "lease_lapsed_at": 40.0,
                                       "lease_pulled": True}, []),
    ("ownership lost 10 s ago: pull", {"lease_ok": False, "lease_blocked": True, "ownership_lost": True,
                                       "lease_lapsed_at": 40.0}, [Act.LEASE_PULL]),
    ("lease back after a pull: re-arm", {"lease_blocked": True, "lease_lapsed_at": 30.0, "lease_pulled": True},
     [Act.REARM]),
    ("lease back: re-arm first", {"lease_blocked": True}, [Act.REARM]),
    ("lease back, re-arm under way", {"lease_blocked": True, "rearming": True}, []),
    ("lease back but ownership lost", {"lease_blocked": True, "ownership_lost": True}, []),
    ("no book for 5 s", {"last_book": 44.9}, [Act.MARKET_STALE]),
    ("no book yet, the stream just opened", {"last_book": None, "market_opened": 48.0}, []),
    ("no book since the stream opened 5 s ago", {"last_book": None, "market_opened": 44.9}, [Act.MARKET_STALE]),
    ("stale but the stream is down", {"last_book": 40.0, "market_connected": False}, []),
    ("stale, already blocked", {"last_book": 40.0, "market_stale_blocked": True}, []),
    ("fresh again", {"market_stale_blocked": True}, [Act.MARKET_FRESH]),
    ("silent 3x stale: swap", {"last_book": 30.0, "market_opened": 20.0, "market_stale_blocked": True}, [Act.SWAP_MARKET]),
    ("user stream lost within the grace", {"user_lost_at": 48.5, "user_connected": False}, []),
    ("user stream lost past the grace", {"user_lost_at": 48.0, "user_connected": False}, [Act.REST_FALLBACK]),
    ("no mark for 3x stale while books come: swap", {"last_mark": 34.9}, [Act.SWAP_MARKET]),
    ("no mark yet, the stream opened 10 s ago", {"last_mark": None, "market_opened": 40.0}, []),
    ("no mark since the stream opened 15 s ago", {"last_mark": None, "market_opened": 34.9}, [Act.SWAP_MARKET]),
    ("marks silent but the stream is down", {"last_mark": 30.0, "market_connected": False}, []),
    ("user stream at its lifetime", {"now": 100.5, "last_book": 100.0, "last_mark": 100.0, "market_opened": 90.0},
     [Act.SWAP_USER]),
    ("market stream at its lifetime", {"now": 100.5, "last_book": 100.0, "last_mark": 100.0, "user_opened": 90.0},
     [Act.SWAP_MARKET]),
    ("dead-man countdown with time left", {"deadman_left": 0.1}, []),
    ("dead-man countdown run out: block", {"deadman_left": 0.0}, [Act.DEADMAN_EXPIRED]),
    ("dead-man countdown run out, already blocked", {"deadman_left": -5.0, "deadman_blocked": True}, []),
    ("dead-man countdown run out, the lease lapsed (its re-arm decides)",
     {"deadman_left": -5.0, "lease_ok": False, "lease_blocked": True}, []),
    ("dead-man switch not armed yet (starting)", {"deadman_left": None}, []),
]


@pytest.mark.parametrize("what,changes,expected", WATCH_TABLE, ids=[row[0] for row in WATCH_TABLE])
def test_watchdog_table(what, changes, expected):
    assert watch(seen(**changes), T) == expected


def test_watchdog_on_a_clock_pulls_then_frees_quotes_as_books_stop_and_return():
    """Walk the clock: books every second, then none for a while, then books again."""
    blocked = False
    last_book = 0.0
    acts: list[tuple[float, Act]] = []
    for tick in range(0, 200):
        now = tick * 0.25
        if now < 10.0 or now >= 20.0:
            last_book = now
        for act in watch(seen(now=now, last_book=last_book, market_stale_blocked=blocked, market_opened=0.0), T):
            acts.append((now, act))
            if act is Act.MARKET_STALE:
                blocked = True
            elif act is Act.MARKET_FRESH:
                blocked = False
    assert [a for _, a in acts] == [Act.MARKET_STALE, Act.MARKET_FRESH]
    # the last book at 9.75 s: stale once more than 5 s old (at 15.0 s), fresh with the next book
    assert acts[0][0] == pytest.approx(15.0) and acts[1][0] == pytest.approx(20.0)
