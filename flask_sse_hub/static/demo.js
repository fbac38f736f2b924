// The demo page of flask-sse-hub: one SSEHubSource (sse-hub.js: one stream
// shared by every tab of this browser, an EventSource where it cannot share) on
// the chosen channels, a publish form, and the hub's counters from /stats.
//
// No dependencies and nothing from outside the hub. Every URL is relative to
// the page (which is the hub's root), so it works behind a path prefix.
// Whatever comes from the hub or the user is inserted as text (textContent),
// never as HTML.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "flask-sse-hub.token";
  const GAP = "sse-hub-gap";
  const MAX_ROWS = 500;
  const STATS_EVERY_MS = 2000;
  const numbers = new Intl.NumberFormat("en-US");
  // Where everything is (the template's data-urls); null: not served here, hidden.
  const URLS = Object.assign(
    { static: "static/", stream: "stream", publish: "publish", stats: "stats",
      presence: "presence", disconnect: "disconnect" },
    JSON.parse(document.body.dataset.urls || "{}"),
  );

  let source = null; // the current SSEHubSource
  let channels = []; // its channels
  const listeners = new Map(); // named type -> its listener on `source`
  let everOpen = false;
  let reconnects = 0;
  let received = 0;
  let lastId = null; // the id the browser resumes after, as far as the page saw
  let clientReady = false; // sse-hub.js has loaded (or failed to)

  // -- small helpers ----------------------------------------------------------

  const splitList = (text) => text.split(/[\s,]+/).filter(Boolean);
  const unique = (list) => [...new Set(list)];
  const pad = (n, width) => String(n).padStart(width, "0");
  const clock = (d) =>
    `${pad(d.getHours(), 2)}:${pad(d.getMinutes(), 2)}:${pad(d.getSeconds(), 2)}.${pad(d.getMilliseconds(), 3)}`;

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // -- settings: the page's own URL and the tab's sessionStorage -------------

  // /?channel=a&channel=b&event=order-created preselects channels and types,
  // and connecting writes the choice back, so a reload or a shared link keeps it.
  function readPageQuery() {
    const params = new URLSearchParams(location.search);
    const chosen = unique(params.getAll("channel").flatMap(splitList));
    const types = unique(params.getAll("event").flatMap(splitList));
    if (chosen.length) $("channels").value = chosen.join(", ");
    if (types.length) $("types").value = types.join(", ");
  }

  function writePageQuery() {
    const params = new URLSearchParams();
    if (!(channels.length === 1 && channels[0] === "default")) {
      for (const channel of channels) params.append("channel", channel);
    }
    for (const type of chosenTypes()) params.append("event", type);
    const query = params.toString();
    history.replaceState(null, "", query ? "?" + query : location.pathname);
  }

  const token = () => $("token").value.trim();

  function loadToken() {
    try {
      $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (err) { /* storage disabled: the field just starts empty */ }
  }

  function saveToken() {
    try {
      if (token()) sessionStorage.setItem(TOKEN_KEY, token());
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (err) { /* storage disabled */ }
  }

  // -- the connection ---------------------------------------------------------

  // sse-hub.js, next to this script; should it not load, a plain EventSource.
  const clientLoaded = new Promise((resolve) => {
    const script = document.createElement("script");
    script.src = URLS.static + "sse-hub.js";
    script.onload = script.onerror = () => resolve();
    document.head.append(script);
  });
  const Source = () => window.SSEHubSource || EventSource;
  const open = (url) => (window.SSEHubSource ? new window.SSEHubSource(url) : new EventSource(url));

  function setState(state, note) {
    $("state").textContent = state;
    $("state").dataset.state = state;
    $("conn-note").textContent = note || "";
  }

  function setLastId(id) {
    lastId = id || null;
    $("last-id").textContent = id || "–";
  }

  function streamUrl(withToken) {
    const params = new URLSearchParams();
    for (const channel of channels) params.append("channel", channel);
    if (withToken && token()) params.set("token", token());
    return URLS.stream + "?" + params.toString();
  }

  function connect() {
    disconnect();
    if (!clientReady) {
      clientLoaded.then(() => { clientReady = true; connect(); });
      return;
    }
    channels = unique(splitList($("channels").value));
    if (!channels.length) channels = ["default"];
    $("channels").value = channels.join(", ");
    writePageQuery();
    $("stream-url").textContent = streamUrl(false) + (token() ? "&token=…" : "");
    updateCurlExample();

    everOpen = false;
    reconnects = 0;
    setLastId(null);
    setState("connecting");
    const url = streamUrl(true);
    const es = open(url);
    source = es;
    es.onopen = () => {
      if (es !== source) return;
      if (everOpen) reconnects += 1;
      everOpen = true;
      const times = `${reconnects} reconnect${reconnects > 1 ? "s" : ""}`;
      setState("open", !reconnects ? "" : lastId ? `resumed (${times})` : `reconnected (${times})`);
      refreshStats();
    };
    es.onerror = () => {
      if (es !== source) return;
      if (es.readyState === Source().CLOSED) {
        setState("closed", "the hub refused the stream");
        explainRefusal(es, url);
      } else if (everOpen) {
        setState("reconnecting", lastId
          ? "the browser retries, then resumes after the last id"
          : "the browser retries (no event seen yet: it starts from now)");
      } else {
        setState("connecting", "the hub is not answering; retrying");
      }
    };
    es.onmessage = (e) => addEvent("message", e);
    syncListeners();
  }

  function disconnect() {
    if (source) source.close();
    source = null;
    listeners.clear();
  }

  // A source gives no status or reason when the hub refuses it (400,
  // 401, 403): ask once more with fetch to show why.
  async function explainRefusal(es, url) {
    const controller = new AbortController();
    try {
      const answer = await fetch(url, { signal: controller.signal, cache: "no-store" });
      if (answer.ok) {
        controller.abort(); // a stream after all: not what failed
        if (es === source) setState("closed", "the answer was not an event stream");
        return;
      }
      const text = await answer.text();
      let reason = text;
      try { reason = JSON.parse(text).error || text; } catch (err) { /* plain text */ }
      if (es === source) setState("closed", `${answer.status}: ${String(reason).trim().slice(0, 300)}`);
    } catch (err) {
      if (es === source) setState("closed", "the hub is unreachable");
    }
  }

  // -- named event types -------------------------------------------------------

  const chosenTypes = () =>
    unique(splitList($("types").value)).filter((type) => type !== "message" && type !== GAP);

  // Listeners follow the types field at once, without reconnecting.
  function syncListeners() {
    if (!source) return;
    const wanted = new Set([GAP, ...chosenTypes()]);
    for (const [type, listener] of listeners) {
      if (!wanted.has(type)) {
        source.removeEventListener(type, listener);
        listeners.delete(type);
      }
    }
    for (const type of wanted) {
      if (listeners.has(type)) continue;
      const listener = (e) => addEvent(type, e);
      source.addEventListener(type, listener);
      listeners.set(type, listener);
    }
  }

  function addType(type) {
    if (type === "message" || chosenTypes().includes(type)) return;
    $("types").value = [...chosenTypes(), type].join(", ");
    syncListeners();
    writePageQuery();
  }

  // -- the event list ----------------------------------------------------------

  function addEvent(type, e) {
    received += 1;
    $("count").textContent = numbers.format(received);
    if (e.lastEventId) setLastId(e.lastEventId);

    const now = new Date();
    const row = element("tr");
    row.dataset.id = e.lastEventId;
    row.dataset.type = type;
    const when = element("time", "", clock(now));
    when.dateTime = now.toISOString();
    const timeCell = element("td", "time");
    timeCell.append(when);
    const typeCell = element("td", "type");
    typeCell.append(element("span", type === "message" ? "tag muted" : "tag", type));
    const dataCell = element("td", "data");
    dataCell.append(element("pre", "", e.data));
    row.append(timeCell, element("td", "id", e.lastEventId || "–"), typeCell, dataCell);
    if (type === GAP) {
      row.className = "gap";
      row.title = "The hub could not resume from the id the browser sent (unknown, or older " +
        "than its history): the retained history follows.";
    }
    const rows = $("events");
    rows.prepend(row);
    while (rows.rows.length > MAX_ROWS) rows.deleteRow(-1);
    $("empty").hidden = true;
  }

  function clearEvents() {
    $("events").replaceChildren();
    received = 0;
    $("count").textContent = "0";
    $("empty").hidden = false;
  }

  function updateCurlExample() {
    const lines = [`curl -X POST '${new URL(URLS.publish, location.href).href}'`];
    lines.push("  -H 'Content-Type: application/json'");
    if (token() || document.body.dataset.tokenRequired === "true") {
      lines.push("  -H \"Authorization: Bearer $TOKEN\"");
    }
    const example = { channel: channels[0] || "default", event: "greeting", data: "hello" };
    lines.push(`  -d '${JSON.stringify(example)}'`);
    $("curl-example").textContent = lines.join(" \\\n");
  }

  // -- publishing --------------------------------------------------------------

  function showResult(kind, text, id) {
    const result = $("publish-result");
    result.dataset.kind = kind;
    result.textContent = text;
    if (id) result.dataset.id = id;
    else delete result.dataset.id;
  }

  async function publish(e) {
    e.preventDefault();
    const channel = $("pub-channel").value.trim() || "default";
    const type = $("pub-event").value.trim();
    const text = $("pub-data").value;
    let data = text;
    if ($("pub-json").checked) {
      try {
        data = JSON.parse(text);
      } catch (err) {
        showResult("error", "data is not valid JSON: " + err.message);
        return;
      }
    }
    const body = { channel, data };
    if (type) {
      body.event = type;
      addType(type); // listen before it can arrive
    }
    const headers = { "Content-Type": "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    const button = $("publish-form").querySelector("button[type=submit]");
    button.disabled = true;
    showResult("pending", "publishing…");
    try {
      const answer = await fetch(URLS.publish, { method: "POST", headers, body: JSON.stringify(body) });
      const json = await answer.json().catch(() => ({}));
      if (answer.ok) {
        const elsewhere = channels.includes(channel) ? "" : " (not a subscribed channel: it will not show here)";
        showResult("ok", `published ${json.id} to ${channel}${elsewhere}`, json.id);
        refreshStats();
      } else {
        showResult("error", `${answer.status} ${answer.statusText}: ${json.error || "no reason given"}`);
      }
    } catch (err) {
      showResult("error", "the hub is unreachable: " + err.message);
    } finally {
      button.disabled = false;
    }
  }

  // -- stats ---------------------------------------------------------------------

  let statsRound = 0;
  let statsTimer = null;

  function setNumber(id, value) {
    const el = $(id);
    if (typeof value === "number") {
      el.textContent = numbers.format(value);
      el.dataset.value = String(value);
    } else {
      el.textContent = "–";
      delete el.dataset.value;
    }
  }

  function renderChannels(perChannel) {
    const names = Object.keys(perChannel).sort();
    const rows = names.map((name) => {
      const row = element("tr", channels.includes(name) ? "mine" : "");
      row.dataset.channel = name;
      row.append(element("td", "", name), element("td", "num", numbers.format(perChannel[name])));
      return row;
    });
    if (!rows.length) {
      const row = element("tr", "none");
      const cell = element("td", "", "no subscribers");
      cell.colSpan = 2;
      row.append(cell);
      rows.push(row);
    }
    $("channel-stats").replaceChildren(...rows);

    // The channel chooser: channels other pages listen to, one click away.
    const chosen = new Set(splitList($("channels").value));
    const chips = names.filter((name) => !chosen.has(name)).slice(0, 12).map((name) => {
      const chip = element("button", "chip", "+ " + name);
      chip.type = "button";
      chip.title = "Subscribe to " + name + " too";
      chip.addEventListener("click", () => {
        $("channels").value = [...splitList($("channels").value), name].join(", ");
        connect();
      });
      return chip;
    });
    $("channel-chips").replaceChildren(...chips);
  }

  async function refreshStats() {
    const round = ++statsRound;
    clearTimeout(statsTimer);
    const status = $("stats-updated");
    try {
      if (document.hidden) return;
      if (!URLS.stats) {
        await refreshPresence();
        status.textContent = `updated ${clock(new Date())}`;
        return;
      }
      const answer = await fetch(URLS.stats, { cache: "no-store" });
      if (!answer.ok) throw new Error(`${answer.status} ${answer.statusText}`);
      const stats = await answer.json();
      if (round !== statsRound) return; // a newer round is under way
      setNumber("subscribers", stats.subscribers);
      setNumber("published", stats.events_published);
      setNumber("delivered", stats.events_delivered);
      setNumber("dropped", stats.subscribers_dropped_slow);
      setNumber("replays", stats.replays_served);
      setNumber("gaps", stats.gaps_reported);
      $("stats-backend").textContent = stats.backend || "–";
      renderChannels(stats.channels || {});
      await refreshPresence();
      status.textContent = `updated ${clock(new Date())} · this worker`;
      status.classList.remove("error");
      $("stats-panel").classList.remove("stale");
    } catch (err) {
      if (round !== statsRound) return;
      status.textContent = `stats unavailable (${err.message}); retrying`;
      status.classList.add("error");
      $("stats-panel").classList.add("stale");
    } finally {
      if (round === statsRound) statsTimer = setTimeout(refreshStats, STATS_EVERY_MS);
    }
  }

  // -- presence and ending streams -------------------------------------------------

  async function refreshPresence() {
    if (!URLS.presence) return;
    const items = [];
    for (const channel of channels.slice(0, 8)) {
      const answer = await fetch(`${URLS.presence}?channel=${encodeURIComponent(channel)}`, { cache: "no-store" });
      if (!answer.ok) continue; // e.g. 403 away from loopback without SSE_STATS_TOKEN
      const found = await answer.json();
      const who = found.subjects.length ? `: ${found.subjects.join(", ")}` : "";
      const item = element("li", "", `${found.channel} — ${found.occupancy} stream(s)${who}`);
      item.dataset.channel = found.channel;
      item.dataset.occupancy = String(found.occupancy);
      items.push(item);
    }
    $("presence").replaceChildren(...items);
  }

  async function endStreams() {
    const headers = { "Content-Type": "application/json" };
    const token = $("token").value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    const ended = [];
    for (const channel of channels) {
      const answer = await fetch(URLS.disconnect, { method: "POST", headers, body: JSON.stringify({ channel }) });
      if (!answer.ok) {
        const reason = (await answer.json().catch(() => ({}))).error || answer.statusText;
        $("end-result").textContent = `refused (${answer.status}): ${reason}`;
        return;
      }
      ended.push(channel);
    }
    $("end-result").textContent = `ended the streams of ${ended.join(", ")}; they reconnect and resume`;
  }

  // -- wiring ---------------------------------------------------------------------

  $("subscribe-form").addEventListener("submit", (e) => { e.preventDefault(); connect(); });
  $("disconnect").addEventListener("click", () => {
    disconnect();
    setState("closed", "disconnected");
  });
  $("types").addEventListener("change", () => { syncListeners(); writePageQuery(); });
  $("token").addEventListener("input", saveToken);
  $("token").addEventListener("change", connect);
  $("publish-form").addEventListener("submit", publish);
  $("pub-data").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("publish-form").requestSubmit();
  });
  $("clear").addEventListener("click", clearEvents);
  $("end-streams").addEventListener("click", endStreams);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshStats(); });

  // What this page's server does not serve (a library app mounts only some of it).
  if (!URLS.publish) $("publish-form").closest("section").hidden = true;
  if (!URLS.disconnect) $("end-streams").closest("p").hidden = true;
  if (!URLS.presence) $("presence").hidden = $("presence-title").hidden = true;
  if (!URLS.stats && !URLS.presence) $("stats-panel").hidden = true;
  if (!URLS.stats) $("channel-stats").closest("table").hidden = true;
  for (const id of ["subscribers", "published", "delivered", "dropped", "replays", "gaps"]) {
    if (!URLS.stats) $(id).closest("div").hidden = true;
  }

  readPageQuery();
  loadToken();
  connect();
  refreshStats();
})();
