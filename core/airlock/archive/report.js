"use strict";
(function () {
  const payload = JSON.parse(document.getElementById("airlock-data").textContent);
  const byId = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  function renderIdentity() {
    const list = byId("identity");
    for (const [key, value] of payload.identity) {
      list.appendChild(el("dt", "", key));
      list.appendChild(el("dd", "mono", value));
    }
    const v = payload.verification;
    const badge = byId("verification");
    badge.className = "verify " + v.state;
    badge.textContent = v.text;
  }

  function renderTypes() {
    const box = byId("type-filters");
    for (const [type, count] of payload.types) {
      const label = el("label");
      const input = el("input");
      input.type = "checkbox";
      input.checked = true;
      input.value = type;
      input.dataset.type = type;
      input.addEventListener("change", applyFilters);
      label.appendChild(input);
      label.appendChild(document.createTextNode(" " + type + " "));
      label.appendChild(el("span", "count", "(" + count + ")"));
      box.appendChild(label);
    }
  }

  // The timeline is built in chunks: the first rows at once, the rest between frames, so a
  // session of thousands of events is usable right after load. ensureRow() builds up to a row.
  const CHUNK = 400;
  let built = 0;

  function makeRow(ev) {
    const row = el("tr", "kind-" + ev.type.split(".")[0]);
    row.id = "ev-" + ev.seq;
    row.dataset.type = ev.type;
    if (ev.denied) row.classList.add("denied");
    row.dataset.search = (ev.type + " " + ev.summary + " " + ev.data).toLowerCase();
    row.appendChild(el("td", "seq", String(ev.seq)));
    row.appendChild(el("td", "ts", ev.offset));
    row.appendChild(el("td", "type", ev.type));
    const cell = el("td", "summary");
    const details = el("details");
    details.appendChild(el("summary", "", ev.summary || "(no text)"));
    details.appendChild(el("pre", "", ev.data));
    cell.appendChild(details);
    row.appendChild(cell);
    return row;
  }

  function buildUpTo(end) {
    const body = byId("timeline-body");
    const part = document.createDocumentFragment();
    const filter = currentFilter();
    for (; built < Math.min(end, payload.events.length); built++) {
      const row = makeRow(payload.events[built]);
      row.hidden = !filter(row);
      part.appendChild(row);
    }
    body.appendChild(part);
    updateShown();
  }

  function renderTimeline() {
    buildUpTo(CHUNK);
    const more = () => {
      if (built >= payload.events.length) {
        document.body.dataset.timeline = "complete";
        return;
      }
      buildUpTo(built + CHUNK);
      setTimeout(more, 0);
    };
    setTimeout(more, 0);
  }

  function ensureRow(seq) {
    const index = payload.events.findIndex((ev) => ev.seq === seq);
    if (index >= built) buildUpTo(index + 1);
    return byId("ev-" + seq);
  }

  function currentFilter() {
    const wanted = new Set(
      Array.from(document.querySelectorAll("#type-filters input:checked"), (i) => i.value)
    );
    const needle = byId("text-filter").value.trim().toLowerCase();
    return (row) => wanted.has(row.dataset.type) && (!needle || row.dataset.search.includes(needle));
  }

  function updateShown() {
    let shown = 0;
    for (const row of byId("timeline-body").rows) if (!row.hidden) shown += 1;
    byId("shown").textContent = shown + " of " + payload.events.length + " events shown";
  }

  function applyFilters() {
    const filter = currentFilter();
    for (const row of byId("timeline-body").rows) row.hidden = !filter(row);
    updateShown();
  }

  // ---- replay: timed output, SGR colours as classes, everything else as text
  const SGR = /\x1b\[([0-9;]*)m|\x1b\[[0-9;?]*[A-Za-ln-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b./g;
  const frames = payload.frames || [];
  const screen = { lines: [[]], style: "", cr: false };
  let applied = 0;
  let clock = 0;
  let playing = false;
  let speed = 1;
  let lastTick = 0;
  const MAX_LINES = 5000;

  function styleFrom(codes, style) {
    const set = new Set(style ? style.split(" ") : []);
    const list = codes === "" ? [0] : codes.split(";").map(Number);
    for (let i = 0; i < list.length; i++) {
      const c = list[i];
      if (c === 0) set.clear();
      else if (c === 1) set.add("a-b");
      else if (c === 2) set.add("a-d");
      else if (c === 3) set.add("a-i");
      else if (c === 4) set.add("a-u");
      else if (c === 22) { set.delete("a-b"); set.delete("a-d"); }
      else if ((c >= 30 && c <= 37) || (c >= 90 && c <= 97)) {
        for (const k of Array.from(set)) if (k[0] === "f") set.delete(k);
        set.add("f" + ((c % 10) % 8));
      } else if ((c >= 40 && c <= 47) || (c >= 100 && c <= 107)) {
        for (const k of Array.from(set)) if (k[0] === "g") set.delete(k);
        set.add("g" + ((c % 10) % 8));
      } else if (c === 39) { for (const k of Array.from(set)) if (k[0] === "f") set.delete(k); }
      else if (c === 49) { for (const k of Array.from(set)) if (k[0] === "g") set.delete(k); }
      else if (c === 38 || c === 48) i += list[i + 1] === 5 ? 2 : 4;  // 256/true colour: skipped
    }
    return Array.from(set).join(" ");
  }

  function put(text) {
    const parts = text.replace(/\r\n/g, "\n").split(/(\n|\r)/);
    for (const part of parts) {
      if (part === "\n") { screen.lines.push([]); screen.cr = false; continue; }
      if (part === "\r") { screen.cr = true; continue; }
      if (!part) continue;
      if (screen.cr) { screen.lines[screen.lines.length - 1] = []; screen.cr = false; }
      screen.lines[screen.lines.length - 1].push([screen.style, part]);
    }
    if (screen.lines.length > MAX_LINES) screen.lines.splice(0, screen.lines.length - MAX_LINES);
  }

  function feed(text) {
    let last = 0;
    SGR.lastIndex = 0;
    let m;
    while ((m = SGR.exec(text)) !== null) {
      put(text.slice(last, m.index));
      if (m[1] !== undefined) screen.style = styleFrom(m[1], screen.style);
      last = SGR.lastIndex;
    }
    put(text.slice(last));
  }

  function draw() {
    const out = byId("replay-screen");
    const part = document.createDocumentFragment();
    screen.lines.forEach((line, i) => {
      for (const [cls, text] of line) part.appendChild(cls ? el("span", cls, text) : document.createTextNode(text));
      if (i < screen.lines.length - 1) part.appendChild(document.createTextNode("\n"));
    });
    out.replaceChildren(part);
    out.scrollTop = out.scrollHeight;
    byId("replay-clock").textContent = clock.toFixed(2) + " s";
    byId("replay-seek").value = String(clock);
    out.dataset.frames = String(applied);
  }

  function seek(to) {
    if (to < clock) { screen.lines = [[]]; screen.style = ""; screen.cr = false; applied = 0; }
    clock = to;
    while (applied < frames.length && frames[applied][0] <= clock) feed(frames[applied++][1]);
    draw();
  }

  function tick(now) {
    if (!playing) return;
    const end = frames.length ? frames[frames.length - 1][0] : 0;
    seek(Math.min(end, clock + ((now - lastTick) / 1000) * speed));
    lastTick = now;
    if (clock >= end) { setPlaying(false); return; }
    requestAnimationFrame(tick);
  }

  function setPlaying(on) {
    playing = on;
    byId("replay-play").textContent = on ? "Pause" : "Play";
    if (on) {
      const end = frames.length ? frames[frames.length - 1][0] : 0;
      if (clock >= end) seek(0);
      lastTick = performance.now();
      requestAnimationFrame(tick);
    }
  }

  function setupReplay() {
    const end = frames.length ? frames[frames.length - 1][0] : 0;
    const range = byId("replay-seek");
    range.max = String(end);
    range.addEventListener("input", () => seek(Number(range.value)));
    byId("replay-play").addEventListener("click", () => setPlaying(!playing));
    byId("replay-speed").addEventListener("change", (e) => { speed = Number(e.target.value); });
    draw();
  }

  // ---- conversation: the model transcript, tool calls linked to the events they caused
  function link(seq, label) {
    const a = el("a", "", label);
    a.href = "#ev-" + seq;
    a.addEventListener("click", (e) => {
      e.preventDefault();
      const row = ensureRow(seq);
      if (!row) return;
      row.hidden = false;
      row.querySelector("details").open = true;
      row.classList.add("flash");
      row.scrollIntoView({ block: "center" });
    });
    return a;
  }

  function renderConversation() {
    const box = byId("conversation");
    const items = payload.conversation || [];
    if (!items.length) { box.appendChild(el("p", "count", "No model or MCP traffic in this session.")); return; }
    for (const item of items) {
      const turn = el("div", "turn " + item.kind);
      turn.id = "turn-" + item.seq;
      const head = el("div", "who");
      head.appendChild(link(item.seq, "#" + item.seq));
      if (item.kind === "request") {
        head.appendChild(document.createTextNode("to " + (item.model || "model")));
        turn.appendChild(head);
        for (const m of item.messages) turn.appendChild(el("pre", "", m.role + ": " + m.text));
      } else if (item.kind === "response") {
        head.appendChild(document.createTextNode("model (" + item.outcome + ")"));
        turn.appendChild(head);
        if (item.text) turn.appendChild(el("pre", "", item.text));
        for (const call of item.tool_calls) {
          const line = el("div", "tool");
          line.appendChild(el("code", "", call.name + " " + JSON.stringify(call.arguments)));
          line.appendChild(document.createTextNode(" → "));
          if (!call.caused.length) line.appendChild(el("span", "count", "no recorded effect"));
          for (const c of call.caused) line.appendChild(link(c.seq, c.type + " #" + c.seq));
          turn.appendChild(line);
        }
      } else {
        head.appendChild(document.createTextNode("MCP " + item.tool + " [" + item.action + "]"));
        turn.appendChild(head);
        turn.appendChild(el("pre", "", JSON.stringify(item.arguments)));
      }
      box.appendChild(turn);
    }
  }

  renderIdentity();
  renderTypes();
  renderTimeline();
  byId("terminal").textContent = payload.terminal;
  byId("text-filter").addEventListener("input", applyFilters);
  applyFilters();
  setupReplay();
  renderConversation();
})();
