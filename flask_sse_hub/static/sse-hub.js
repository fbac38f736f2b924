// sse-hub.js — an EventSource-like client for flask-sse-hub that opens ONE
// stream per browser (per origin and hub URL) and shares it between tabs.
//
//   <script src="/stream/sse-hub.js"></script>
//   const source = new SSEHubSource("/stream", { channels: ["orders"] });
//   source.addEventListener("order-created", (e) => console.log(e.data, e.lastEventId));
//   source.addEventListener("sse-hub-gap", reloadState);
//
// How it works (docs/protocol.md#stream, #resume, #hub-events):
// * Every SSEHubSource is a *member*. One member in the browser is the
//   *leader*: it holds a Web Lock (navigator.locks) for its life. The others
//   wait in that lock's queue, so when the leader's tab closes the next one
//   takes over at once.
// * The leader reads the stream with fetch() and a WHATWG parser (an
//   EventSource cannot read the hub's `channel:` field nor choose the
//   Last-Event-ID it resumes from), subscribed with ?relay=1 to the union of
//   every member's channels, and relays every block over a BroadcastChannel.
// * Every member sees every relayed block, so every member knows the stream's
//   position (its last id); it dispatches only its own channels' events (and
//   the hub's own, untagged, events such as sse-hub-gap to everyone).
// * A new leader resumes from that position: nothing lost, and a small set of
//   recently dispatched ids per member keeps anything from arriving twice.
// * Without navigator.locks or BroadcastChannel (e.g. not a secure context),
//   each SSEHubSource is a plain EventSource behind the same API.
//
// Messages on the BroadcastChannel ("sse-hub:<key>"), each {k, ...}:
//   hello {from, channels}  a member's interest (on start, and answering who)
//   bye   {from}            a member closed
//   who   {}                a new leader asks every member to say hello
//   ev    {type, data, id, own, ch}  a dispatched block: id is the stream's
//                           last event id after it, own whether the block had
//                           its own id line, ch its channel (null: the hub's own)
//   pos   {id, to?}         the position changed without an event (sse-hub-position),
//                           or the position told to a member that just joined
//   open  {channels, id, retry, to?}  the stream is open on these channels
//   error {}                the stream failed; the leader retries
//   fail  {to?}             refused: the member (or, without to, every member) closes
//
// Plain ES2020, no build step, no dependency; defines window.SSEHubSource only.
(function (global) {
  "use strict";
  if (global.SSEHubSource) return;

  const CONNECTING = 0;
  const OPEN = 1;
  const CLOSED = 2;
  const NS = "sse-hub:";
  /** docs/protocol.md#channels */
  const CHANNEL_RE = /^[A-Za-z0-9_\-.:/]{1,128}$/;
  const DEFAULT_RETRY_MS = 3000; // what Chromium's EventSource waits before the hub says
  const MAX_BACKOFF_MS = 30000;
  const SETTLE_MS = 30; // the leader gathers interests this long before (re)connecting
  const PRUNE_MS = 5000; // the leader drops members whose tab vanished without a bye
  const SEEN_IDS = 512; // per member: recently dispatched ids (the no-duplicate guard)

  const hasShared = () =>
    typeof BroadcastChannel === "function" &&
    typeof navigator !== "undefined" && !!navigator.locks &&
    typeof navigator.locks.request === "function" && typeof fetch === "function" &&
    typeof ReadableStream === "function" && typeof AbortController === "function";

  function randomId() {
    if (global.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }

  function channelList(options, url) {
    let given = options.channels;
    if (typeof given === "string") given = [given];
    const names = [...(given || []), ...url.searchParams.getAll("channel")];
    const unique = [...new Set(names.map(String))];
    return unique.length ? unique : ["default"];
  }

  /** ``base`` (no channel params) with ``channels`` first, then its own params, then ``extra``. */
  function streamUrl(base, channels, extra) {
    const url = new URL(base.href);
    const params = new URLSearchParams();
    for (const channel of channels) params.append("channel", channel);
    for (const [name, value] of base.searchParams) params.append(name, value);
    for (const [name, value] of Object.entries(extra || {})) params.set(name, value);
    url.search = params.toString();
    return url;
  }

  // -- the WHATWG event-stream parser (plus the hub's `channel:` field) ---------------
  // https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

  class Parser {
    constructor(lastId, handlers) {
      this.handlers = handlers; // {event(block), position(id), retry(ms)}
      this.pending = "";
      this.skipLF = false; // the last chunk ended with CR: a leading LF belongs to it
      this.lastId = lastId; // the source's last event id string
      this.idBuffer = lastId;
      this.ownId = false;
      this.type = "";
      this.data = "";
      this.channel = null;
    }

    feed(text) {
      if (!text) return;
      if (this.skipLF && text.startsWith("\n")) text = text.slice(1);
      this.skipLF = false;
      const all = this.pending + text;
      const ends = /\r\n|\r|\n/g;
      let start = 0;
      let match;
      while ((match = ends.exec(all)) !== null) {
        this.line(all.slice(start, match.index));
        start = ends.lastIndex;
        if (match[0] === "\r" && start === all.length) this.skipLF = true;
      }
      this.pending = all.slice(start);
    }

    line(line) {
      if (line === "") return this.dispatch();
      if (line.startsWith(":")) return undefined; // a comment (the opening, heartbeats)
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      switch (field) {
        case "event": this.type = value; break;
        case "data": this.data += value + "\n"; break;
        case "id":
          if (!value.includes("\0")) { this.idBuffer = value; this.ownId = true; }
          break;
        case "retry": if (/^[0-9]+$/.test(value)) this.handlers.retry(Number(value)); break;
        case "channel": this.channel = value; break;
        default: break; // ignored, as by every WHATWG client
      }
      return undefined;
    }

    dispatch() {
      const id = this.idBuffer;
      const moved = id !== this.lastId;
      this.lastId = id;
      const block = { type: this.type || "message", data: this.data, id, own: this.ownId, ch: this.channel };
      this.type = "";
      this.data = "";
      this.channel = null;
      this.ownId = false;
      if (block.data === "") {
        if (moved) this.handlers.position(id); // sse-hub-position: an id without data
        return;
      }
      block.data = block.data.slice(0, -1);
      this.handlers.event(block);
    }
  }

  // -- the leader: one stream for every member ------------------------------------------

  class Leader {
    constructor(source) {
      this.source = source;
      this.members = new Map([[source._member, source._channels]]);
      // The union the previous leader streamed: kept until every live member has had
      // time to say hello, so that no member's channel drops out (and its events are
      // skipped by the resume) during a hand-over.
      this.inherited = source._union;
      this.union = [];
      this.acceptedUnion = null; // the last union the hub opened a stream for
      this.isOpen = false;
      this.failures = 0;
      this.stopped = false;
      this.controller = null;
      this.switching = false; // the current stream is being replaced (the union changed)
      this.dirtyTimer = null;
      this.wake = null;
      this.done = new Promise((resolve) => { this.finish = resolve; });
    }

    async run() {
      this.source._post({ k: "who" });
      this.pruneTimer = setInterval(() => this.prune(), PRUNE_MS);
      await this.sleep(SETTLE_MS); // the hellos arrive (and any relayed block still queued)
      if (!this.stopped) this.loop();
      await this.done;
    }

    stop() {
      if (this.stopped) return;
      this.stopped = true;
      clearInterval(this.pruneTimer);
      clearTimeout(this.dirtyTimer);
      if (this.controller) this.controller.abort();
      if (this.wake) this.wake();
      this.finish();
    }

    sleep(ms) {
      return new Promise((resolve) => {
        const timer = setTimeout(resolve, ms);
        this.wake = () => { clearTimeout(timer); resolve(); };
      });
    }

    // Members ----------------------------------------------------------------

    join(member, channels) {
      this.members.set(member, new Set(channels));
      const covered = channels.every((channel) => this.union.includes(channel));
      const source = this.source;
      if (this.isOpen && covered) {
        source._post({ k: "open", to: member, channels: this.union, id: source._lastEventId, retry: source._retryMs });
      } else {
        source._post({ k: "pos", to: member, id: source._lastEventId });
        this.changed();
      }
    }

    leave(member) {
      if (this.members.delete(member)) this.changed();
    }

    async prune() {
      if (this.inherited.length) {
        this.inherited = [];
        this.changed();
      }
      let names;
      try {
        const state = await navigator.locks.query();
        names = new Set([...state.held, ...state.pending].map((lock) => lock.name));
      } catch (err) { return; }
      for (const member of [...this.members.keys()]) {
        if (member !== this.source._member && !names.has(memberLock(member))) this.leave(member);
      }
    }

    wantedUnion() {
      const all = new Set(this.inherited);
      for (const channels of this.members.values()) for (const channel of channels) all.add(channel);
      return [...all].sort();
    }

    /** A member came or went: a stream on the new union, soon (changes close together are one). */
    changed() {
      clearTimeout(this.dirtyTimer);
      this.dirtyTimer = setTimeout(() => {
        if (this.stopped || this.wantedUnion().join("\n") === this.union.join("\n")) return;
        if (this.controller) {
          this.switching = true; // resumes from the last id at once, no error for anyone
          this.controller.abort();
        } // else: waiting to retry; the next attempt takes the new union
      }, SETTLE_MS);
    }

    // The stream ---------------------------------------------------------------

    async loop() {
      while (!this.stopped) {
        this.union = this.wantedUnion();
        const controller = new AbortController();
        this.controller = controller;
        this.switching = false;
        let outcome;
        try {
          outcome = await this.connect(controller);
        } catch (err) {
          outcome = { kind: "network" };
        }
        this.controller = null;
        const wasOpen = this.isOpen;
        this.isOpen = false;
        if (this.stopped) return;
        if (this.switching) continue;
        if (outcome.kind === "fatal") {
          this.failAll();
          return;
        }
        if (outcome.kind === "refused") {
          await this.refused();
          if (this.stopped) return;
          continue;
        }
        // Ended by the hub (reconnect after `retry`), or failed (back off).
        if (wasOpen || outcome.kind === "ended") this.failures = 0;
        else this.failures += 1;
        this.relay({ k: "error" });
        const retry = this.source._retryMs;
        const delay = this.failures
          ? Math.min(retry * Math.pow(1.5, this.failures - 1), Math.max(retry, MAX_BACKOFF_MS))
          : retry;
        await this.sleep(delay * (0.9 + Math.random() * 0.2));
      }
    }

    async connect(controller) {
      const source = this.source;
      const url = streamUrl(source._base, this.union, { relay: "1" });
      const headers = { Accept: "text/event-stream" };
      const lastId = source._lastEventId;
      if (lastId) {
        // Same origin: the header, as an EventSource sends it. Across origins the
        // query (docs/protocol.md#resume-ids), which needs no CORS preflight.
        if (url.origin === location.origin) headers["Last-Event-ID"] = lastId;
        else url.searchParams.set("lastEventId", lastId);
      }
      const response = await fetch(url.href, {
        headers, cache: "no-store", signal: controller.signal,
        credentials: source.withCredentials ? "include" : "same-origin",
      });
      const status = response.status;
      if (status === 204) return { kind: "fatal" };
      if (status !== 200) {
        if (status >= 400 && status < 500 && status !== 408 && status !== 429) return { kind: "refused", status };
        if (status >= 200 && status < 300) return { kind: "fatal" };
        return { kind: "retry", status };
      }
      const type = (response.headers.get("Content-Type") || "").split(";")[0].trim().toLowerCase();
      if (type !== "text/event-stream" || !response.body) return { kind: "fatal" };

      this.isOpen = true;
      this.acceptedUnion = this.union;
      this.relay({ k: "open", channels: this.union, id: lastId, retry: source._retryMs });
      const parser = new Parser(lastId, {
        event: (block) => this.relay({ k: "ev", ...block, ch: block.ch || disconnected(block) }),
        position: (id) => this.relay({ k: "pos", id }),
        retry: (ms) => { source._retryMs = ms; },
      });
      const reader = response.body.getReader();
      const decoder = new TextDecoder("utf-8");
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.feed(decoder.decode(value, { stream: true }));
          if (this.stopped || this.switching) break;
        }
      } finally {
        reader.cancel().catch(() => {});
      }
      return { kind: "ended" };
    }

    relay(message) {
      this.source._post(message);
      this.source._receive(message);
    }

    failAll() {
      this.relay({ k: "fail" });
    }

    /**
     * A 4xx for the union: whose channels? Ask the hub for each member's own set
     * (HEAD runs the stream's checks without opening one, docs/protocol.md#subscribe)
     * and close only the refused. None refused on its own (e.g. the union is over
     * SSE_MAX_CHANNELS): close the members that joined since the last accepted union,
     * or, when there are none, everyone.
     */
    async refused() {
      const source = this.source;
      const members = [...this.members.entries()];
      let refused = [];
      if (members.length > 1) {
        const answers = await Promise.all(members.map(async ([member, channels]) => {
          try {
            const answer = await fetch(streamUrl(source._base, [...channels]).href, {
              method: "HEAD", cache: "no-store",
              credentials: source.withCredentials ? "include" : "same-origin",
            });
            return answer.status >= 400 && answer.status < 500 ? member : null;
          } catch (err) {
            return null;
          }
        }));
        refused = answers.filter(Boolean);
        if (!refused.length && this.acceptedUnion) {
          const accepted = this.acceptedUnion;
          refused = members
            .filter(([, channels]) => ![...channels].every((channel) => accepted.includes(channel)))
            .map(([member]) => member);
        }
      }
      if (this.stopped) return;
      if (!refused.length) {
        this.failAll();
        return;
      }
      for (const member of refused) {
        this.members.delete(member);
        this.relay({ k: "fail", to: member });
      }
    }
  }

  /**
   * An untagged sse-hub-disconnect names the channel whose streams the hub ended
   * (docs/protocol.md#hub-events): only that channel's tabs would have seen it on
   * streams of their own. Null (every tab) for anything else.
   */
  function disconnected(block) {
    if (block.type !== "sse-hub-disconnect") return null;
    try {
      const channel = JSON.parse(block.data).channel;
      return typeof channel === "string" ? channel : null;
    } catch (err) {
      return null;
    }
  }

  const leaderLock = (key) => NS + "leader:" + key;
  const memberLock = (member) => NS + "member:" + member;

  // -- SSEHubSource -----------------------------------------------------------------------

  class SSEHubSource extends EventTarget {
    constructor(url, options) {
      super();
      options = options || {};
      const given = new URL(String(url), location.href);
      const channels = channelList(options, given);
      given.searchParams.delete("channel");
      given.searchParams.delete("relay");
      this._base = given;
      this._channels = new Set(channels);
      this._state = CONNECTING;
      this._lastEventId = "";
      this._retryMs = DEFAULT_RETRY_MS;
      this._handlers = {};
      this._closed = false;
      this._es = null;
      this._forwarded = new Set();
      Object.defineProperty(this, "url", { value: streamUrl(given, channels).href, enumerable: true });
      Object.defineProperty(this, "withCredentials", { value: !!options.withCredentials, enumerable: true });
      for (const name of ["open", "message", "error"]) {
        super.addEventListener(name, (event) => {
          const handler = this._handlers[name];
          if (typeof handler === "function") handler.call(this, event);
        });
      }
      if (!channels.every((channel) => CHANNEL_RE.test(channel))) {
        // Refused before any request, as the hub would refuse it (400).
        setTimeout(() => this._fail(), 0);
      } else if (hasShared() && options.shared !== false) {
        this._startShared();
      } else {
        this._startEventSource();
      }
    }

    get readyState() { return this._state; }

    /** The stream's last event id as this tab knows it: where a resume starts. */
    get lastEventId() { return this._lastEventId; }

    get onopen() { return this._handlers.open || null; }
    set onopen(fn) { this._handlers.open = fn; }
    get onmessage() { return this._handlers.message || null; }
    set onmessage(fn) { this._handlers.message = fn; }
    get onerror() { return this._handlers.error || null; }
    set onerror(fn) { this._handlers.error = fn; }

    addEventListener(type, listener, options) {
      super.addEventListener(type, listener, options);
      if (this._es) this._forward(String(type));
    }

    close() {
      if (this._closed) return;
      this._state = CLOSED;
      this._teardown();
    }

    // -- shared mode ------------------------------------------------------------

    _startShared() {
      const key = (this.withCredentials ? "credentials|" : "") + this._base.href;
      this._member = randomId();
      this._seen = new Set();
      this._union = []; // the channels of the shared stream, as last opened
      this._leader = null;
      this._abort = new AbortController();
      this._bus = new BroadcastChannel(NS + key);
      this._bus.onmessage = (event) => this._receive(event.data);
      const signal = this._abort.signal;
      // Held for this member's life: the leader asks the lock manager who is alive.
      navigator.locks.request(memberLock(this._member), { signal }, () =>
        new Promise((resolve) => { this._releaseMember = resolve; })).catch(() => {});
      // Waits in line to lead; held while leading.
      navigator.locks.request(leaderLock(key), { signal }, () => this._lead()).catch(() => {});
      this._onPageHide = () => this._post({ k: "bye", from: this._member });
      this._onPageShow = (event) => { if (event.persisted) this._hello(); };
      addEventListener("pagehide", this._onPageHide);
      addEventListener("pageshow", this._onPageShow);
      this._hello();
    }

    async _lead() {
      if (this._closed) return;
      const leader = new Leader(this);
      this._leader = leader;
      try {
        await leader.run();
      } finally {
        if (this._leader === leader) this._leader = null;
      }
    }

    _hello() {
      this._post({ k: "hello", from: this._member, channels: [...this._channels] });
    }

    _post(message) {
      if (!this._closed) this._bus.postMessage(message);
    }

    _receive(m) {
      if (this._closed || !m || (m.to && m.to !== this._member)) return;
      const leader = this._leader;
      switch (m.k) {
        case "hello": if (leader) leader.join(m.from, m.channels); break;
        case "bye": if (leader) leader.leave(m.from); break;
        case "who": this._hello(); break;
        case "pos": this._lastEventId = m.id || ""; break;
        case "ev": this._event(m); break;
        case "open":
          if (m.retry) this._retryMs = m.retry;
          if (m.to) this._lastEventId = m.id || "";
          this._union = m.channels;
          if (this._state !== OPEN && [...this._channels].every((c) => m.channels.includes(c))) {
            this._state = OPEN;
            this.dispatchEvent(new Event("open"));
          }
          break;
        case "error":
          this._state = CONNECTING;
          this.dispatchEvent(new Event("error"));
          break;
        case "fail": this._fail(); break;
        default: break;
      }
    }

    _event(m) {
      this._lastEventId = m.id;
      if (this._state !== OPEN) return;
      if (m.ch !== null && m.ch !== undefined && !this._channels.has(m.ch)) return;
      if (m.own && m.id) {
        if (this._seen.has(m.id)) return; // already dispatched here (a hand-over replayed it)
        this._seen.add(m.id);
        if (this._seen.size > SEEN_IDS) this._seen.delete(this._seen.values().next().value);
      }
      this._message(m.type, m.data, m.id);
    }

    // -- fallback: a plain EventSource ------------------------------------------

    _startEventSource() {
      const es = new EventSource(this.url, { withCredentials: this.withCredentials });
      this._es = es;
      es.onopen = () => {
        if (this._closed) return;
        this._state = OPEN;
        this.dispatchEvent(new Event("open"));
      };
      es.onerror = () => {
        if (this._closed) return;
        this._state = es.readyState;
        if (es.readyState === CLOSED) this._teardown();
        this.dispatchEvent(new Event("error"));
      };
      this._forward("message");
    }

    _forward(type) {
      if (type === "open" || type === "error" || this._forwarded.has(type)) return;
      this._forwarded.add(type);
      this._es.addEventListener(type, (event) => {
        if (this._closed) return;
        this._lastEventId = event.lastEventId;
        this._message(event.type, event.data, event.lastEventId);
      });
    }

    // -- both ---------------------------------------------------------------------

    _message(type, data, lastEventId) {
      this.dispatchEvent(new MessageEvent(type, { data, lastEventId, origin: this._base.origin }));
    }

    _fail() {
      if (this._closed) return;
      this._state = CLOSED;
      this._teardown();
      this.dispatchEvent(new Event("error"));
    }

    _teardown() {
      if (this._bus) {
        this._post({ k: "bye", from: this._member });
        this._closed = true;
        this._abort.abort();
        if (this._releaseMember) this._releaseMember();
        if (this._leader) this._leader.stop();
        this._bus.close();
        removeEventListener("pagehide", this._onPageHide);
        removeEventListener("pageshow", this._onPageShow);
      }
      this._closed = true;
      if (this._es) this._es.close();
    }
  }

  for (const [name, value] of Object.entries({ CONNECTING, OPEN, CLOSED })) {
    Object.defineProperty(SSEHubSource, name, { value, enumerable: true });
    Object.defineProperty(SSEHubSource.prototype, name, { value, enumerable: true });
  }

  global.SSEHubSource = SSEHubSource;
})(typeof window !== "undefined" ? window : self);
