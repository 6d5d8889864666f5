"""Ownership in the fleet: epochs, leases and kill states, in the book and in the controller actor.

The book's rules are checked with a plain in-memory store and an explicit clock; the controller's
durability (GCS key-value store) with a real local Ray cluster, across a SIGKILL of its process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest

from agents.ownership import OwnershipLost
from agents.lease_client import LeaseOwnership, grant_from_answer
from controller.lease import LeaseBook, MemoryStore, WriteThroughStore


def book(ttl: float = 3.0) -> LeaseBook:
    return LeaseBook(MemoryStore(), lease_ttl_s=ttl)


def test_new_holder_waits_for_the_old_lease_to_lapse_then_gets_a_larger_epoch():
    b = book()
    first = b.acquire("ETHUSDC", "a", now=100.0)
    assert first.granted and first.epoch == 1
    refused = b.acquire("ETHUSDC", "b", now=101.0)
    assert not refused.granted and refused.owner == "a" and refused.wait_s == pytest.approx(2.0)
    assert b.acquire("ETHUSDC", "b", now=102.9).granted is False
    second = b.acquire("ETHUSDC", "b", now=103.0)
    assert second.granted and second.epoch == 2


def test_renewal_extends_only_the_current_holders_lease():
    b = book()
    a = b.acquire("ETHUSDC", "a", now=0.0)
    assert b.renew("ETHUSDC", "a", a.epoch, now=2.5).granted
    assert not b.acquire("ETHUSDC", "b", now=5.0).granted  # renewed at 2.5: lasts until 5.5
    taken = b.acquire("ETHUSDC", "b", now=5.5)
    assert taken.granted and taken.epoch == 2
    stale = b.renew("ETHUSDC", "a", a.epoch, now=5.6)
    assert not stale.granted and "held by b" in stale.reason
    with pytest.raises(OwnershipLost):
        grant_from_answer(stale.to_dict())


def test_release_lets_a_successor_in_at_once_and_never_drops_anothers_lease():
    b = book()
    a = b.acquire("BTCUSDT", "a", now=0.0)
    assert not b.release("BTCUSDT", "intruder")
    assert b.release("BTCUSDT", "a", a.epoch)
    assert b.release("BTCUSDT", "a", a.epoch) is False  # idempotent
    assert b.acquire("BTCUSDT", "b", now=0.1).epoch == 2


def test_revoked_lease_is_not_renewed_but_still_fences_successors_until_it_lapses():
    b = book()
    a = b.acquire("SOLUSDT", "a", now=0.0)
    b.revoke("SOLUSDT")
    assert not b.renew("SOLUSDT", "a", a.epoch, now=1.0).granted
    assert not b.acquire("SOLUSDT", "a", now=1.0).granted  # not even by the same holder
    assert b.acquire("SOLUSDT", "a", now=3.0).epoch == 2


def test_a_barred_holder_never_owns_the_symbol_again_and_others_are_not_held_back():
    """A process the fence took off a symbol (no longer its actor, or asked to be killed as hung) stops
    when its renewal is refused, releases and asks again: refused, even with no lease live, so the
    symbol's actor gets the next epoch (a hostile run: the old process won epoch 2 first). Kept in the
    store, so a restarted controller refuses it too; other symbols and holders are untouched."""
    store = MemoryStore()
    b = LeaseBook(store, lease_ttl_s=3.0)
    old = b.acquire("SOLUSDT", "vm:11:aa", now=0.0)
    b.revoke("SOLUSDT")
    b.bar("SOLUSDT", "vm:11:aa")
    assert b.release("SOLUSDT", "vm:11:aa", old.epoch)
    again = b.acquire("SOLUSDT", "vm:11:aa", now=0.5)
    assert not again.granted and "may not own" in again.reason and again.wait_s > 0
    assert not LeaseBook(store, lease_ttl_s=3.0).acquire("SOLUSDT", "vm:11:aa", now=0.6).granted
    successor = b.acquire("SOLUSDT", "vm:12:bb", now=0.7)
    assert successor.granted and successor.epoch == old.epoch + 1
    assert b.acquire("BTCUSDT", "vm:11:aa", now=0.8).granted   # barred from that symbol only
    for n in range(40):
        b.bar("SOLUSDT", f"vm:{100 + n}:cc")
    assert len(b.barred("SOLUSDT")) == 16 and b.barred("SOLUSDT")[-1] == "vm:139:cc"
    store.put("barred/SOLUSDT", "not json")
    assert b.barred("SOLUSDT") == []


def test_every_acquire_grants_a_fresh_larger_epoch_even_to_the_same_holder():
    b = book()
    first = b.acquire("ETHUSDC", "a", now=0.0)
    again = b.acquire("ETHUSDC", "a", now=1.0)  # the same actor, a new incarnation, its lease still live
    assert again.granted and again.epoch == first.epoch + 1
    assert b.renew("ETHUSDC", "a", again.epoch, now=2.0).epoch == again.epoch  # a renewal keeps it
    assert not b.renew("ETHUSDC", "a", first.epoch, now=2.0).granted  # the old incarnation is fenced
    assert not b.acquire("ETHUSDC", "b", now=2.5).granted  # others still wait for the lease to lapse


def test_epochs_only_grow_even_after_a_lease_is_forgotten():
    b = book()
    b.acquire("ETHUSDC", "a", now=0.0)
    b.forget("ETHUSDC")
    assert b.acquire("ETHUSDC", "b", now=0.0).epoch == 2


def test_kill_state_is_recorded_and_reported_in_grants():
    b = book()
    b.set_kill_state("ETHUSDC", "halted", "desk", now=5.0)
    g = b.acquire("ETHUSDC", "a", now=6.0)
    assert g.kill_state == "halted"
    assert b.kill_record("ETHUSDC").reason == "desk"
    b.set_kill_state("ETHUSDC", "running")
    assert b.renew("ETHUSDC", "a", g.epoch, now=7.0).kill_state == "running"
    with pytest.raises(ValueError, match="kill state must be one of"):
        b.set_kill_state("ETHUSDC", "paused")


def test_unreadable_kill_record_fails_safe_to_halted():
    store = MemoryStore()
    store.put("kill/ETHUSDC", "{not json")
    assert LeaseBook(store).kill_state("ETHUSDC") == "halted"


class CountingStore(MemoryStore):
    """A MemoryStore that counts the reads that reach it (the GCS round trips a cache saves)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get(self, key: str) -> str | None:
        self.reads.append(key)
        return super().get(key)

    async def aget_many(self, keys: list[str]) -> dict[str, str | None]:   # as the GCS store's: one round trip
        self.reads.append(f"aget_many {len(keys)}")
        return {k: self.data.get(k) for k in keys}


def test_kill_records_read_at_once_equal_those_read_one_by_one():
    store = CountingStore()
    b = LeaseBook(WriteThroughStore(store, ("lease/", "epoch/")), lease_ttl_s=3.0)
    b.set_kill_state("ETHUSDC", "halted", "desk", now=5.0)
    b.set_kill_state("BTCUSDC", "flattening", "drill", now=6.0)
    b.set_kill_state("BTCUSDC", "running", "resumed", now=7.0)
    b.store.put("kill/SOLUSDC", "{not json")
    store.reads.clear()
    at_once = asyncio.run(b.akill_records(["ETHUSDC", "BTCUSDC", "SOLUSDC", "XRPUSDC"]))
    assert store.reads == ["aget_many 8"]          # every record and its sequence number, in one call
    assert at_once == {s: b.kill_record(s) for s in ("ETHUSDC", "BTCUSDC", "SOLUSDC")}   # XRPUSDC: none stored
    assert at_once["BTCUSDC"].seq == 2 and at_once["SOLUSDC"].state == "halted"
    assert sorted(b.kill_record_symbols()) == ["BTCUSDC", "ETHUSDC", "SOLUSDC"]
    assert asyncio.run(b.akill_records([])) == {}


def test_the_controllers_book_reads_leases_from_memory_but_kill_states_always_from_the_store():
    store = CountingStore()
    b = LeaseBook(WriteThroughStore(store, ("lease/", "epoch/")), lease_ttl_s=3.0)
    grant = b.acquire("ETHUSDC", "a", now=0.0)
    store.reads.clear()
    for t in (1.0, 2.0, 3.0):
        assert b.renew("ETHUSDC", "a", grant.epoch, now=t).granted
        assert b.lease("ETHUSDC").expires_at == t + 3.0   # what the fence reads every tick
    assert not [k for k in store.reads if k.startswith("lease/")]
    assert {k for k in store.reads} == {"kill/ETHUSDC", "killseq/ETHUSDC"}  # the endpoint writes those too
    store.put("kill/ETHUSDC", '{"state": "halted", "reason": "by the endpoint", "since": 1.0}')
    assert b.renew("ETHUSDC", "a", grant.epoch, now=4.0).kill_state == "halted"
    assert store.get("lease/ETHUSDC") is not None and b.lease("ETHUSDC").expires_at == 7.0  # written through


def test_an_acquire_reads_the_lease_and_epoch_afresh_so_an_epoch_is_never_granted_twice():
    store = MemoryStore()
    b = LeaseBook(WriteThroughStore(store, ("lease/", "epoch/")), lease_ttl_s=3.0)
    assert b.acquire("ETHUSDC", "a", now=0.0).epoch == 1
    # Another copy of the controller (Ray replacing it) granted epoch 2 meanwhile, past this cache.
    other = LeaseBook(store, lease_ttl_s=3.0)
    assert other.acquire("ETHUSDC", "b", now=10.0).epoch == 2
    assert b.acquire("ETHUSDC", "c", now=20.0).epoch == 3
    b.forget("ETHUSDC")
    assert b.lease("ETHUSDC") is None and store.get("lease/ETHUSDC") is None


# --- the controller actor on a real local Ray cluster -------------------------------------------


def _controller(ray, ttl: float):
    from controller.controller import FleetController

    name = f"lease{uuid.uuid4().hex[:6]}"
    ns = f"mmfleet-{name}"
    handle = FleetController.options(name="controller", namespace=ns, lifetime="detached", num_cpus=0,
                                     max_restarts=-1, max_task_retries=-1).remote(name, ns, {"lease_ttl_s": ttl})
    return handle, ns


@pytest.fixture
def controller(ray_cluster):
    handle, ns = _controller(ray_cluster, 1.5)
    yield ray_cluster, handle, ns
    ray_cluster.kill(handle)


@pytest.fixture
def durable_controller(ray_cluster):
    handle, ns = _controller(ray_cluster, 60.0)
    yield ray_cluster, handle, ns
    ray_cluster.kill(handle)


def _wait(ray, ref, timeout=30):
    return ray.get(ref, timeout=timeout)


def test_gcs_kv_keeps_epochs_leases_and_kill_state_across_a_controller_sigkill(durable_controller):
    from controller.lease import GcsStore
    from controller.lease import LeaseBook as Book

    ray, ctl, ns = durable_controller
    first = _wait(ray, ctl.acquire_lease.remote("ETHUSDC", "holder-1"))
    assert first["granted"] and first["epoch"] == 1
    pid = _wait(ray, ctl.__ray_call__.remote(lambda self: os.getpid()))
    _wait(ray, ctl.__ray_call__.remote(lambda self: self.book.set_kill_state("ETHUSDC", "halted", "drill")))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        try:
            new_pid = _wait(ray, ctl.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
            if new_pid != pid:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "controller did not come back after SIGKILL"
        time.sleep(0.2)
    refused = _wait(ray, ctl.acquire_lease.remote("ETHUSDC", "holder-2"))
    assert not refused["granted"] and refused["owner"] == "holder-1"  # the lease survived the restart
    renewed = _wait(ray, ctl.renew_lease.remote("ETHUSDC", "holder-1", 1))
    assert renewed["granted"] and renewed["epoch"] == 1 and renewed["kill_state"] == "halted"
    assert Book(GcsStore(ns.removeprefix("mmfleet-"))).kill_state("ETHUSDC") == "halted"


def test_lease_ownership_waits_for_lapse_and_reports_refusal_as_ownership_lost(controller):
    ray, ctl, _ = controller

    async def scenario():
        old = LeaseOwnership(ctl, "BTCUSDT", "old")
        new = LeaseOwnership(ctl, "BTCUSDT", "new")
        g_old = await old.acquire()
        t0 = time.monotonic()
        g_new = await new.acquire()  # old never renews: new waits for its lease (1.5 s) to lapse
        waited = time.monotonic() - t0
        with pytest.raises(OwnershipLost):
            await old.renew()
        await new.release()
        again = LeaseOwnership(ctl, "BTCUSDT", "third")
        t1 = time.monotonic()
        g3 = await again.acquire()
        return g_old, g_new, waited, g3, time.monotonic() - t1

    g_old, g_new, waited, g3, quick = asyncio.run(scenario())
    assert g_new.epoch == g_old.epoch + 1 and g3.epoch == g_new.epoch + 1
    assert waited >= g_new.waited_s >= 1.0   # the grant says how long it waited: its lease counts from then
    assert g_old.waited_s < 1.0 and g3.waited_s < 1.0
    assert quick < 1.0  # a released lease needs no wait


def test_every_kill_state_change_gets_a_larger_sequence_number_kept_through_running():
    b = book()
    first = b.set_kill_state("ETHUSDC", "halted", "a").seq
    second = b.set_kill_state("ETHUSDC", "running").seq
    third = b.set_kill_state("ETHUSDC", "flattening").seq
    assert first < second < third
    assert b.acquire("ETHUSDC", "a", now=0.0).kill_seq == third


def test_a_kill_written_for_many_symbols_at_once_numbers_each_above_its_last():
    b = book()
    b.set_kill_state("ETHUSDC", "halted", "earlier")
    records = asyncio.run(b.set_kill_states(["ETHUSDC", "BTCUSDT"], "halted", "desk"))
    assert records["ETHUSDC"].seq == 2 and records["BTCUSDT"].seq == 1
    assert {s: b.kill_record(s) for s in records} == records          # as read back, seq and reason
    resumed = asyncio.run(b.set_kill_states(["ETHUSDC", "BTCUSDT"], "running"))
    assert [r.seq for r in resumed.values()] == [3, 2]
    assert {b.kill_state(s) for s in records} == {"running"}


class RecordingStore(MemoryStore):
    """A MemoryStore that keeps the order of its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def put(self, key: str, value: str) -> None:
        self.writes.append(key)
        super().put(key, value)


def test_a_reader_between_the_two_writes_of_a_kill_never_sees_the_new_number_with_the_old_state():
    """The record (with its own number) is written before ``killseq/``; a renewal read in between
    gets the new state with its own number, or the old state with the old number: never a mix, which
    an agent would take for the new command."""
    store = RecordingStore()
    b = LeaseBook(store)
    b.set_kill_state("ETHUSDC", "halted", "a")
    asyncio.run(b.set_kill_states(["ETHUSDC"], "running"))
    assert store.writes == ["kill/ETHUSDC", "killseq/ETHUSDC"] * 2
    torn = MemoryStore()   # what a reader sees after the record's write and before the number's
    torn.put("kill/ETHUSDC", store.get("kill/ETHUSDC"))
    torn.put("killseq/ETHUSDC", "1")
    assert LeaseBook(torn).kill_record("ETHUSDC").state == "running"
    assert LeaseBook(torn).kill_record("ETHUSDC").seq == 2
    legacy = MemoryStore()  # a record written before records carried their number
    legacy.put("kill/ETHUSDC", '{"state": "halted", "reason": "old", "since": 1.0}')
    legacy.put("killseq/ETHUSDC", "5")
    assert LeaseBook(legacy).kill_record("ETHUSDC").seq == 5
    assert LeaseBook(legacy).set_kill_state("ETHUSDC", "running").seq == 6


def test_a_stale_command_held_while_starting_cannot_undo_the_grants_newer_kill_state():
    """Seen at 50 symbols: a halt retried by Ray on the restarted actor reached it before its grant and
    started it halted against a later resume. A held command with an older kill_seq gives way."""
    from agents.starter import held_kill_state

    base = {"granted": True, "symbol": "ETHUSDC", "epoch": 2, "lease_ttl_s": 3.0, "reduce_only": False,
            "rate_share": 1.0}
    own = LeaseOwnership(None, "ETHUSDC", "h")
    assert own.note_direct_kill_state(7, "running")      # a stale resume, delivered before any grant
    grant = own._grant({**base, "kill_state": "halted", "kill_seq": 8})
    assert held_kill_state("running", 7, own.granted_seq, grant.kill_state) == "halted"
    late = LeaseOwnership(None, "ETHUSDC", "h")
    assert late.note_direct_kill_state(9, "halted")       # a halt newer than the grant's record
    grant = late._grant({**base, "kill_state": "running", "kill_seq": 8})
    assert grant.kill_state == "halted" and held_kill_state("halted", 9, late.granted_seq, grant.kill_state) == "halted"
    assert held_kill_state("halted", None, 8, "running") == "halted"   # a command without a number holds
    assert held_kill_state(None, None, 8, "running") == "running"


def test_a_renewal_answered_before_a_direct_kill_command_cannot_undo_it():
    own = LeaseOwnership(None, "ETHUSDC", "h")
    base = {"granted": True, "symbol": "ETHUSDC", "epoch": 4, "lease_ttl_s": 3.0, "reduce_only": False,
            "rate_share": 1.0}
    own.note_direct_kill_state(7, "halted")  # the controller's kill #7 reached the agent directly
    stale = own._grant({**base, "kill_state": "running", "kill_seq": 6})
    assert stale.kill_state == "halted"
    fresh = own._grant({**base, "kill_state": "running", "kill_seq": 8})  # a later resume
    assert fresh.kill_state == "running"
    own.note_direct_kill_state(5, "running")  # an older command arriving late changes nothing
    assert own.direct == (7, "halted")


def test_a_direct_command_older_than_one_known_is_refused_so_a_late_resume_cannot_undo_a_kill():
    own = LeaseOwnership(None, "ETHUSDC", "h")
    base = {"granted": True, "symbol": "ETHUSDC", "epoch": 4, "lease_ttl_s": 3.0, "reduce_only": False,
            "rate_share": 1.0}
    assert own.note_direct_kill_state(7, "halted") is True       # kill #7 reached the agent directly
    assert own.note_direct_kill_state(6, "running") is False     # resume #6, delivered after it: not run
    assert own.note_direct_kill_state(7, "halted") is True       # the same kill again (another route): runs
    own._grant({**base, "kill_state": "running", "kill_seq": 9})  # resume #9 known only from a renewal
    assert own.note_direct_kill_state(8, "halted") is False      # kill #8, delivered after it: not run
    assert own.note_direct_kill_state(10, "halted") is True
    assert own.direct == (10, "halted")


def test_a_kill_without_a_number_ranks_above_every_number_known_until_its_state_is_written():
    """A halt sent while the GCS could not take its kill state carries no kill_seq. A renewal answered
    before it (or after, still without it), or a resume numbered before it, must not undo it; the
    state it gets once written, and any later command, rank above it."""
    from agents.starter import held_kill_state

    own = LeaseOwnership(None, "ETHUSDC", "h")
    base = {"granted": True, "symbol": "ETHUSDC", "epoch": 4, "lease_ttl_s": 3.0, "reduce_only": False,
            "rate_share": 1.0}
    assert own.note_direct_kill_state(6, "running") is True       # resume #6 reached the agent directly
    assert own.note_direct_kill_state(None, "halted", "drill") is True   # then a kill the GCS could not take
    # carried with every lease call until written, should the process that sent it die before it is
    assert own.unwritten == {"state": "halted", "reason": "drill", "after_seq": 6, "issued_at": None}
    assert own._grant({**base, "kill_state": "running", "kill_seq": 6}).kill_state == "halted"   # a stale renewal
    assert own.note_direct_kill_state(6, "running") is False      # resume #6 again (retried): not run
    assert own.unwritten is not None
    assert own._grant({**base, "kill_state": "halted", "kill_seq": 7}).kill_state == "halted"    # the kill, written
    assert own.unwritten is None
    assert own.note_direct_kill_state(None, "halted", "again") is True   # another, GCS down again
    assert own.note_direct_kill_state(8, "running") is True       # a later resume runs: no longer carried
    assert own.unwritten is None
    assert own._grant({**base, "kill_state": "running", "kill_seq": 8}).kill_state == "running"
    # A new incarnation of the actor (same process) keeps it: a renewal read without it cannot undo it.
    own.note_direct_kill_state(None, "halted", "once more")
    reborn = LeaseOwnership(None, "ETHUSDC", "h2")
    reborn.inherit(own)
    assert reborn.unwritten == {"state": "halted", "reason": "once more", "after_seq": 8, "issued_at": None}
    assert reborn._grant({**base, "kill_state": "running", "kill_seq": 8}).kill_state == "halted"
    # Not started yet: the core starts in the held command's state, not the grant's read without it.
    starting = LeaseOwnership(None, "ETHUSDC", "h")
    starting.note_direct_kill_state(None, "halted")
    grant = starting._grant({**base, "kill_state": "running", "kill_seq": 3})
    assert held_kill_state("halted", None, starting.granted_seq, grant.kill_state) == "halted"


def test_a_kill_without_a_number_delivered_after_a_later_resume_does_not_undo_it():
    """Seen in CI across a GCS restart: the endpoint's halt, sent while the GCS was down (no kill_seq),
    reached the agent 2 s late, after the resume the operator gave once the GCS was back; ranked above
    every number, it halted the agent again and was written durably. A command without a number is
    ordered by when it was asked for against the numbered ones the agent knows."""
    base = {"granted": True, "symbol": "ETHUSDC", "epoch": 4, "lease_ttl_s": 3.0, "reduce_only": False,
            "rate_share": 1.0}
    own = LeaseOwnership(None, "ETHUSDC", "h")
    assert own.note_direct_kill_state(6, "running", issued_at=1_000.0) is True     # the resume, asked at 1000
    assert own.note_direct_kill_state(None, "halted", "outage", issued_at=998.0) is False   # the kill, asked at 998
    skewed = LeaseOwnership(None, "ETHUSDC", "h")   # within CLOCK_SKEW_S (1 s) of it: the kill holds
    skewed.note_direct_kill_state(6, "running", issued_at=1_000.0)
    assert skewed.note_direct_kill_state(None, "halted", "outage", issued_at=999.5) is True
    assert own.unwritten is None and own.direct == (6, "running")
    assert own.note_direct_kill_state(None, "halted", "later", issued_at=1_001.0) is True    # a kill asked after it
    assert own.unwritten == {"state": "halted", "reason": "later", "after_seq": 6, "issued_at": 1_001.0}
    # What the agent knows from a grant counts too: the record's since comes with its number.
    granted = LeaseOwnership(None, "ETHUSDC", "h")
    granted._grant({**base, "kill_state": "running", "kill_seq": 6, "kill_since": 1_000.0})
    assert granted.note_direct_kill_state(None, "halted", "outage", issued_at=998.0) is False
    assert granted.note_direct_kill_state(None, "halted", "outage") is True   # a caller that gives no time: ranked above
    # A time ahead of this host's clock (a node's clock jumped) counts as now: it cannot outrank kills to come.
    jumped = LeaseOwnership(None, "ETHUSDC", "h")
    jumped.note_direct_kill_state(6, "running", issued_at=time.time() + 3_600)
    assert jumped.note_direct_kill_state(None, "halted", "outage", issued_at=time.time()) is True


def test_a_resume_asked_for_before_a_kill_carried_unwritten_does_not_undo_it():
    """The other order: a kill sent while the GCS was down (carried, unwritten), then a resume asked for
    before it whose write landed late (a GCS failover): neither the resume delivered directly nor a
    grant carrying its record undoes the kill, which stays carried until written."""
    base = {"granted": True, "symbol": "ETHUSDC", "epoch": 4, "lease_ttl_s": 3.0, "reduce_only": False,
            "rate_share": 1.0}
    own = LeaseOwnership(None, "ETHUSDC", "h")
    own._grant({**base, "kill_state": "running", "kill_seq": 6, "kill_since": 990.0})
    assert own.note_direct_kill_state(None, "halted", "outage", issued_at=1_000.0) is True
    assert own.note_direct_kill_state(7, "running", issued_at=995.0) is False   # asked for 5 s before the kill
    assert own._grant({**base, "kill_state": "running", "kill_seq": 7, "kill_since": 995.0}).kill_state == "halted"
    assert own.unwritten is not None and own.unwritten["issued_at"] == 1_000.0     # still carried
    assert own._grant({**base, "kill_state": "halted", "kill_seq": 8, "kill_since": 1_000.0}).kill_state == "halted"
    assert own.unwritten is None                                                  # written: no longer carried
    assert own.note_direct_kill_state(9, "running", issued_at=1_010.0) is True    # a resume asked for after it runs


def test_a_kill_state_write_that_lands_late_leaves_a_command_asked_for_since_alone():
    b = book()
    asyncio.run(b.set_kill_states(["ETHUSDC"], "running", "resumed", now=1_000.0))
    late = asyncio.run(b.set_kill_states(["ETHUSDC", "BTCUSDT"], "halted", "outage", now=998.0, unless_newer=True))
    assert set(late) == {"BTCUSDT"}
    assert b.kill_record("ETHUSDC").state == "running" and b.kill_record("BTCUSDT").since == 998.0
    assert b.acquire("ETHUSDC", "a", now=0.0).kill_since == 1_000.0
    asked_later = asyncio.run(b.set_kill_states(["ETHUSDC"], "halted", "later", now=1_001.0, unless_newer=True))
    assert asked_later["ETHUSDC"].seq == 2 and b.kill_state("ETHUSDC") == "halted"
    asyncio.run(b.set_kill_states(["ETHUSDC"], "running", "resumed", now=1_010.0))
    within_skew = asyncio.run(b.set_kill_states(["ETHUSDC"], "halted", "skewed", now=1_009.5, unless_newer=True))
    assert set(within_skew) == {"ETHUSDC"}   # within CLOCK_SKEW_S: the kill is written, the safe side


def test_a_kill_run_late_leaves_only_a_resume_asked_after_it_alone():
    """A kill whose write lands after a resume asked later leaves it (``unless_resumed``); a halt asked later
    does not stop an earlier flatten's write, nor does a resume dated ahead of this host's clock."""
    b = book()
    now = time.time()
    asyncio.run(b.set_kill_states(["ETHUSDC"], "running", "resumed", now=now - 10))
    asyncio.run(b.set_kill_states(["BTCUSDT"], "halted", "a later halt", now=now - 10))
    asyncio.run(b.set_kill_states(["SOLUSDT"], "running", "a clock ahead", now=now + 60))
    written = asyncio.run(b.set_kill_states(["ETHUSDC", "BTCUSDT", "SOLUSDT"], "flattening", "asked first",
                                            now=now - 20, unless_resumed=True))
    assert set(written) == {"BTCUSDT", "SOLUSDT"}
    assert [b.kill_state(s) for s in ("ETHUSDC", "BTCUSDT", "SOLUSDT")] == ["running", "flattening", "flattening"]

def test_agents_are_created_by_the_controller_itself_when_the_spawner_does_not_answer(ray_cluster, monkeypatch,
                                                                                       caplog):
    """A spawner that is stuck (here: a stand-in that never returns) costs ``SPAWN_TIMEOUT_S``, not
    the agent: the controller creates it itself, says so, and looks the spawner up again next time."""
    import ray

    from controller import handles
    from fleet.config import AgentPlacement

    ns = f"mmfleet-spawn{uuid.uuid4().hex[:6]}"

    @ray.remote(num_cpus=0)
    class StuckSpawner:
        def create(self, *args: object) -> None:
            time.sleep(60)

    stuck = StuckSpawner.options(name=handles.SPAWNER_NAME, namespace=ns).remote()
    monkeypatch.setattr(handles, "SPAWN_TIMEOUT_S", 1.0)
    agents = handles.AgentHandles("spawn", ns, call_timeout_s=2.0)
    try:
        asyncio.run(agents.create(["BTCUSDT"], AgentPlacement(num_cpus=0)))
        assert agents.unspawned == 1 and agents.spawner is None
        assert ray.get_actor("agent.BTCUSDT", namespace=ns) is not None
        assert f"{handles.SPAWNER_NAME} did not answer (TimeoutError)" in caplog.text
        assert "creates agent.BTCUSDT itself" in caplog.text
    finally:
        ray.kill(stuck)
        try:
            ray.kill(ray.get_actor("agent.BTCUSDT", namespace=ns), no_restart=True)
        except ValueError:
            pass
