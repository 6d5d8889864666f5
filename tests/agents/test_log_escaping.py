"""No log line can be forged: control characters (newlines, carriage returns, ANSI escapes, C1) in
anything a record carries come out escaped, so one record is one line whatever handler prints it."""

from __future__ import annotations

import io
import json
import logging

from agents.logging import AgentLog, configure_logging, escape_controls, install_log_escaping

FORGED = "drill\n12:00:00 CRITICAL all kill switches disabled\r\x1b[31mred\x1b[0m\x85\u2028tail"


def test_every_control_character_is_escaped_and_plain_text_is_left_alone():
    assert escape_controls("kill ETHUSDC: drill") == "kill ETHUSDC: drill"
    out = escape_controls(FORGED + "\t\x00\x7f\x9f")
    assert out == ("drill\\n12:00:00 CRITICAL all kill switches disabled\\r\\x1b[31mred\\x1b[0m\\x85\\u2028tail"
                   "\\t\\x00\\x7f\\x9f")
    assert all(c.isprintable() for c in out)
    assert escape_controls(out) == out          # escaping twice changes nothing
    assert escape_controls("ünïcode €") == "ünïcode €"
    # marks that reorder or hide what a reader sees: a right-to-left override shows the rest reversed
    hidden = "drill \u202eevil\u202c \u2066x\u2069 \u200bzero\u200d \ufeffbom \u061c"
    assert escape_controls(hidden) == ("drill \\u202eevil\\u202c \\u2066x\\u2069 \\u200bzero\\u200d "
                                       "\\ufeffbom \\u061c")
    assert escape_controls("日本語 العربية") == "日本語 العربية"   # scripts written right to left are text


def _agent_log(name: str, json_logs: bool) -> tuple[AgentLog, io.StringIO, logging.Handler]:
    buf = io.StringIO()
    handler, _ = configure_logging(json_logs=json_logs, stream=buf, logger_names=[name])
    lg = logging.getLogger(name)
    lg.propagate = False
    return AgentLog(lg, "ETHUSDC"), buf, handler


def test_a_text_record_with_a_forged_line_stays_one_line():
    log, buf, handler = _agent_log("mmfleet.test.text", json_logs=False)
    try:
        log.event("halted", f"halted: {FORGED}", level=logging.WARNING, reason=FORGED)
        log.warning("kill %s requested: %s", "halt", FORGED)
    finally:
        logging.getLogger("mmfleet.test.text").removeHandler(handler)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "halted: drill\\n12:00:00 CRITICAL all kill switches disabled\\r\\x1b[31mred" in lines[0]
    assert "reason=drill\\n12:00:00 CRITICAL" in lines[0]
    assert "kill halt requested: drill\\n12:00:00 CRITICAL" in lines[1]
    assert "\x1b" not in buf.getvalue() and "\x85" not in buf.getvalue() and "\u2028" not in buf.getvalue()


def test_a_traceback_keeps_its_lines_but_none_can_pass_for_a_record():
    log, buf, handler = _agent_log("mmfleet.test.exc", json_logs=False)
    try:
        raise RuntimeError(FORGED)
    except RuntimeError:
        log.exception("failed")
    finally:
        logging.getLogger("mmfleet.test.exc").removeHandler(handler)
    first, *rest = buf.getvalue().splitlines()
    assert first.endswith("failed") and rest
    assert all(line.startswith("    ") for line in rest), rest    # indented: never a record's start
    assert "    RuntimeError: drill" in rest and "    12:00:00 CRITICAL all kill switches disabled" in rest
    assert "\x1b" not in buf.getvalue()


def test_a_json_record_is_one_line_with_the_message_escaped():
    log, buf, handler = _agent_log("mmfleet.test.json", json_logs=True)
    try:
        log.event("halted", f"halted: {FORGED}", level=logging.WARNING, reason=FORGED)
    finally:
        logging.getLogger("mmfleet.test.json").removeHandler(handler)
    [line] = buf.getvalue().splitlines()
    record = json.loads(line)
    assert record["msg"].startswith("halted: drill\\n12:00:00 CRITICAL") and "\n" not in record["msg"]
    assert "\n" not in record["reason"] and "\x1b" not in record["reason"]


def test_any_handler_prints_the_projects_records_escaped_once_installed():
    """The endpoint and the controller log through Ray's handlers (or logging's last resort), not ours."""
    install_log_escaping()
    install_log_escaping()   # idempotent
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    project, other = logging.getLogger("mmfleet.api.escapetest"), logging.getLogger("thirdparty.escapetest")
    for lg in (project, other):
        lg.addHandler(handler)
        lg.propagate = False
    try:
        project.warning("kill %s of %s requested: %s", "halt", "all symbols", FORGED)
        other.warning("line one\nline two")     # not the project's record: left as it is
    finally:
        for lg in (project, other):
            lg.removeHandler(handler)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("WARNING mmfleet.api.escapetest kill halt of all symbols requested: drill\\n12:00")
    assert lines[1:] == ["WARNING thirdparty.escapetest line one", "line two"]
