"""The agent's structured logs: context fields on every line, JSON on request, never a secret."""

from __future__ import annotations

import io
import json
import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.logging import AgentLog, SecretFilter, configure_logging

API_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
API_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"


def _logger(name: str, *, json_logs: bool) -> tuple[AgentLog, io.StringIO, logging.Handler]:
    buf = io.StringIO()
    handler, _ = configure_logging(
        json_logs=json_logs, secrets=[API_KEY, API_SECRET], stream=buf, logger_names=[name]
    )
    lg = logging.getLogger(name)
    lg.propagate = False
    log = AgentLog(lg, "ETHUSDC")
    log.epoch = 7
    return log, buf, handler


def test_json_lines_carry_symbol_epoch_event_and_order_ids():
    log, buf, handler = _logger("t.json", json_logs=True)
    log.event("order_placed", "placed BUY 0.007 @ 2317.30", client_order_id="mm7-b0-12", order_id=991, side="BUY")
    line = json.loads(buf.getvalue().strip())
    assert line["symbol"] == "ETHUSDC"
    assert line["epoch"] == 7
    assert line["event"] == "order_placed"
    assert line["client_order_id"] == "mm7-b0-12"
    assert line["order_id"] == 991
    assert line["msg"] == "placed BUY 0.007 @ 2317.30"
    assert line["level"] == "INFO" and line["ts"].endswith("Z")
    logging.getLogger("t.json").removeHandler(handler)


def test_text_lines_are_readable_and_tagged():
    log, buf, handler = _logger("t.text", json_logs=False)
    log.event("user_stream_connected", "WebSocket UserStream connected")
    out = buf.getvalue()
    assert "[ETHUSDC e7] WebSocket UserStream connected" in out
    logging.getLogger("t.text").removeHandler(handler)


def test_known_secrets_are_redacted_everywhere():
    log, buf, handler = _logger("t.secret", json_logs=True)
    log.info("creds %s / %s", API_KEY, API_SECRET)
    log.event("http", f"GET /fapi/v1/order?symbol=ETHUSDC&signature={'ab' * 32}", header=API_KEY)
    try:
        raise RuntimeError(f"boom with {API_SECRET}")
    except RuntimeError:
        log.exception("failed")
    out = buf.getvalue()
    assert API_KEY not in out and API_SECRET not in out
    assert "ab" * 32 not in out
    assert out.count("***") >= 4
    for line in out.strip().splitlines():
        json.loads(line)
    logging.getLogger("t.secret").removeHandler(handler)


def test_secret_shaped_text_is_redacted_even_when_unknown():
    f = SecretFilter()
    assert "zzzsecretvalue" not in f.redact("{'api_secret': 'zzzsecretvalue'}")
    assert "k3yk3yk3y" not in f.redact("headers={'X-MBX-APIKEY': 'k3yk3yk3y'}")
    assert "abc123abc123abc123abc123abc123abc123" not in f.redact(
        "ws://127.0.0.1:9/ws/abc123abc123abc123abc123abc123abc123"
    )
    # names of env vars are not secrets and stay readable
    assert f.redact("api_secret_env=MMFLEET_MAIN_API_SECRET") == "api_secret_env=MMFLEET_MAIN_API_SECRET"


@settings(max_examples=60, deadline=None)
@given(prefix=st.text(max_size=40), suffix=st.text(max_size=40), use_args=st.booleans())
def test_a_registered_secret_never_survives_any_message(prefix, suffix, use_args):
    f = SecretFilter([API_SECRET])
    if use_args:
        record = logging.LogRecord("x", logging.INFO, "f", 1, "%s%s%s", (prefix, API_SECRET, suffix), None)
    else:
        record = logging.LogRecord("x", logging.INFO, "f", 1, prefix + API_SECRET + suffix, None, None)
    record.detail = {"secret": API_SECRET}
    assert f.filter(record)
    assert API_SECRET not in record.getMessage()
    assert API_SECRET not in str(record.detail)


def test_bad_format_args_do_not_lose_the_line():
    log, buf, handler = _logger("t.bad", json_logs=True)
    log.info("two %s %s", "only-one")
    assert "unformattable" in json.loads(buf.getvalue())["msg"]
    logging.getLogger("t.bad").removeHandler(handler)


def test_the_journals_password_once_read_is_redacted_by_every_handler_of_the_process(monkeypatch):
    """The journal's password and the API token are read inside the process that uses them, after its
    logging was set up: once read, no handler of the process writes them (they relied on no message
    ever holding them)."""
    from journal.db import Target, _password

    out_a, out_b = io.StringIO(), io.StringIO()
    handlers = [configure_logging(stream=out, logger_names=(f"mmfleet.test.pw{i}",))[0]
                for i, out in enumerate((out_a, out_b))]
    try:
        monkeypatch.setenv("MMFLEET_TEST_JOURNAL_PW", "pw-Xq81mZ3kLp")
        assert _password(Target(url="postgresql://mm@h/db", password_env="MMFLEET_TEST_JOURNAL_PW")) == "pw-Xq81mZ3kLp"
        for i in range(2):
            logging.getLogger(f"mmfleet.test.pw{i}").warning("connect failed as %s", "pw-Xq81mZ3kLp")
        for out in (out_a, out_b):
            assert "pw-Xq81mZ3kLp" not in out.getvalue() and "connect failed" in out.getvalue()
    finally:
        for i, h in enumerate(handlers):
            logging.getLogger(f"mmfleet.test.pw{i}").removeHandler(h)


def test_records_kept_elsewhere_are_redacted_as_the_log_lines_are():
    """The journal's audit events take the agent's messages: the secrets the process registered are
    redacted from them as from its log lines (they had the secret shapes only)."""
    from agents.logging import redact_in_process_logs, redact_known

    handler, _ = configure_logging(stream=io.StringIO(), logger_names=("mmfleet.test.known",))
    try:
        redact_in_process_logs("k3y-Vw9PqR2sTz")
        assert redact_known("order refused for k3y-Vw9PqR2sTz: -2015") == "order refused for ***: -2015"
    finally:
        logging.getLogger("mmfleet.test.known").removeHandler(handler)
