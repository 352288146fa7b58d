// meshserve's built-in dashboard: renders the router's JSON document (GET /dashboard/api/snapshot),
// kept live by server-sent events (/dashboard/api/events). No libraries, nothing fetched from
// elsewhere. Model names and failure messages are user input: every piece of data reaches the
// page through textContent, attribute setters or SVG coordinates, never as markup.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const EVENTS = "/dashboard/api/events";

  // -- formatting (the same units as `meshserve top`) --------------------------------------
  function size(n) {
    let value = Number(n) || 0;
    for (const unit of ["B", "KiB", "MiB", "GiB", "TiB"]) {
      if (Math.abs(value) < 1024 || unit === "TiB") {
        return unit === "B" ? `${Math.trunc(value)} B` : `${value.toFixed(1)} ${unit}`;
      }
      value /= 1024;
    }
    return "";
  }

  function age(seconds) {
    if (!(seconds > 0)) return "-";
    const s = Math.floor(seconds);
    const pad = (x) => String(x).padStart(2, "0");
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
    return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
  }

  function rate(x) { return (Number(x) || 0).toFixed(1); }

  function when(ms, nowMs) {
    if (!(ms > 0)) return "-";
    return age((nowMs - ms) / 1000) + " ago";
  }

  // -- DOM helpers: text only --------------------------------------------------------------
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    return node;
  }

  function replaceChildren(parent, children) {
    parent.replaceChildren(...children);
  }

  // -- fleet totals --------------------------------------------------------------------------
  function card(label, value, extra) {
    const node = el("div", "card");
    node.append(el("div", "card-label", label));
    const v = el("div", "card-value", value);
    node.append(v);
    if (extra) node.append(extra);
    return node;
  }

  function memoryBar(used, loading, capacity) {
    const outer = el("div", "bar");
    const usedPart = el("div", "bar-used");
    const loadingPart = el("div", "bar-loading");
    const share = (x) => (capacity > 0 ? Math.min(100, (100 * x) / capacity) : 0);
    usedPart.style.width = share(used) + "%";
    loadingPart.style.width = Math.min(100 - share(used), share(loading)) + "%";
    outer.append(usedPart, loadingPart);
    if (used + loading > capacity && capacity > 0) outer.classList.add("over");
    return outer;
  }

  function renderFleet(doc) {
    const f = doc.fleet;
    const fleet = document.getElementById("fleet");
    const memory = card("memory", `${size(f.used_bytes)} / ${size(f.capacity_bytes)}`,
      memoryBar(f.used_bytes, f.loading_bytes, f.capacity_bytes));
    memory.dataset.field = "memory";
    const models = card("models", `${f.models_registered} registered`);
    models.dataset.field = "models";
    const counts = el("div", "card-detail");
    for (const [name, value] of [["loaded", f.models_loaded], ["loading", f.models_loading], ["failed", f.models_failed]]) {
      const part = el("span", "count " + name, `${value} ${name}`);
      part.dataset.count = name;
      counts.append(part);
    }
    models.append(counts);
    const cards = [
      card("instances", f.instances), memory, models,
      card("loaded copies", f.copies), card("req/min", rate(f.request_rate_per_min)),
      card("global LRU age", age(f.global_lru_age_seconds)), card("vmodels", f.vmodels),
    ];
    cards[0].dataset.field = "instances";
    replaceChildren(fleet, cards);
  }

  // -- instances ---------------------------------------------------------------------------
  function renderInstances(doc) {
    const rows = doc.instances.map((i) => {
      const row = el("div", "instance" + (i.shutting_down ? " draining" : ""));
      row.dataset.instanceId = i.id;
      const head = el("div", "instance-head");
      head.append(el("span", "instance-id", i.id));
      if (i.zone) head.append(el("span", "muted", i.zone));
      if (i.shutting_down) head.append(el("span", "tag", "draining"));
      const figures = el("span", "instance-figures");
      const usedText = el("span", "used", `${size(i.used_bytes)} / ${size(i.capacity_bytes)}`);
      usedText.dataset.field = "used";
      figures.append(usedText);
      if (i.loading_bytes > 0) figures.append(el("span", "loading-text", `+${size(i.loading_bytes)} loading`));
      const models = el("span", "", `${i.models_total} models`);
      models.dataset.field = "models";
      figures.append(models, el("span", "", `${rate(i.request_rate_per_min)} req/min`),
        el("span", "", `LRU age ${age(i.lru_age_seconds)}`));
      head.append(figures);
      row.append(head, memoryBar(i.used_bytes, i.loading_bytes, i.capacity_bytes));
      const chips = el("div", "chips");
      for (const m of i.models) {
        const chip = el("span", "chip" + (m.state === "LOADING" ? " chip-loading" : ""), m.id);
        chip.title = `${m.state} ${size(m.size_bytes)}`;
        chips.append(chip);
      }
      if (!i.models.length) chips.append(el("span", "muted", "no models"));
      row.append(chips);
      return row;
    });
    if (!rows.length) rows.push(el("p", "muted", "No instances in the fabric."));
    replaceChildren(document.getElementById("instances"), rows);
  }

  // -- charts (hand-drawn SVG) ---------------------------------------------------------------
  const CHARTS = [
    { title: "Request rate (req/min)", series: [["router", (s) => s.requests_per_min], ["instances", (s) => s.fabric_rate_per_min]] },
    { title: "Cache misses (per sample)", series: [["misses", (s) => s.cache_misses]] },
    { title: "Miss delay (mean ms)", series: [["delay", (s) => s.miss_delay_ms]] },
    { title: "Loads and evictions (per sample)", series: [["loads", (s) => s.loads], ["evictions", (s) => s.evictions]] },
    { title: "Capacity used (%)", series: [["used", (s) => (s.capacity_bytes ? (100 * s.used_bytes) / s.capacity_bytes : 0)],
      ["used + loading", (s) => (s.capacity_bytes ? (100 * (s.used_bytes + s.loading_bytes)) / s.capacity_bytes : 0)]], max: 100 },
  ];
  const W = 320, H = 110, PAD = 4;

  // The x axis spans the samples there are (at least a minute), up to the hour the router keeps.
  function span(samples, nowMs, windowMs) {
    if (!samples.length) return windowMs;
    return Math.min(windowMs, Math.max(60 * 1000, nowMs - samples[0].time_ms));
  }

  function minutes(ms) {
    const m = ms / 60000;
    return m >= 1 ? `-${Math.round(m)} min` : `-${Math.round(ms / 1000)} s`;
  }

  function chart(spec, samples, nowMs, windowMs) {
    const box = el("figure", "chart");
    box.append(el("figcaption", "", spec.title));
    const values = spec.series.map(([, pick]) => samples.map((s) => Number(pick(s)) || 0));
    const top = spec.max || Math.max(1, ...values.flat()) * 1.1;
    const area = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
    area.append(svg("rect", { x: 0, y: 0, width: W, height: H, class: "chart-bg" }));
    for (const share of [0.25, 0.5, 0.75]) {
      area.append(svg("line", { x1: 0, x2: W, y1: H * share, y2: H * share, class: "grid" }));
    }
    const shown = span(samples, nowMs, windowMs);
    const start = nowMs - shown;
    const x = (t) => PAD + ((W - 2 * PAD) * Math.max(0, t - start)) / shown;
    const y = (v) => H - PAD - ((H - 2 * PAD) * Math.min(v, top)) / top;
    values.forEach((series, index) => {
      if (!series.length) return;
      const points = series.map((v, k) => `${x(samples[k].time_ms).toFixed(1)},${y(v).toFixed(1)}`);
      if (index === 0) {
        const first = x(samples[0].time_ms).toFixed(1), last = x(samples[samples.length - 1].time_ms).toFixed(1);
        area.append(svg("polygon", { points: `${first},${H - PAD} ${points.join(" ")} ${last},${H - PAD}`, class: "fill" }));
      }
      area.append(svg("polyline", { points: points.join(" "), class: `line line-${index}` }));
    });
    box.append(area);
    const axis = el("div", "axis");
    axis.append(el("span", "", minutes(shown)), el("span", "", "now"));
    box.append(axis);
    const legend = el("div", "legend");
    spec.series.forEach(([name], index) => {
      const last = values[index].length ? values[index][values[index].length - 1] : 0;
      legend.append(el("span", `key key-${index}`, `${name} ${rate(last)}`));
    });
    legend.append(el("span", "muted", `max ${rate(Math.max(0, ...values.flat()))}`));
    box.append(legend);
    return box;
  }

  function renderCharts(doc) {
    const samples = doc.history.samples;
    document.getElementById("sample-note").textContent =
      `(${samples.length} of ${doc.history.length} samples, one every ${doc.history.sample_s}s)`;
    const windowMs = doc.history.length * doc.history.sample_s * 1000;
    replaceChildren(document.getElementById("charts"), CHARTS.map((spec) => chart(spec, samples, doc.time_ms, windowMs)));
  }

  // -- model table -----------------------------------------------------------------------------
  const COLUMNS = [
    ["model", (m) => m.id],
    ["type", (m) => m.type],
    ["state", (m) => m.state],
    ["copies", (m) => m.copies.length],
    ["size", (m) => m.size_bytes],
    ["req/min", (m) => m.request_rate_per_min],
    ["last used", (m) => m.last_used_ms],
    ["last failure", (m) => m.last_failure],
    ["vmodels", (m) => m.vmodels.join(",")],
  ];
  const sort = { column: 0, descending: false };
  let latest = null;

  function renderHeaders() {
    const cells = COLUMNS.map(([name], index) => {
      const th = el("th", "", name);
      const button = th;
      button.tabIndex = 0;
      button.dataset.column = String(index);
      if (sort.column === index) th.classList.add(sort.descending ? "sorted-desc" : "sorted-asc");
      const choose = () => {
        sort.descending = sort.column === index ? !sort.descending : false;
        sort.column = index;
        renderHeaders();
        if (latest) renderModels(latest);
      };
      th.addEventListener("click", choose);
      th.addEventListener("keydown", (event) => { if (event.key === "Enter") choose(); });
      return th;
    });
    replaceChildren(document.getElementById("model-headers"), cells);
  }

  function matches(m, needle) {
    if (!needle) return true;
    const text = [m.id, m.type, m.state, m.last_failure, ...m.vmodels, ...m.copies.map((c) => c.instance_id)]
      .join("\n").toLowerCase();
    return text.includes(needle);
  }

  function compare(a, b) {
    const pick = COLUMNS[sort.column][1];
    const x = pick(a), y = pick(b);
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return (sort.descending ? -order : order) || a.id.localeCompare(b.id);
  }

  function renderModels(doc) {
    const needle = document.getElementById("search").value.trim().toLowerCase();
    const shown = doc.models.filter((m) => matches(m, needle)).sort(compare);
    const rows = shown.map((m) => {
      const row = el("tr", "state-" + m.state.toLowerCase());
      row.dataset.modelId = m.id;
      const where = m.copies.map((c) => c.instance_id + (c.state === "LOADING" ? " (loading)" : "")).join(", ");
      const cells = [
        el("td", "model-id", m.id), el("td", "", m.type), el("td", "state", m.state),
        el("td", "", m.copies.length ? `${m.copies.length}: ${where}` : "-"),
        el("td", "num", m.size_bytes ? size(m.size_bytes) : "-"), el("td", "num", rate(m.request_rate_per_min)),
        el("td", "", when(m.last_used_ms, doc.time_ms)), el("td", "failure", m.last_failure || "-"),
        el("td", "", m.vmodels.join(", ") || "-"),
      ];
      row.append(...cells);
      return row;
    });
    if (!rows.length) {
      const row = el("tr");
      const cell = el("td", "muted", doc.models.length ? "No model matches the filter." : "No models registered.");
      cell.colSpan = COLUMNS.length;
      row.append(cell);
      rows.push(row);
    }
    replaceChildren(document.querySelector("#models tbody"), rows);
    document.getElementById("model-count").textContent =
      shown.length === doc.models.length ? `(${doc.models.length})` : `(${shown.length} of ${doc.models.length})`;
  }

  // -- the live document -------------------------------------------------------------------------
  function render(doc) {
    latest = doc;
    document.getElementById("stale").hidden = doc.in_sync;
    document.getElementById("updated").textContent = "updated " + new Date(doc.time_ms).toLocaleTimeString();
    document.body.dataset.version = String(doc.version);
    renderFleet(doc);
    renderInstances(doc);
    renderCharts(doc);
    renderModels(doc);
  }

  function setConnection(state, text) {
    const node = document.getElementById("connection");
    node.className = "connection " + state;
    node.textContent = text;
  }

  function connect() {
    const source = new EventSource(EVENTS);
    source.addEventListener("open", () => setConnection("live", "live"));
    source.addEventListener("snapshot", (event) => {
      setConnection("live", "live");
      render(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {  // refused (e.g. 503 before the first sync): retry ourselves
        setConnection("lost", "reconnecting");
        setTimeout(connect, 2000);
      } else {
        setConnection("connecting", "reconnecting");
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    renderHeaders();
    document.getElementById("search").addEventListener("input", () => { if (latest) renderModels(latest); });
    connect();
  });
})();
