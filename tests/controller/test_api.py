"""The fleet endpoint over real HTTP on the session's Ray cluster: auth, validation, honesty about
agents and a controller that are not there. (The endpoint with a live fleet: test_api_fleet.py.)"""

from __future__ import annotations

import json
import secrets
import socket
import time
import uuid
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from controller.api import deploy, is_deployed, undeploy
from fleet.config import AccountConfig, ApiConfig, FleetConfig, SymbolEntry
from fleet.ops.ports import free_port

SYMBOLS = ("ETHUSDC", "BTCUSDT", "SOLUSDT")


def fleet_config(name: str, token_file: str, **api: object) -> FleetConfig:
    return FleetConfig(
        name=name,
        accounts=(AccountConfig(name="main", api_key_env="MMFLEET_TEST_KEY", api_secret_env="MMFLEET_TEST_SECRET"),),
        symbols=tuple(SymbolEntry(symbol=s, account="main") for s in SYMBOLS),
        api=ApiConfig(host="127.0.0.1", port=free_port(), token_env=None, token_file=token_file, **api),
    )


@pytest.fixture(scope="module")
def endpoint(ray_cluster, tmp_path_factory):
    """An endpoint for a fleet with no controller and no agents deployed (yet)."""
    token = secrets.token_urlsafe(24)
    token_file = tmp_path_factory.mktemp("api") / "api.token"
    token_file.write_text(token + "\n")
    cfg = fleet_config(f"apitest{uuid.uuid4().hex[:6]}", str(token_file))
    url = deploy(cfg, route_prefix=f"/{cfg.name}")
    yield url, token, cfg
    undeploy(cfg)
    assert not is_deployed(cfg)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


PROTECTED = [
    ("GET", "/status", None),
    ("GET", "/exposure", None),
    ("GET", "/kill", None),
    ("POST", "/kill", {"all": True, "mode": "halt", "reason": "test"}),
    ("POST", "/resume", {"all": True}),
]


def test_health_is_open(endpoint):
    url, _, cfg = endpoint
    r = requests.get(f"{url}/health", timeout=10)
    assert r.status_code == 200
    body = r.json()
    kill_path, controller = body.pop("kill_path"), body.pop("controller")
    assert body == {"ok": True, "fleet": cfg.name, "symbols": 3, "token_configured": True}
    # No controller here: the endpoint's own ping says so, with why.
    assert controller["up"] is False and controller["error"], controller
    # No agent deployed: none of their handles found (the keys are read from variables not set here).
    assert kill_path.get("agents_ready", 0) == 0 and "checked_s_ago" in kill_path, kill_path


@pytest.mark.parametrize("method,path,body", PROTECTED)
def test_protected_endpoints_answer_401_without_a_token_and_403_with_a_wrong_one(endpoint, method, path, body):
    url, token, _ = endpoint
    r = requests.request(method, f"{url}{path}", json=body, timeout=10)
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate") == "Bearer"
    assert "Authorization: Bearer" in r.json()["detail"]
    r = requests.request(method, f"{url}{path}", json=body, headers={"Authorization": f"Basic {token}"}, timeout=10)
    assert r.status_code == 401, r.text
    r = requests.request(method, f"{url}{path}", json=body, headers=auth(token + "x"), timeout=10)
    assert r.status_code == 403, r.text
    assert r.json()["detail"] == "invalid API token"


def test_status_with_the_right_token_names_every_agent_that_is_missing(endpoint):
    url, token, cfg = endpoint
    r = requests.get(f"{url}/status", headers=auth(token), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["agents_expected"] == 3 and body["agents_up"] == 0
    for sym in SYMBOLS:
        agent = body["agents"][sym]
        assert agent["reachable"] is False
        assert agent["error"] == (f"no actor agent.{sym} alive in namespace {cfg.namespace} "
                                  "(not started yet, restarting or gone)")
    assert body["controller"] == {
        "reachable": False,
        "error": f"no actor controller in namespace {cfg.namespace}",
    }


def test_exposure_totals_say_they_are_incomplete_when_agents_are_missing(endpoint):
    from controller.lease import GcsStore, LeaseBook

    url, token, cfg = endpoint
    body = requests.get(f"{url}/exposure", headers=auth(token), timeout=30).json()
    totals = body["totals"]
    assert totals["complete"] is False
    assert totals["symbols_missing"] == sorted(SYMBOLS)
    assert totals["gross_notional"] == 0 and totals["symbols_answered"] == 0
    # the durable kill states, read by the endpoint from the GCS: no controller needed
    assert body["kill_states_error"] is None
    book = LeaseBook(GcsStore(cfg.name))
    assert {s: body["symbols"][s]["kill_state"] for s in SYMBOLS} == {s: book.kill_state(s) for s in SYMBOLS}


def test_metrics_is_open_and_reports_every_agent_down(endpoint):
    url, _, cfg = endpoint
    r = requests.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert {s.labels["symbol"]: s.value for s in fams["mmfleet_agent_up"].samples} == dict.fromkeys(SYMBOLS, 0.0)
    assert fams["mmfleet_agents_expected"].samples[0].value == 3
    assert fams["mmfleet_controller_up"].samples[0].value == 0


def test_a_halt_without_a_controller_is_still_carried_out_and_says_per_symbol_why_it_is_not_confirmed(endpoint):
    """The endpoint runs a halt itself: the kill state is made durable in the GCS with no controller,
    and each symbol's answer names why neither route confirmed 0 (no agent; no keys for the account)."""
    from controller.lease import GcsStore, LeaseBook

    url, token, cfg = endpoint
    r = requests.post(f"{url}/kill", json={"all": True, "reason": "drill"}, headers=auth(token), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["confirmed"] is False and body["durable"] is True and body["durable_ms"] > 0
    for sym in SYMBOLS:
        answer = body["symbols"][sym]
        assert answer["outcome"] == "failed" and answer["by"] == "endpoint", answer
        assert answer["problem"].startswith("agent: "), answer
        assert f"no actor agent.{sym} in namespace {cfg.namespace}" in answer["problem"], answer
        assert "MMFLEET_TEST_KEY" in answer["error"], answer        # the account's keys are not there
    assert {LeaseBook(GcsStore(cfg.name)).kill_state(s) for s in SYMBOLS} == {"halted"}
    states = requests.get(f"{url}/kill", headers=auth(token), timeout=30).json()["kill_states"]   # no controller asked
    assert {s: (states[s]["state"], states[s]["reason"]) for s in SYMBOLS} == dict.fromkeys(SYMBOLS, ("halted", "drill"))


def test_a_flatten_without_a_controller_is_503_naming_it(endpoint):
    url, token, cfg = endpoint
    r = requests.post(f"{url}/kill", json={"all": True, "mode": "flatten", "reason": "drill"}, headers=auth(token),
                      timeout=30)
    assert r.status_code == 503
    assert r.json()["detail"] == f"fleet controller not reachable: no actor controller in namespace {cfg.namespace}"


@pytest.mark.parametrize(
    "body,status,names",
    [
        ({"symbols": ["DOGEUSDT", "ETHUSDC"], "reason": "x"}, 404, "DOGEUSDT"),
        ({"symbols": ["ethusdc"], "reason": "x"}, 422, "ethusdc"),
        ({"symbols": ["ETHUSDC"], "all": True, "reason": "x"}, 422, "either symbols or all=true"),
        ({"reason": "x"}, 422, "give symbols"),
        ({"symbols": [], "reason": "x"}, 422, "give symbols"),
        ({"all": True, "mode": "liquidate", "reason": "x"}, 422, "liquidate"),
        ({"all": True}, 422, "reason"),
        ({"all": True, "reason": "x", "price": 1}, 422, "price"),
    ],
)
def test_bad_kill_requests_get_a_4xx_naming_the_problem(endpoint, body, status, names):
    url, token, _ = endpoint
    r = requests.post(f"{url}/kill", json=body, headers=auth(token), timeout=30)
    assert r.status_code == status, r.text
    assert names in r.text


def test_a_long_list_of_unknown_symbols_is_named_in_short_not_echoed_back(endpoint):
    url, token, _ = endpoint
    many = [f"Z{i:03d}" + "Z" * 20 + "USDT" for i in range(1000)]
    r = requests.post(f"{url}/kill", json={"symbols": many, "reason": "x"}, headers=auth(token), timeout=30)
    assert r.status_code == 404 and "and 995 more" in r.text and len(r.text) < 1_000, r.text[:300]


def test_an_endpoint_on_loopback_answers_only_requests_naming_a_loopback_host(endpoint):
    """A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) reaches the port from an
    operator's browser; the open pages (metrics, health, the sign-in) do not answer it."""
    url, token, _ = endpoint
    port = url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        for path in ("/metrics", "/health", "/console"):
            r = requests.get(f"{url}{path}", headers={"Host": host}, timeout=10)
            assert r.status_code == 400 and "serves on loopback" in r.text, (host, path, r.status_code)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost"):
        assert requests.get(f"{url}/health", headers={"Host": host}, timeout=10).status_code == 200, host


def test_a_body_that_is_not_json_is_a_422(endpoint):
    url, token, _ = endpoint
    r = requests.post(f"{url}/kill", data="halt everything", headers=auth(token), timeout=30)
    assert r.status_code == 422
    # JSON that is not UTF-8 (Python's json would guess UTF-16): refused, naming it, nothing halted
    body = '{"symbols": ["ETHUSDC"], "reason": "utf-16"}'.encode("utf-16")
    r = requests.post(f"{url}/kill", data=body, headers={**auth(token), "Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 422 and "not UTF-8" in r.text


def test_a_query_parameter_the_route_does_not_take_is_a_422_naming_it(endpoint):
    url, token, _ = endpoint
    # a typo of /pnl's symbol would otherwise answer for the whole fleet
    r = requests.get(f"{url}/pnl?symbl=ETHUSDC", headers=auth(token), timeout=30)
    assert r.status_code == 422 and "'symbl'" in r.text and "since, symbol" in r.text, r.text
    r = requests.get(f"{url}/exposure?symbol=ETHUSDC", headers=auth(token), timeout=30)
    assert r.status_code == 422 and "'symbol'" in r.text and "takes: none" in r.text, r.text
    before = requests.get(f"{url}/kill", headers=auth(token), timeout=30).json()["kill_states"]
    r = requests.post(f"{url}/kill?all=true", json={"symbols": ["ETHUSDC"], "reason": "query"}, headers=auth(token),
                      timeout=30)
    assert r.status_code == 422, r.text
    assert requests.get(f"{url}/kill", headers=auth(token), timeout=30).json()["kill_states"] == before   # unchanged
    # a key no answer can carry is named escaped, and no long input is echoed back
    r = requests.get(f"{url}/health?" + "x" * 5000 + "=1", timeout=30)
    assert r.status_code == 422 and len(r.text) < 1000, r.text
    assert requests.get(f"{url}/health", timeout=30).status_code == 200


def test_openapi_docs_are_served(endpoint):
    url, _, _ = endpoint
    page = requests.get(f"{url}/docs", timeout=10)
    assert page.status_code == 200 and "POST /kill" in page.text and "Authorization: Bearer" in page.text
    # nothing loaded from anywhere (the page where an operator reads how to send the token), no script
    assert "http" not in page.text.replace("http://HOST:PORT", "") and "<script" not in page.text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert requests.get(f"{url}/redoc", timeout=10).status_code == 404
    spec = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert {"/health", "/status", "/exposure", "/metrics", "/kill", "/resume"} <= set(spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_the_token_appears_in_no_response(endpoint):
    url, token, _ = endpoint
    seen = []
    for path in ("/health", "/status", "/exposure", "/metrics", "/kill", "/docs", "/openapi.json", "/nope"):
        for headers in ({}, auth(token), auth("wrong")):
            seen.append(requests.get(f"{url}{path}", headers=headers, timeout=30))
    for body in ({"all": True, "reason": "x"}, {"symbols": ["X"], "reason": "x"}, {}):
        seen.append(requests.post(f"{url}/kill", json=body, headers=auth(token), timeout=30))
    for r in seen:
        assert token not in r.text, r.url
        assert all(token not in v for v in r.headers.values()), r.url


def test_metrics_can_require_the_token(ray_cluster, tmp_path):
    token = secrets.token_urlsafe(24)
    (tmp_path / "t").write_text(token)
    cfg = fleet_config(f"apiauth{uuid.uuid4().hex[:6]}", str(tmp_path / "t"), metrics_require_auth=True)
    url = deploy(cfg, route_prefix=f"/{cfg.name}")
    try:
        assert requests.get(f"{url}/metrics", timeout=30).status_code == 401
        assert requests.get(f"{url}/metrics", headers=auth("no"), timeout=30).status_code == 403
        assert requests.get(f"{url}/metrics", headers=auth(token), timeout=30).status_code == 200
        assert requests.get(f"{url}/health", timeout=30).status_code == 200
    finally:
        undeploy(cfg)


def test_without_any_token_configured_protected_endpoints_refuse(ray_cluster, tmp_path, caplog):
    cfg = fleet_config(f"apinotok{uuid.uuid4().hex[:6]}", str(tmp_path / "absent"))
    with caplog.at_level("WARNING", logger="mmfleet.api"):
        url = deploy(cfg, route_prefix=f"/{cfg.name}")
    assert "the endpoint found no API token in its own process" in caplog.text
    try:
        r = requests.get(f"{url}/status", headers=auth(""), timeout=30)
        assert r.status_code == 503
        assert str(tmp_path / "absent") in r.json()["detail"]
        assert requests.get(f"{url}/health", timeout=30).json()["token_configured"] is False
    finally:
        undeploy(cfg)


def test_the_token_appears_in_no_log_of_the_session(endpoint):
    """Runs after the requests above: nothing Ray or the replica logged holds the token."""
    import ray

    url, token, _ = endpoint
    requests.get(f"{url}/status", headers=auth(token), timeout=30)
    requests.get(f"{url}/status", headers=auth(token + "x"), timeout=30)
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    replica_logs = list(logs.glob("serve/replica_fleet-api-*"))
    assert replica_logs, f"no replica log under {logs}"
    leaked = [p for p in logs.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaked == []


def test_ensure_api_token_creates_a_private_token_file_once(tmp_path, monkeypatch):
    from controller.api import ensure_api_token

    monkeypatch.delenv("MMFLEET_API_TOKEN", raising=False)
    cfg = FleetConfig(
        name="tok",
        accounts=(AccountConfig(name="main", api_key_env="K", api_secret_env="S"),),
        symbols=(SymbolEntry(symbol="ETHUSDC", account="main"),),
        state_dir=str(tmp_path / "state"),
    )
    deployed, where = ensure_api_token(cfg)
    path = tmp_path / "state" / "tok.api.token"
    assert deployed.api.token_file == str(path) and where == f"file {path}"
    first = path.read_text()
    assert len(first.strip()) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert ensure_api_token(cfg)[0].api.token_file == str(path) and path.read_text() == first

    monkeypatch.setenv("MMFLEET_API_TOKEN", "from-the-environment")
    assert ensure_api_token(cfg) == (cfg, "environment variable MMFLEET_API_TOKEN")


def test_fleet_totals_sum_only_what_answered_and_say_so():
    from controller.views import fleet_totals

    per_symbol = {
        "ETHUSDC": {"reachable": True, "notional": 300.0, "realized_pnl": 2.0, "unrealized_pnl": -1.0,
                    "funding_pnl": 0.5, "commission": 0.25},
        "BTCUSDT": {"reachable": True, "notional": -500.0, "realized_pnl": 1.0, "unrealized_pnl": float("nan"),
                    "funding_pnl": -0.5, "commission": 0.25},
        "SOLUSDT": {"reachable": False, "error": "agent.SOLUSDT.exposure did not answer within 2 s"},
    }
    totals = fleet_totals(per_symbol, max_total_notional=1000.0)
    assert totals["gross_notional"] == 800.0 and totals["net_notional"] == -200.0
    assert totals["notional_used"] == 0.8
    assert totals["total_pnl"] == 2.0 and totals["net_pnl"] == 1.5     # a NaN counts as nothing
    assert totals["symbols_answered"] == 2 and totals["symbols_missing"] == ["SOLUSDT"]
    assert totals["complete"] is False


# --- strict inputs on the operator surface ----------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(ray_cluster, tmp_path_factory):
    """An endpoint in front of a stand-in controller that records every kill and resume it is asked for."""
    import ray

    from controller.controller import CONTROLLER_NAME

    @ray.remote(num_cpus=0)
    class RecordingController:
        def __init__(self, symbols: list[str]) -> None:
            self.states = dict.fromkeys(symbols, "running")
            self.calls: list[tuple] = []

        def kill(self, symbols, mode, reason, by=None, asked_at=None, expires_at=None):
            self.calls.append(("kill", symbols, mode, reason))
            return {"symbols": {s: {"open_orders": 0, "position": "0" if mode == "flatten" else None}
                                for s in (symbols or self.states)}}

        def kill_noted(self, symbols, mode, reason, by, seqs):
            self.calls.append(("kill_noted", symbols, mode, reason))
            return True

        def resume(self, symbols, by=None, asked_at=None, expires_at=None):
            self.calls.append(("resume", symbols))
            return {"symbols": {s: {"state": "running"} for s in (symbols or self.states)}}

        def kill_states(self):
            return dict(self.states)

        def status(self):
            return {"symbols": {s: {"kill_state": st} for s, st in self.states.items()}}

        def recorded(self):
            return list(self.calls)

    token = secrets.token_urlsafe(24)
    token_file = tmp_path_factory.mktemp("guarded") / "api.token"
    token_file.write_text(token + "\n")
    cfg = fleet_config(f"apistrict{uuid.uuid4().hex[:6]}", str(token_file))
    ctl = RecordingController.options(name=CONTROLLER_NAME, namespace=cfg.namespace).remote(list(SYMBOLS))
    ray.get(ctl.recorded.remote(), timeout=60)
    url = deploy(cfg, route_prefix=f"/{cfg.name}")
    yield url, token, ctl
    undeploy(cfg)
    ray.kill(ctl)


def post_raw(url: str, path: str, raw: str | bytes, token: str | None, **kw: object) -> requests.Response:
    headers = {"Content-Type": "application/json", **(auth(token) if token else {})}
    return requests.post(f"{url}{path}", data=raw, headers=headers, timeout=30, **kw)


STRICT_CASES = [
    # (path, raw body, field the 422 names)
    ("/resume", '{"all": "yes"}', "all"),
    ("/resume", '{"all": "true"}', "all"),
    ("/resume", '{"all": 1}', "all"),
    ("/resume", '{"all": 1.0}', "all"),
    ("/kill", '{"all": "true", "reason": "drill"}', "all"),
    ("/kill", '{"all": 1, "reason": "drill"}', "all"),
    ("/kill", '{"all": NaN, "reason": "drill"}', "all"),
    ("/kill", '{"all": true, "reason": Infinity}', "reason"),
    ("/kill", '{"all": true, "reason": "drill", "mode": -Infinity}', "mode"),
    ("/kill", '{"symbols": ["ETHUSDC", 1e999], "reason": "drill"}', "symbols"),
    ("/resume", '{"all": true, "reason": NaN}', "reason"),
    ("/resume", '{"all": true, "extra": {"deep": [1, 1e999]}}', "extra"),
    ("/resume", '{"all": true, "force": true}', "force"),
    ("/kill", '{"all": true, "reason": "drill", "price": 1}', "price"),
    ("/kill", '{"all": false, "all": true, "reason": "drill"}', "all"),
    ("/kill", '{"all": true, "reason": "' + "x" * 501 + '"}', "reason"),
    ("/resume", '{"all": true, "reason": "' + "x" * 501 + '"}', "reason"),
    ("/kill", '{"all": true, "reason": 7}', "reason"),
    # a reason that shows nothing: spaces, a zero-width space, a NUL, a line separator
    ("/kill", '{"all": true, "reason": " "}', "reason"),
    ("/kill", '{"all": true, "reason": "\\u200b"}', "reason"),
    ("/kill", '{"all": true, "reason": "\\u0000 \\u2028"}', "reason"),
    ("/kill", '{"symbols": "ETHUSDC", "reason": "drill"}', "symbols"),
    # a lone surrogate (JSON allows it, UTF-8 cannot carry it): echoed escaped, not a 500
    ("/kill", '{"all": true, "reason": "\\ud800"}', "reason"),
    ("/resume", '{"symbols": ["\\udfff"]}', "symbols"),
    ("/kill", '{"all": true, "reason": "drill", "\\ud800": 1, "\\ud800": 2}', "\\ud800"),
]


@pytest.mark.parametrize("path,raw,field", STRICT_CASES)
def test_a_loose_or_non_finite_input_is_a_422_naming_the_field_and_changes_nothing(guarded, path, raw, field):
    import ray

    url, token, ctl = guarded
    before = requests.get(f"{url}/kill", headers=auth(token), timeout=30).json()
    calls = ray.get(ctl.recorded.remote(), timeout=30)
    r = post_raw(url, path, raw, token)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(p["loc"][:2] == ["body", field] for p in detail), detail
    assert len(r.text) < 1000                  # a long input is trimmed, never echoed whole
    assert ray.get(ctl.recorded.remote(), timeout=30) == calls  # the controller was never asked
    assert requests.get(f"{url}/kill", headers=auth(token), timeout=30).json() == before


def test_an_integer_of_thousands_of_digits_is_a_422_in_the_projects_words(guarded):
    """Python's own refusal of such an integer ended with advice to its programmer
    (``sys.set_int_max_str_digits``), which a client can do nothing with."""
    url, token, _ = guarded
    r = post_raw(url, "/kill", '{"all": true, "reason": "drill", "mode": ' + "9" * 5000 + "}", token)
    assert r.status_code == 422 and "an integer of 5000 digits" in r.text and "sys." not in r.text, r.text


def test_strict_bodies_still_take_real_booleans_and_reach_the_controller(guarded):
    import ray

    url, token, ctl = guarded
    r = post_raw(url, "/resume", '{"symbols": ["ETHUSDC"]}', token)
    assert r.status_code == 200, r.text
    r = post_raw(url, "/kill", '{"all": true, "reason": "drill", "mode": "flatten"}', token)
    assert r.status_code == 200 and r.json()["confirmed"] is True, r.text
    # a reason of one emoji newer than this interpreter's Unicode tables, or of a private-use glyph: taken
    for reason in ("\U0001fae8", "\ue000"):
        r = post_raw(url, "/kill", json.dumps({"symbols": ["BTCUSDT"], "mode": "flatten", "reason": reason}), token)
        assert r.status_code == 200, r.text
    calls = ray.get(ctl.recorded.remote(), timeout=30)
    assert calls[-4:-2] == [("resume", ["ETHUSDC"]), ("kill", list(SYMBOLS), "flatten", "drill")]
    assert [c[3] for c in calls[-2:]] == ["\U0001fae8", "\ue000"]


def test_a_422_never_echoes_a_long_input(guarded):
    url, token, _ = guarded
    long_reason = "A" * 20_000
    r = post_raw(url, "/kill", '{"all": true, "reason": "' + long_reason + '"}', token)
    assert r.status_code == 422
    [problem] = r.json()["detail"]
    assert problem["loc"] == ["body", "reason"]
    assert problem["input"].endswith("(20000 characters)") and len(problem["input"]) < 200
    r = post_raw(url, "/kill", '{"all": true, "reason": "x", "junk": [' + ",".join(["1"] * 5000) + "]}", token)
    assert r.status_code == 422 and len(r.text) < 1000 and "<array of 5000 items>" in r.text


def test_an_oversized_body_is_a_413_with_the_limit(guarded):
    url, token, ctl = guarded
    big = '{"all": true, "reason": "' + "x" * (70 * 1024) + '"}'
    r = post_raw(url, "/kill", big, token)
    assert r.status_code == 413, r.text
    assert "65536 bytes" in r.json()["detail"]
    # chunked (no Content-Length): cut off at the limit as well
    r = post_raw(url, "/kill", (chunk.encode() for chunk in [big[i:i + 8192] for i in range(0, len(big), 8192)]),
                 token)
    assert r.status_code == 413, r.text


def test_the_token_is_checked_before_a_byte_of_the_body_is_read(guarded):
    """A request announcing 50 MB but sending none of it: 401/403/413 at once, the body never awaited."""
    url, token, _ = guarded
    host, rest = url.removeprefix("http://").split("/", 1)
    hostname, port = host.split(":")
    for headers, status in (("", b"401"), (f"Authorization: Bearer {token}x\r\n", b"403"),
                            (f"Authorization: Bearer {token}\r\n", b"413")):
        with socket.create_connection((hostname, int(port)), timeout=15) as sock:
            sock.sendall(
                f"POST /{rest}/kill HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: 50000000\r\n{headers}\r\n".encode() + b'{"all": NaN'
            )
            answer = sock.recv(65536)
        assert answer.split(b"\r\n", 1)[0].split()[1] == status, answer
        assert b"NaN" not in answer
    # a length of more digits than int() reads (4,300), leading zeros or not: a 4xx, never a 500
    for declared in ("9" * 5000, "0" * 5000 + "70000"):
        with socket.create_connection((hostname, int(port)), timeout=15) as sock:
            sock.sendall(
                f"POST /{rest}/kill HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {declared}\r\nAuthorization: Bearer {token}\r\n\r\n".encode() + b'{"all": NaN'
            )
            answer = sock.recv(65536)
        assert answer.split(b"\r\n", 1)[0].split()[1] in (b"400", b"413"), answer[:200]


def test_an_unauthenticated_huge_body_is_a_401_and_is_not_echoed(guarded):
    url, _, _ = guarded
    junk = '{"all": "yes", "reason": "' + "Z" * 200_000 + '"'
    r = post_raw(url, "/kill", junk, None)
    assert r.status_code == 401
    assert "ZZZZ" not in r.text and "yes" not in r.text


def test_a_newline_in_a_kill_reason_cannot_forge_a_log_line(guarded):
    """The reason is logged by the replica as one line, its control characters escaped."""
    import ray

    url, token, _ = guarded
    marker = uuid.uuid4().hex[:8]
    forged = f"all kill switches disabled {marker}"
    reason = f"drill\n2025-01-01 00:00:00 CRITICAL {forged}\r\x1b[2K\x85\u2028end"
    r = requests.post(f"{url}/kill", json={"all": True, "reason": reason}, headers=auth(token), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["reason"] == reason      # kept as sent; only the log escapes it
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    deadline = time.monotonic() + 20
    hits: list[str] = []
    while not hits and time.monotonic() < deadline:
        hits = [line for p in logs.rglob("*") if p.is_file()
                for line in p.read_text(errors="replace").splitlines() if marker in line]
        time.sleep(0.5)
    assert hits, f"the kill request was not logged under {logs}"
    for line in hits:
        assert "kill halt of all symbols requested: drill\\n2025-01-01 00:00:00 CRITICAL" in line, line
        assert "\\r\\x1b[2K\\x85\\u2028end" in line, line
        assert "\x1b" not in line and "\x85" not in line


# --- the kill's own lane -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crowded(ray_cluster, tmp_path_factory):
    """An endpoint whose stand-in controller takes 30 s to answer ``status`` (the endpoint waits 5 s)."""
    import asyncio

    import ray

    from controller.api import ApiSettings
    from controller.controller import CONTROLLER_NAME

    @ray.remote(num_cpus=0)
    class SlowStatusController:
        def __init__(self) -> None:
            self.asked = 0

        async def status(self):
            self.asked += 1
            await asyncio.sleep(30)
            return {"symbols": {}}

        async def kill(self, symbols, mode, reason, by=None, asked_at=None, expires_at=None):
            return {"symbols": {s: {"open_orders": 0, "position": None} for s in (symbols or SYMBOLS)}}

        async def kill_noted(self, symbols, mode, reason, by, seqs):
            return True

        async def kill_states(self):
            return dict.fromkeys(SYMBOLS, "running")

        async def status_asked(self):
            return self.asked

    token = secrets.token_urlsafe(24)
    token_file = tmp_path_factory.mktemp("crowded") / "api.token"
    token_file.write_text(token + "\n")
    cfg = fleet_config(f"apicrowd{uuid.uuid4().hex[:6]}", str(token_file))
    ctl = SlowStatusController.options(name=CONTROLLER_NAME, namespace=cfg.namespace).remote()
    ray.get(ctl.status_asked.remote(), timeout=60)
    url = deploy(cfg, route_prefix=f"/{cfg.name}", settings=ApiSettings(agent_timeout_s=5.0))
    yield url, token, ctl
    undeploy(cfg)
    ray.kill(ctl)


def test_a_kill_does_not_wait_behind_a_flood_of_other_requests(crowded):
    """100 ``/status`` requests fill every turn of the endpoint's other routes (64 at a time, each held 5 s
    by a controller that does not answer); a kill sent after them answers before any of them: it has its
    own lane. (With Serve's own cap of 64 requests it waited in the proxy's queue behind them.)"""
    from concurrent.futures import ThreadPoolExecutor

    import ray

    url, token, ctl = crowded
    answered: list[int] = []

    def status() -> None:
        requests.get(f"{url}/status", headers=auth(token), timeout=120)
        answered.append(1)

    with ThreadPoolExecutor(100) as pool:
        flood = [pool.submit(status) for _ in range(100)]
        deadline = time.monotonic() + 60
        while ray.get(ctl.status_asked.remote(), timeout=30) < 64:   # every turn taken
            assert time.monotonic() < deadline, "the flood never filled the endpoint's turns"
            time.sleep(0.1)
        r = requests.post(f"{url}/kill", json={"symbols": ["ETHUSDC"], "reason": "drill"}, headers=auth(token),
                          timeout=120)
        before = len(answered)
        for f in flood:
            f.result()
    assert r.status_code == 200, r.text
    assert before == 0, f"the kill answered after {before} of the requests ahead of it"
    assert len(answered) == 100


def test_a_client_request_id_is_never_a_500_nor_written_into_a_log(endpoint):
    """Serve's proxy read ``X-Request-ID`` as sent: not UTF-8, a 500 logged nowhere; free text, verbatim in
    its access log and the replica's log prefix (a /health line could read as a kill). Such a value is
    dropped before Serve reads it (``controller.proxy_guard``); a short token is kept. Serve's own hints
    (its timeout, one not UTF-8 a 500 too) are dropped whatever they say."""
    import http.client
    from urllib.parse import urlsplit

    import ray

    url, _, _ = endpoint
    parts = urlsplit(url)
    marker = f"INJ{uuid.uuid4().hex[:8]}"

    def health(request_id: bytes, header: str = "X-Request-ID") -> int:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.putrequest("GET", f"{parts.path}/health")
        conn.putheader(header, request_id)
        conn.endheaders()
        status = conn.getresponse().status
        conn.close()
        return status

    assert health(b"\xe9") == 200
    assert health(b"\xe9", "X-Request-Timeout-Seconds") == 200   # Serve's own hint: dropped whatever it says
    assert health(f"{marker}\t-- POST /kill 200 1.0ms --".encode()) == 200
    assert health(f"{marker}\u2028POST /kill".encode()) == 200
    kept = f"ok-{marker}"
    assert health(kept.encode()) == 200
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    deadline = time.monotonic() + 20
    lines: list[str] = []
    while not any(kept in line for line in lines) and time.monotonic() < deadline:
        lines = [line for p in logs.rglob("*") if p.is_file()
                 for line in p.read_text(errors="replace").splitlines() if marker in line]
        time.sleep(0.5)
    assert any(kept in line for line in lines), f"the safe request id was not logged under {logs}"
    assert all(f"ok-{marker}" in line for line in lines), [line for line in lines if f"ok-{marker}" not in line]
