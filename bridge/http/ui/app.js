// The status page's script (bridge/http/ui; served by bridge/http/routes_ui.py).
//
// Polls this bridge's own JSON endpoints once a second and draws them; fetches nothing
// else, from nowhere else (every URL below is a path on this origin). A key or the
// admin token pasted into the page is kept in sessionStorage only and sent as
// `Authorization: Bearer` on those fetches; the endpoints' own scopes decide what it
// sees. Without one the page is read-only: the admin buttons (pin, unpin, unload)
// appear only once a credential is given. All text goes in with textContent (model
// names and reasons are data, never markup).
"use strict";

(() => {
  const POLL_MS = 1000;
  const DECISIONS = 15;
  const TRANSITIONS = 8;
  const STORE = "alb.credential";
  // The bridge's root on this origin: "" unless a proxy serves it under a prefix.
  const BASE = location.pathname.replace(/\/alb\/ui\/?$/, "");
  const $ = (id) => document.getElementById(id);

  let credential = sessionStorage.getItem(STORE) || "";
  let timer = null;

  // --- small DOM helpers ---------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, String(v));
      else if (k === "title") node.title = String(v);
      else node[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const chip = (cls, text, title) => el("span", { class: `chip ${cls}`, title }, text);

  function bytes(n) {
    if (n === null || n === undefined) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Number(n);
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return `${v >= 10 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
  }
  const pct = (part, whole) => (whole > 0 ? Math.max(0, Math.min(100, (100 * part) / whole)) : 0);
  const clock = (iso) => {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString([], { hour12: false });
  };

  // --- fetching ------------------------------------------------------------------
  function headers(extra) {
    const h = { Accept: "application/json", ...(extra || {}) };
    if (credential) h.Authorization = `Bearer ${credential}`;
    return h;
  }

  async function getJSON(path) {
    const resp = await fetch(BASE + path, {
      headers: headers(),
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    return { status: resp.status, body };
  }

  function errorText(r) {
    const e = r.body && r.body.error;
    return typeof e === "string" ? e : `HTTP ${r.status}`;
  }

  // --- what a runner is doing ----------------------------------------------------
  function runnerState(m) {
    if (m.state === "loading") return "loading";
    if (m.state === "loaded") return m.in_flight > 0 ? "serving" : "idle";
    return "unloaded";
  }

  function flags(m) {
    const out = [];
    if (m.pinned) out.push(chip("flag-pinned", "pinned"));
    if (m.prefetched) out.push(chip("flag-prefetched", "prefetched", "loaded by a prefetch, not used yet"));
    if (m.replica) out.push(chip("flag-replica", "replica", "a copy made for a hot model"));
    if (m.draining) out.push(chip("flag-draining", "draining", "held for a reload"));
    if (m.load_failing) {
      out.push(chip("flag-failing", "load failing", `${m.load_failing.error} (retry in ${m.load_failing.retry_in_s} s)`));
    }
    return out;
  }

  function learnedSize(sizes, model) {
    const rows = sizes && sizes[model];
    if (!rows) return null;
    const values = Object.values(rows).map(Number).filter((v) => v > 0);
    return values.length ? Math.max(...values) : null;
  }

  // --- drawing -------------------------------------------------------------------
  function memoryBar(d, sizes) {
    const mem = d.memory || {};
    const resident = d.models.filter((m) => m.state === "loaded" || m.state === "loading");
    const sized = resident.map((m) => ({ m, size: Number(m.size) || learnedSize(sizes, m.model) || 0 }));
    const used = sized.reduce((a, s) => a + s.size, 0);
    const capacity = Number(mem.capacity) || Math.max(Number(mem.budget) || 0, used);
    const bar = el("div", { class: "membar", "data-daemon": d.name, "data-capacity": capacity });
    for (const { m, size } of sized) {
      const state = runnerState(m);
      const seg = el(
        "div",
        {
          class: `seg state-${state}${m.pinned ? " flag-pinned" : ""}${m.prefetched ? " flag-prefetched" : ""}`,
          "data-model": m.model,
          "data-state": state,
          "data-size": size,
          title: `${m.model}: ${state}, ${bytes(size)}${m.pinned ? ", pinned" : ""}${m.prefetched ? ", prefetched" : ""}`,
        },
        m.model,
      );
      seg.style.width = `${pct(size, capacity)}%`;
      bar.append(seg);
    }
    if (mem.budget !== null && mem.budget !== undefined && capacity > 0) {
      const mark = el("div", { class: "budget-mark", title: `budget ${bytes(mem.budget)}` });
      mark.style.left = `${pct(mem.budget, capacity)}%`;
      bar.append(mark);
    }
    const text = el(
      "div",
      { class: "memtext muted", "data-daemon": d.name },
      `used ${bytes(mem.used)} · `,
      mem.capacity === null || mem.capacity === undefined
        ? "capacity unknown (the bar is what is loaded; set ?memory= or ALB_MEMORY)"
        : `budget ${bytes(mem.budget)} · capacity ${bytes(mem.capacity)} (${mem.source})`,
      mem.external ? ` · others ${bytes(mem.external)}` : "",
      mem.ceiling_learned ? ` · learned ceiling ${bytes(mem.ceiling_learned)}` : "",
    );
    return [bar, text];
  }

  function actionButtons(d, m) {
    if (!credential) return null;
    const cell = el("td", { class: "actions" });
    const act = (action, label) =>
      el("button", { type: "button", "data-action": action, onclick: () => steer(m.model, d.name, action) }, label);
    if (m.state !== "unloaded") cell.append(act(m.pinned ? "unpin" : "pin", m.pinned ? "unpin" : "pin"));
    if (m.state === "loaded" && !m.pinned) cell.append(" ", act("unload", "unload"));
    return cell;
  }

  function runnerTable(d) {
    const admin = Boolean(credential);
    const head = el(
      "tr",
      null,
      el("th", null, "runner"),
      el("th", null, "state"),
      el("th", { class: "num" }, "size"),
      el("th", { class: "num" }, "num_ctx"),
      el("th", { class: "num" }, "in flight / slots"),
      el("th", { class: "num" }, "queued"),
      el("th", { class: "num" }, "idle unload in"),
      admin ? el("th", null, "admin") : null,
    );
    const body = el("tbody");
    for (const m of d.models) {
      const state = runnerState(m);
      body.append(
        el(
          "tr",
          { class: "runner", "data-daemon": d.name, "data-model": m.model, "data-state": state },
          el("td", null, el("code", null, m.model)),
          el("td", { class: "state" }, chip(`state-${state}`, state), ...flags(m)),
          el("td", { class: "num" }, m.size ? bytes(m.size) : "–"),
          el("td", { class: "num" }, m.num_ctx ?? "–", m.num_ctx_auto ? " (auto)" : ""),
          el("td", { class: "num in-flight" }, `${m.in_flight} / ${m.slots}`),
          el("td", { class: "num queued" }, m.queue_depth),
          el("td", { class: "num" }, m.bridge_unload_in_s === null ? "–" : `${m.bridge_unload_in_s} s`),
          admin ? actionButtons(d, m) : null,
        ),
      );
    }
    return el("table", { class: "grid runners" }, el("thead", null, head), body);
  }

  function drawDaemons(data) {
    const box = $("daemons");
    const out = [];
    for (const d of data.daemons || []) {
      out.push(
        el(
          "div",
          { class: "daemon", "data-daemon": d.name },
          el(
            "div",
            { class: "daemon-head" },
            el("span", { class: "daemon-name" }, d.name),
            el("span", { class: d.up ? "up" : "down" }, d.up ? "up" : "down"),
            el("span", { class: "muted" }, `circuit ${d.circuit}`),
            el("span", { class: "muted" }, `parallel ${d.parallel}`),
            d.url ? el("code", { class: "muted" }, d.url) : null,
            d.error ? el("span", { class: "down" }, d.error) : null,
          ),
          ...memoryBar(d, data.sizes_learned),
          d.models.length ? runnerTable(d) : el("p", { class: "muted" }, "no runners"),
        ),
      );
    }
    box.replaceChildren(...(out.length ? out : [el("p", { class: "muted" }, "no daemons")]));
    const c = data.coordination;
    $("coordination").textContent = c ? `coordination ${c.mode}, ${c.replicas} replica${c.replicas === 1 ? "" : "s"}` : "";
  }

  function drawQueues(data) {
    const per = new Map();
    for (const d of data.daemons || []) {
      for (const m of d.models) {
        const row = per.get(m.model) || { in_flight: 0, slots: 0, queued: 0, where: [] };
        row.in_flight += m.in_flight;
        row.queued += m.queue_depth;
        if (m.state !== "unloaded") row.slots += m.slots;
        row.where.push(`${runnerState(m)} on ${d.name}`);
        per.set(m.model, row);
      }
    }
    const rows = [...per.entries()].sort((a, b) => a[0].localeCompare(b[0]));
    $("queues").tBodies[0].replaceChildren(
      ...rows.map(([model, r]) =>
        el(
          "tr",
          { class: r.in_flight || r.queued ? "busy" : "", "data-model": model },
          el("td", null, el("code", null, model)),
          el("td", { class: "num in-flight" }, r.in_flight),
          el("td", { class: "num slots" }, r.slots),
          el("td", { class: "num queued" }, r.queued),
          el("td", { class: "muted" }, r.where.join(", ")),
        ),
      ),
    );
  }

  // A decision's inputs in one short line: scalars (sizes in bytes shown as such) and
  // non-empty lists, at most five.
  function inputsText(inputs) {
    const parts = [];
    for (const [k, v] of Object.entries(inputs || {})) {
      if (parts.length >= 5) break;
      if (v === null || v === undefined || typeof v === "object" && !Array.isArray(v)) continue;
      if (Array.isArray(v)) {
        if (v.length && v.every((x) => typeof x !== "object")) parts.push(`${k} ${v.join(", ")}`);
      } else if (typeof v === "number" && /size|budget|used|bytes/.test(k)) {
        parts.push(`${k} ${bytes(v)}`);
      } else {
        parts.push(`${k} ${v}`);
      }
    }
    return parts.join(" · ");
  }

  function drawDecisions(r) {
    const note = $("decisions-note");
    const body = $("decisions").tBodies[0];
    if (r.status !== 200) {
      body.replaceChildren();
      note.hidden = false;
      note.textContent =
        r.status === 401 || r.status === 403
          ? `The decision log needs the admin scope (${errorText(r)}): give an admin key or the admin token.`
          : `The decision log is not available: ${errorText(r)}.`;
      return;
    }
    const rows = (r.body && r.body.decisions) || [];
    note.hidden = rows.length > 0;
    note.textContent = rows.length ? "" : "no decisions yet";
    body.replaceChildren(
      ...rows.map((d) =>
        el(
          "tr",
          { class: "decision", "data-kind": d.kind, "data-model": d.model },
          el("td", { class: "muted" }, clock(d.ts)),
          el("td", { class: "kind" }, d.kind),
          el("td", null, el("code", null, d.model)),
          el("td", null, d.daemon),
          el("td", { class: "reason" }, d.reason, el("span", { class: "inputs" }, inputsText(d.inputs))),
        ),
      ),
    );
  }

  function drawEvents(r) {
    const dl = $("events");
    const facts = [];
    const add = (key, label, value) =>
      facts.push(el("dt", null, label), el("dd", { id: `events-${key}` }, value));
    if (r.status !== 200 && !(r.body && "mode" in r.body)) {
      add("mode", "mode", `unavailable (${errorText(r)})`);
    } else {
      const e = r.body;
      add("mode", "mode", e.mode === null ? "not running" : e.mode);
      if (e.mode && e.mode !== "off") {
        add("backlog", "records waiting", e.backlog);
        add("sender", "sender", e.sender_idle ? "idle (all delivered)" : "sending");
        if (e.shipper) {
          add("shipper", "shipper", `${e.shipper.running ? "running" : "down"}, ${e.shipper.restarts} restarts, ${e.shipper.pending} pending`);
        }
        add("consumer", "consumer", `${e.consumer_group}: ${e.consumer_ready ? "ready" : "not ready"}`);
        add("prefetched", "prefetched, unused", e.prefetched_unused);
        if (e.producer) add("producer", "producer", e.producer);
      }
    }
    dl.replaceChildren(...facts);
  }

  function drawPredictor(r) {
    const body = $("transitions").tBodies[0];
    const src = $("predictor-source");
    if (r.status !== 200) {
      src.textContent = `(${errorText(r)})`;
      body.replaceChildren();
      return;
    }
    const p = r.body;
    const win = p.window ? (p.window.kind === "time" ? `, last ${p.window.minutes} min` : `, last ${p.window.transitions}`) : "";
    src.textContent = `(${p.source}${win}${p.source === "kafka" ? ": the Faust worker holds them" : ""})`;
    const rows = p.transitions || [];
    if (!rows.length) {
      body.replaceChildren(el("tr", null, el("td", { class: "muted", colSpan: 5 }, "no transitions seen yet")));
      return;
    }
    body.replaceChildren(
      ...rows.map((t) => {
        const fill = el("span");
        fill.style.width = `${pct(t.probability, 1)}%`;
        return el(
          "tr",
          { class: "transition", "data-from": t.from, "data-to": t.to },
          el("td", null, el("code", null, t.from)),
          el("td", null, el("code", null, t.to)),
          el("td", { class: "probability" }, el("span", { class: "pbar" }, fill), `${(100 * t.probability).toFixed(0)}%`),
          el("td", { class: "num" }, t.count),
          el("td", { class: "num" }, `${t.gap_s.toFixed(1)} s`),
        );
      }),
    );
  }

  function problem(text) {
    const box = $("problem");
    box.hidden = !text;
    box.textContent = text || "";
  }

  // The answer to the last admin action (kept until the next one).
  function notice(ok, text) {
    const box = $("action");
    box.hidden = false;
    box.dataset.ok = String(ok);
    box.textContent = text;
  }

  // --- the loop ------------------------------------------------------------------
  async function refresh() {
    const live = $("live");
    try {
      const [models, decisions, events, predictor] = await Promise.all([
        getJSON("/alb/v1/models"),
        getJSON(`/alb/v1/decisions?limit=${DECISIONS}`),
        getJSON("/alb/v1/events"),
        getJSON(`/alb/v1/predictor?limit=${TRANSITIONS}`),
      ]);
      if (models.status === 401 || models.status === 403) {
        problem(`${errorText(models)}: this bridge needs a key with the read scope; paste one above.`);
      } else if (models.status !== 200) {
        problem(`/alb/v1/models answered ${errorText(models)}`);
      } else {
        problem("");
        drawDaemons(models.body);
        drawQueues(models.body);
      }
      drawDecisions(decisions);
      drawEvents(events);
      drawPredictor(predictor);
      const ok = models.status === 200;
      live.dataset.state = ok ? "live" : "error";
      live.textContent = `${ok ? "live" : "no data"} · ${new Date().toLocaleTimeString([], { hour12: false })}`;
    } catch (err) {
      live.dataset.state = "error";
      live.textContent = "bridge unreachable";
      problem(`cannot reach the bridge: ${err}`);
    } finally {
      timer = setTimeout(refresh, POLL_MS);
    }
  }

  function restart() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    refresh();
  }

  async function steer(model, daemon, action) {
    const path = `/alb/v1/models/${encodeURIComponent(model)}/${action}`;
    try {
      const resp = await fetch(BASE + path, {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ daemon }),
        cache: "no-store",
        credentials: "omit",
        redirect: "error",
      });
      let body = null;
      try {
        body = await resp.json();
      } catch {
        body = null;
      }
      notice(resp.ok, `${action} ${model}: ${resp.ok ? "done" : errorText({ status: resp.status, body })}`);
    } catch (err) {
      notice(false, `${action} ${model}: ${err}`);
    }
    restart();
  }

  function showAuth() {
    $("auth-state").textContent = credential ? "credential in use (this tab only)" : "read-only";
    $("credential").value = "";
    $("credential").placeholder = credential ? "•••••• (set)" : "none (read-only)";
  }

  $("auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    credential = $("credential").value.trim();
    if (credential) sessionStorage.setItem(STORE, credential);
    else sessionStorage.removeItem(STORE);
    showAuth();
    restart();
  });
  $("auth-clear").addEventListener("click", () => {
    credential = "";
    sessionStorage.removeItem(STORE);
    showAuth();
    restart();
  });

  showAuth();
  refresh();
})();
