// mmfleet ops console: the fleet table pushed over Server-Sent Events, and the kill switches.
// Nothing is stored in the browser: the session is an HttpOnly cookie, the CSRF token is in the page.
(() => {
  "use strict";
  const body = document.body;
  const base = body.dataset.base;
  const csrf = document.querySelector('meta[name="mmfleet-csrf"]').content;
  const rows = new Map();
  let lastEventAt = 0;
  let source = null;
  let events = 0;

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // --- formatting ---
  const num = (v, digits) => (v === null || v === undefined) ? "–"
    : Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  const qty = (v) => (v === null || v === undefined) ? "–" : String(Number(v.toPrecision(6)));
  const money = (v) => (v === null || v === undefined) ? "–" : (v >= 0 ? "+" : "") + num(v, 2);
  // text someone typed (a kill's reason), its control and format characters shown as \uXXXX (\UXXXXXXXX
  // beyond the first plane), as the logs show them: a right-to-left override once turned the rest of a
  // reason around on the page; and combining marks past two on one letter too: a stack of them covered
  // the row's kill state
  const escaped = (c) => {
    const code = c.codePointAt(0);
    return code > 0xffff ? "\\U" + code.toString(16).padStart(8, "0") : "\\u" + code.toString(16).padStart(4, "0");
  };
  const plain = (s) => String(s).replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, escaped)
    .replace(/(\p{M}{2})(\p{M}+)/gu, (_, kept, more) => kept + [...more].map(escaped).join(""));
  const since = (ms) => {
    const s = Math.max(0, (Date.now() - ms) / 1000);
    return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
  };

  // --- the table ---
  function bar(label) {
    const b = el("div", "bar");
    b.append(el("span", "muted", label));
    const track = el("div", "track");
    const fill = el("div", "fill");
    track.append(fill);
    const fig = el("span", "fig", "–");
    b.append(track, fig);
    return { b, fill, fig };
  }

  function actionButtons(symbol) {
    const td = el("td", "buttons");
    for (const [action, label] of [["halt", "Halt"], ["flatten", "Flatten"], ["resume", "Resume"]]) {
      const btn = el("button", `btn ${action}`, label);
      btn.type = "button";
      btn.dataset.action = action;
      btn.dataset.scope = symbol;
      td.append(btn);
    }
    return td;
  }

  function ensureRow(symbol) {
    let r = rows.get(symbol);
    if (r) return r;
    const tr = el("tr");
    tr.dataset.symbol = symbol;
    const c = {};
    const cell = (name, cls) => { c[name] = el("td", cls || name); tr.append(c[name]); return c[name]; };
    cell("sym").textContent = symbol;
    cell("state");
    cell("epoch", "num epoch");
    cell("position", "num position");
    const worst = cell("worst");
    const long = bar("L"), short = bar("S");
    worst.append(long.b, short.b);
    cell("pnl", "num pnl");
    cell("fills", "num fills");
    cell("grinds", "num grinds");
    cell("streams");
    cell("kill");
    cell("repair");
    cell("action");
    c.action.textContent = "–";
    tr.append(actionButtons(symbol));
    $("rows").append(tr);
    r = { tr, c, long, short };
    rows.set(symbol, r);
    return r;
  }

  function setBar(b, value, cap) {
    const ratio = (cap && value !== null && value !== undefined) ? Math.abs(value) / cap : 0;
    b.fill.style.width = `${Math.min(100, ratio * 100).toFixed(1)}%`;
    b.fill.className = "fill" + (ratio >= 0.9 ? " over" : ratio >= 0.6 ? " warn" : "");
    b.fig.textContent = `${qty(value)} / ${qty(cap)}`;
    b.b.title = `${(ratio * 100).toFixed(1)} % of the cap`;
  }

  // A state as a CSS class name: a plain lower-case word, anything else "unknown".
  const word = (v) => (typeof v === "string" && /^[a-z_]{1,32}$/.test(v)) ? v : "unknown";

  function pill(text, cls) {
    const p = el("span", `pill ${cls}`, text);
    return p;
  }

  const HOLDS = {
    rate_limited: "rate limited (429/418)", orders_limited: "order count (429)", throttled: "throttled (-1008)",
    order_routes_failing: "order routes failing (5xx)", funding_reads_limited: "funding reads (429)",
    order_budget_spent: "its own order budget spent",
  };

  function renderRow(row) {
    const r = ensureRow(row.symbol);
    const c = r.c;
    r.tr.classList.toggle("unreachable", !row.reachable);
    c.state.replaceChildren(pill(row.state || "?", `st-${word(row.state)}`));
    if (!row.reachable && row.error) c.state.append(el("span", "sub", row.error));
    else if (row.restarts) c.state.append(el("span", "sub", `${row.restarts} restart(s)`));
    if (row.settles_at_ms) {
      c.state.append(el("span", "sub delisting", `delisted: settled by the exchange at ${new Date(row.settles_at_ms).toISOString()}`));
    }
    // the exchange refusing its orders for now (a 429 or 418, an order-count 429, a -1008, failing order
    // routes), or the agent's own order budget spent
    if (row.exchange_holds && row.exchange_holds.length) {
      c.state.append(el("span", "sub held", `held: ${row.exchange_holds.map((h) => (Object.hasOwn(HOLDS, h) ? HOLDS[h] : h)).join(", ")}`));
    }
    // a hung agent Ray was asked to kill still runs (its node frozen?): its orders were cancelled, no successor quotes
    const uk = row.unkilled;
    if (uk && typeof uk === "object") {
      const who = `epoch ${uk.epoch ?? "–"}, pid ${uk.pid ?? "–"}`;
      c.state.append(el("span", "sub held unkilled", `hung agent (${who}) not killed for ${num(uk.for_s, 0)} s: ` +
        "its node does not act on Ray's kill; no successor quotes"));
    }
    // the books carried from the last agent without what the exchange booked after them (a read failed)
    if (row.books_gap_unread && row.books_gap_unread.length) {
      c.state.append(el("span", "sub held", `books lack the restart's gap: ${row.books_gap_unread.join(", ")} unread`));
    }
    const stale = row.published_age_s !== null && row.published_age_s !== undefined;
    r.tr.classList.toggle("stale", stale);
    if (stale) c.state.append(el("span", "sub published", `figures as published ${row.published_age_s.toFixed(1)} s ago`));
    c.epoch.textContent = row.epoch ?? "–";
    if (row.lease_revoked) c.epoch.append(el("span", "sub", "lease revoked"));
    else if (row.lease_expires_in_s !== null && row.lease_expires_in_s !== undefined && row.lease_expires_in_s < 0) {
      c.epoch.append(el("span", "sub", `lease lapsed ${(-row.lease_expires_in_s).toFixed(1)} s ago`));
    }
    c.position.replaceChildren(document.createTextNode(qty(row.position)));
    c.position.append(el("span", "sub", `${row.open_orders ?? "–"} open orders`));
    setBar(r.long, row.worst_long, row.cap);
    setBar(r.short, row.worst_short, row.cap);
    c.pnl.textContent = money(row.pnl);
    c.pnl.className = "num pnl " + (row.pnl > 0 ? "gain" : row.pnl < 0 ? "neg" : "");
    c.pnl.title = `realized ${money(row.realized_pnl)}, unrealized ${money(row.unrealized_pnl)}, ` +
      `funding ${money(row.funding_pnl)}, commission ${num(row.commission, 4)}`;
    // a symbol that does not settle funding every 8 hours: its rate counts more (or less) a day
    if (row.funding_interval_s && row.funding_interval_s !== 28800) {
      c.pnl.append(el("span", "sub", `funding every ${num(row.funding_interval_s / 3600, 0)} h`));
    }
    c.fills.textContent = row.fills ?? "–";
    c.grinds.textContent = row.grinds ?? "–";
    const streams = el("span", "streams");
    for (const [label, on] of [["user", row.user_stream], ["market", row.market_stream]]) {
      streams.append(el("span", "dot" + (on ? " on" : "")), document.createTextNode(`${label} `));
    }
    c.streams.replaceChildren(streams,
      el("span", "sub", row.book_age_s === null || row.book_age_s === undefined ? "no book" : `book ${row.book_age_s.toFixed(2)} s old`));
    // the durable kill state; an agent halted on its own (a liquidation) under a durable "running" shows its own
    const own = row.agent_kill_state && row.agent_kill_state !== "running" && (!row.kill_state || row.kill_state === "running");
    const shown = own ? row.agent_kill_state : row.kill_state;
    const reason = own ? `the agent's own: ${row.agent_halt_reason || "no reason given"}` : row.kill_reason;
    c.kill.replaceChildren(pill(shown || "?", `ks-${word(shown)}`));
    if (shown && shown !== "running" && reason) c.kill.append(el("span", "sub", plain(reason)));
    const rep = row.last_reconcile_repair;
    if (rep && typeof rep === "object") {
      c.repair.replaceChildren(document.createTextNode(`${rep.kind || "repair"}${rep.client_order_id ? " " + rep.client_order_id : ""}`));
      c.repair.append(el("span", "sub", [rep.detail, rep.time_ms ? since(rep.time_ms) : ""].filter(Boolean).join(" · ")));
    } else {
      c.repair.textContent = "none";
      c.repair.classList.add("muted");
    }
  }

  function render(snap) {
    events += 1;
    lastEventAt = Date.now();
    body.dataset.seq = snap.seq;
    body.dataset.events = events;
    for (const row of snap.rows) renderRow(row);
    for (const [symbol, r] of rows) {
      if (!snap.rows.some((x) => x.symbol === symbol)) r.tr.classList.add("unreachable");
    }
    const t = snap.totals;
    $("t-agents").textContent = `${t.answered} / ${t.symbols}`;
    $("t-halted").textContent = t.halted;
    $("t-orders").textContent = t.open_orders;
    $("t-pnl").textContent = money(t.pnl);
    $("t-gross").textContent = `${num(t.gross_notional, 0)} / ${num(t.max_total_notional, 0)}`;
    $("updated").textContent = `updated ${new Date(snap.time_ms).toLocaleTimeString()} (#${snap.seq}, collected in ${snap.collected_ms} ms)` +
      (snap.controller_error ? ` · controller not answering: ${snap.controller_error}` : "") +
      (snap.kill_states_error ? ` · ${snap.kill_states_error}` : "");
    setConn("live", "live");
  }

  function setConn(cls, text) {
    const c = $("conn");
    c.className = `conn ${cls}`;
    c.textContent = text;
  }

  // --- the stream ---
  function connect() {
    if (source) source.close();
    source = new EventSource(`${base}/events`);
    source.addEventListener("snapshot", (ev) => render(JSON.parse(ev.data)));
    source.addEventListener("signedout", () => { source.close(); location.replace(base); });
    source.onerror = () => {
      setConn("stale", "reconnecting…");
      if (source.readyState === EventSource.CLOSED) setTimeout(checkSession, 2000);
    };
  }

  // The stream closed for good (the browser gives up on an answer other than 200): the session ended,
  // or every stream slot is taken (the endpoint's 429, which EventSource does not show): said, tried again.
  async function checkSession() {
    try {
      const r = await fetch(`${base}/session`, { credentials: "same-origin", cache: "no-store" });
      if (r.status === 401 || r.status === 503) { location.replace(base); return; }
      const probe = new AbortController();
      const s = await fetch(`${base}/events`, { credentials: "same-origin", cache: "no-store", signal: probe.signal });
      probe.abort();
      if (s.status === 429) {
        setConn("stale", "no live updates: too many console streams are open (close other tabs); trying again");
        setTimeout(checkSession, 5000);
        return;
      }
    } catch (e) { /* the endpoint is away: try again */ }
    connect();
  }

  setInterval(() => {
    if (lastEventAt && Date.now() - lastEventAt > 3000) setConn("stale", `stale: no update for ${((Date.now() - lastEventAt) / 1000).toFixed(0)} s`);
  }, 1000);

  // --- actions ---
  async function post(path, payload) {
    const r = await fetch(`${base}/${path}`, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(payload),
    });
    let answer = null;
    try { answer = await r.json(); } catch (e) { answer = null; }
    if (!r.ok) {
      const detail = answer && answer.detail;
      const text = typeof detail === "string" ? detail : Array.isArray(detail) ? detail.map((d) => d.msg).join("; ") : r.statusText;
      throw new Error(`${r.status}: ${text}`);
    }
    return answer;
  }

  function logOutcome(text, cls) {
    const li = el("li", cls, `${new Date().toLocaleTimeString()}  ${text}`);
    $("outcomes").prepend(li);
    return li;
  }

  // One symbol's outcome as this page's action got it (the kill and state columns say what holds now:
  // another session may have acted since). A resume the agent did not confirm, or one of a symbol that
  // was running already, is not shown as a success; open orders are "confirmed" only when counted.
  function describe(symbol, res, action) {
    if (action === "resume") {
      if (res.was === "running") return { text: "already running: nothing to resume", ok: true };
      const agent = res && typeof res.agent === "string" ? ` (${plain(res.agent)})` : "";
      const unconfirmed = typeof res.agent === "string" && res.agent.startsWith("not confirmed");
      return { text: `${res.outcome}${agent}`, ok: res.outcome === "resumed" && !unconfirmed };
    }
    const ok = res.open_orders === 0 && res.outcome !== "failed";
    const orders = res.open_orders === null || res.open_orders === undefined
      ? "open orders not confirmed at the exchange" : `${res.open_orders} open orders confirmed at the exchange`;
    let text = `${res.outcome} · ${orders} · ${res.elapsed_ms} ms`;
    if (res.problem || res.error) text += ` · ${plain(res.problem || res.error)}`;
    return { text, ok };
  }

  async function act(action, scope, reason) {
    const selection = scope === "all" ? { all: true } : { symbols: [scope] };
    const what = `${action} ${scope === "all" ? "whole fleet" : scope}`;
    const pending = logOutcome(`${what}: sent…`, "pending");
    const targets = scope === "all" ? [...rows.keys()] : [scope];
    for (const s of targets) { const r = rows.get(s); if (r) { r.c.action.textContent = `${action}: waiting…`; r.c.action.className = "action"; } }
    try {
      const answer = action === "resume"
        ? await post("resume", { ...selection, reason })
        : await post("kill", { ...selection, mode: action, reason });
      const parts = [];
      let allOk = true;
      for (const [symbol, res] of Object.entries(answer.symbols || {})) {
        const d = describe(symbol, res, action);
        allOk = allOk && d.ok;
        parts.push(`${symbol} ${d.text}`);
        const r = rows.get(symbol);
        if (r) {
          r.c.action.textContent = `${new Date().toLocaleTimeString()} ${action} (this page): ${d.text}`;
          r.c.action.className = "action " + (d.ok ? "ok" : "bad");
        }
      }
      const head = action === "resume" ? `${what} in ${answer.elapsed_ms} ms` :
        `${what} ${answer.confirmed ? "confirmed: 0 open orders" : "NOT confirmed"} in ${answer.elapsed_ms} ms`;
      pending.textContent = `${new Date().toLocaleTimeString()}  ${head} — ${parts.join("; ")} — reason: ${plain(reason)}`;
      pending.className = allOk && (action === "resume" || answer.confirmed) ? "ok" : "bad";
    } catch (err) {
      pending.textContent = `${new Date().toLocaleTimeString()}  ${what} failed: ${err.message}`;
      pending.className = "bad";
      for (const s of targets) { const r = rows.get(s); if (r) { r.c.action.textContent = `${action} failed: ${err.message}`; r.c.action.className = "action bad"; } }
    }
  }

  const dialog = $("confirm");
  let pendingAction = null;
  const WORDS = {
    halt: "cancels every open order and stops quoting",
    flatten: "cancels every open order, closes the position at market and stops quoting",
    resume: "lets the agents quote again",
  };

  function confirmAction(action, scope) {
    pendingAction = { action, scope };
    const target = scope === "all" ? "the whole fleet" : scope;
    $("confirm-title").textContent = `${action[0].toUpperCase()}${action.slice(1)} ${target}?`;
    $("confirm-text").textContent = `This ${WORDS[action]} (${target}).`;
    $("confirm-ok").textContent = `${action[0].toUpperCase()}${action.slice(1)} ${target}`;
    $("confirm-ok").className = "btn " + (action === "resume" ? "primary" : "danger");
    $("confirm-error").textContent = "";
    $("reason").value = "";
    dialog.showModal();
    $("reason").focus();
  }

  document.addEventListener("click", (ev) => {
    const btn = ev.target.closest("button[data-action]");
    if (btn) confirmAction(btn.dataset.action, btn.dataset.scope);
  });
  $("confirm-cancel").addEventListener("click", () => { pendingAction = null; dialog.close(); });
  $("confirm-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const reason = $("reason").value.trim();
    if (!reason) { $("confirm-error").textContent = "A reason is required."; return; }
    const todo = pendingAction;
    pendingAction = null;
    dialog.close();
    if (todo) act(todo.action, todo.scope, reason);
  });

  $("signout").addEventListener("click", async () => {
    if (source) source.close();
    try {
      await fetch(`${base}/signout`, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
    } finally {
      location.replace(base);
    }
  });

  const expiresAt = Date.now() + Number(body.dataset.expiresIn) * 1000;
  const showExpiry = () => {
    const left = Math.max(0, (expiresAt - Date.now()) / 1000);
    $("expires").textContent = `session ends in ${left >= 3600 ? (left / 3600).toFixed(1) + " h" : Math.ceil(left / 60) + " min"}`;
  };
  showExpiry();
  setInterval(showExpiry, 30000);

  for (const symbol of JSON.parse(body.dataset.symbols)) ensureRow(symbol);
  connect();
})();
