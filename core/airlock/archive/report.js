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

  function renderTimeline() {
    const body = byId("timeline-body");
    for (const ev of payload.events) {
      const row = el("tr", "kind-" + ev.type.split(".")[0]);
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
      body.appendChild(row);
    }
  }

  function applyFilters() {
    const wanted = new Set(
      Array.from(document.querySelectorAll("#type-filters input:checked"), (i) => i.value)
    );
    const needle = byId("text-filter").value.trim().toLowerCase();
    let shown = 0;
    for (const row of byId("timeline-body").rows) {
      const visible = wanted.has(row.dataset.type) && (!needle || row.dataset.search.includes(needle));
      row.hidden = !visible;
      if (visible) shown += 1;
    }
    byId("shown").textContent = shown + " of " + payload.events.length + " events shown";
  }

  renderIdentity();
  renderTypes();
  renderTimeline();
  byId("terminal").textContent = payload.terminal;
  byId("text-filter").addEventListener("input", applyFilters);
  applyFilters();
})();
