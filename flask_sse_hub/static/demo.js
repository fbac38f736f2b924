// The demo page: one EventSource, a publish form, live stats. No dependencies;
// every URL is relative so the page works behind a path prefix.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let source = null;
  let count = 0;

  function setState(state) {
    $("state").textContent = state;
    $("state").dataset.state = state;
  }

  function addEvent(type, e) {
    count += 1;
    $("count").textContent = String(count);
    const row = document.createElement("tr");
    if (type === "sse-hub-gap") row.className = "gap";
    for (const text of [new Date().toLocaleTimeString(), e.lastEventId || "–", type, e.data]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    row.lastChild.className = "data";
    $("events").prepend(row);
    while ($("events").rows.length > 200) $("events").deleteRow(-1);
    if (e.lastEventId) $("last-id").textContent = e.lastEventId;
  }

  function connect() {
    if (source) source.close();
    const channels = $("channels").value.split(/[\s,]+/).filter(Boolean);
    const query = channels.map((c) => "channel=" + encodeURIComponent(c)).join("&");
    setState("connecting");
    source = new EventSource("stream" + (query ? "?" + query : ""));
    source.onopen = () => setState("open");
    source.onerror = () => setState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    source.onmessage = (e) => addEvent("message", e);
    // Named events: EventSource only reports types it was told about, so the
    // page listens for the types it has seen published plus the hub's own.
    for (const type of knownTypes) listen(type);
  }

  const knownTypes = new Set(["sse-hub-gap"]);
  function listen(type) {
    knownTypes.add(type);
    if (source && type && type !== "message") source.addEventListener(type, (e) => addEvent(type, e));
  }

  $("subscribe-form").addEventListener("submit", (e) => { e.preventDefault(); connect(); });

  $("publish-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const event = $("pub-event").value.trim();
    const body = { channel: $("pub-channel").value.trim() || "default", data: $("pub-data").value };
    if (event) { body.event = event; if (!knownTypes.has(event)) listen(event); }
    const headers = { "Content-Type": "application/json" };
    const token = $("pub-token");
    if (token && token.value) headers.Authorization = "Bearer " + token.value;
    const answer = await fetch("publish", { method: "POST", headers, body: JSON.stringify(body) });
    const json = await answer.json().catch(() => ({}));
    $("publish-result").textContent = answer.ok ? "published " + json.id : "error " + answer.status + ": " + (json.error || "");
  });

  async function refreshStats() {
    try {
      const stats = await (await fetch("stats")).json();
      $("subscribers").textContent = stats.subscribers;
      $("published").textContent = stats.events_published ?? "–";
      $("delivered").textContent = stats.events_delivered;
      $("dropped").textContent = stats.subscribers_dropped_slow;
    } catch (err) { /* the hub is restarting; try again next tick */ }
  }

  connect();
  refreshStats();
  setInterval(refreshStats, 2000);
})();
