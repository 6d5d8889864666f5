"""Standalone ownership: one live process per fleet and symbol, proven with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from agents.ownership import Grant, LockFileOwnership, Ownership, OwnershipLost, OwnershipRefused

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from agents.ownership import LockFileOwnership
    async def main():
        own = LockFileOwnership(sys.argv[1], "demo", "ETHUSDC")
        grant = await own.acquire()
        print("owned", grant.epoch, flush=True)
        sys.stdin.readline()          # hold until told to go
        await own.release()
        print("released", flush=True)
    asyncio.run(main())
    """
)


def _start_holder(state_dir) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().split()  # blocks until the child owns the lock (or dies)
    assert line[:1] == ["owned"], f"holder did not acquire: {line}"
    return proc, int(line[1])


def _wait_dead(proc: subprocess.Popen) -> None:
    proc.wait(timeout=30)


async def test_second_process_is_refused_with_the_owner_pid(tmp_path):
    proc, epoch = _start_holder(tmp_path)
    try:
        own = LockFileOwnership(tmp_path, "demo", "ETHUSDC")
        with pytest.raises(OwnershipRefused) as refused:
            await own.acquire()
        assert f"PID {proc.pid}" in str(refused.value)
        assert "ETHUSDC" in str(refused.value)
        assert (tmp_path / "demo.ETHUSDC.pid").read_text().strip() == str(proc.pid)
    finally:
        proc.kill()
        _wait_dead(proc)
    assert epoch == 1


async def test_lock_is_freed_when_owner_is_killed_and_epoch_grows(tmp_path):
    proc, first_epoch = _start_holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    _wait_dead(proc)
    own = LockFileOwnership(tmp_path, "demo", "ETHUSDC")
    grant = await own.acquire()
    assert grant.epoch == first_epoch + 1
    assert (tmp_path / "demo.ETHUSDC.pid").read_text().strip() == str(os.getpid())
    await own.release()


async def test_release_lets_the_next_owner_in_and_is_idempotent(tmp_path):
    proc, _ = _start_holder(tmp_path)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "released"
    _wait_dead(proc)
    assert not (tmp_path / "demo.ETHUSDC.pid").exists()
    own = LockFileOwnership(tmp_path, "demo", "ETHUSDC")
    grant = await own.acquire()
    assert grant.epoch == 2
    await own.release()
    await own.release()
    with pytest.raises(OwnershipLost):
        await own.renew()


async def test_other_symbols_and_fleets_are_independent(tmp_path):
    proc, _ = _start_holder(tmp_path)
    try:
        other_symbol = LockFileOwnership(tmp_path, "demo", "BTCUSDT")
        other_fleet = LockFileOwnership(tmp_path, "prod", "ETHUSDC")
        assert (await other_symbol.acquire()).epoch == 1
        assert (await other_fleet.acquire()).epoch == 1
        await other_symbol.release()
        await other_fleet.release()
    finally:
        proc.kill()
        _wait_dead(proc)


async def test_renew_detects_a_pid_file_taken_over(tmp_path):
    own = LockFileOwnership(tmp_path, "demo", "ETHUSDC")
    grant = await own.acquire()
    assert isinstance(own, Ownership)
    assert await own.renew() == grant
    (tmp_path / "demo.ETHUSDC.pid").write_text("1\n")
    with pytest.raises(OwnershipLost, match="names 1"):
        await own.renew()
    await own.release()


async def test_a_pid_file_removed_is_written_again_and_a_lock_file_removed_is_ownership_lost(tmp_path):
    """A clean-up that removed the PID file made the holder of the lock declare its ownership lost (its
    quotes left resting until the lease's pull, the agent never quoting again); the lock is the truth.
    A lock file removed (or replaced) may be locked by another process: that is a loss."""
    own = LockFileOwnership(tmp_path, "demo", "ETHUSDC")
    grant = await own.acquire()
    (tmp_path / "demo.ETHUSDC.pid").unlink()
    assert await own.renew() == grant
    assert (tmp_path / "demo.ETHUSDC.pid").read_text() == f"{os.getpid()}\n"
    (tmp_path / "demo.ETHUSDC.lock").unlink()
    other = LockFileOwnership(tmp_path, "demo", "ETHUSDC")
    other.lock()   # a new file at the path: nothing stops another process now
    with pytest.raises(OwnershipLost, match="no longer the one this process locked"):
        await own.renew()
    await other.release()
    await own.release()


async def test_acquiring_again_while_holding_the_lock_grants_a_fresh_larger_epoch(tmp_path):
    own = LockFileOwnership(tmp_path, "demo", "ETHUSDC")
    first = await own.acquire()
    again = await own.acquire()  # a new incarnation in the same process: never the same epoch
    assert again.epoch == first.epoch + 1
    assert (await own.renew()).epoch == again.epoch  # a renewal keeps it
    await own.release()


async def test_kill_state_survives_restarts(tmp_path):
    own = LockFileOwnership(tmp_path, "demo", "ETHUSDC")
    assert (await own.acquire()).kill_state == "running"
    own.record_kill_state("halted")
    assert (await own.renew()).kill_state == "halted"
    await own.release()
    again = LockFileOwnership(tmp_path, "demo", "ETHUSDC")
    assert (await again.acquire()).kill_state == "halted"
    again.record_kill_state("running")
    assert (await again.renew()).kill_state == "running"
    await again.release()


def test_grant_rejects_nonsense():
    with pytest.raises(ValueError, match="kill_state"):
        Grant(epoch=1, lease_ttl_s=10, kill_state="paused")
    with pytest.raises(ValueError, match="epoch"):
        Grant(epoch=0, lease_ttl_s=10, kill_state="running")


@pytest.mark.parametrize("content", [b"garbage\n", b"", b"3.7\n", b"0\n", b"-5\n", b"99999999999999999999\n", b"\xff\n"])
async def test_an_epoch_file_that_holds_no_epoch_is_refused_not_read_as_0(tmp_path, content):
    """Read as 0, the next incarnation was epoch 1 again and repeated an earlier one's client order ids
    (18 in one run: a look-up by id could find the old order); "-5" was written back as -4. Refused,
    naming the file, and left as it was."""
    from agents.ownership import OwnershipStateError

    path = tmp_path / "demo.ETHUSDC.epoch"
    path.write_bytes(content)
    own = LockFileOwnership(tmp_path, "demo", "ETHUSDC")
    with pytest.raises(OwnershipStateError, match=r"the epoch file .*demo\.ETHUSDC\.epoch holds .* not an epoch"):
        await own.acquire()
    assert path.read_bytes() == content
    path.write_text("7\n")   # mended: the next incarnation is 8, the lock free again
    assert (await own.acquire()).epoch == 8
    await own.release()


async def test_a_state_directory_that_cannot_hold_the_lock_is_refused_naming_it(tmp_path):
    from agents.ownership import OwnershipStateError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OwnershipStateError, match="cannot hold the lock file"):
        await LockFileOwnership(blocker, "demo", "ETHUSDC").acquire()   # a file where the directory goes
    (tmp_path / "d" / "demo.ETHUSDC.lock").mkdir(parents=True)
    with pytest.raises(OwnershipStateError, match="cannot hold the lock file"):
        await LockFileOwnership(tmp_path / "d", "demo", "ETHUSDC").acquire()   # a directory at the lock's path
