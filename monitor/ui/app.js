// crossmon's live map: containers grouped by network and compose project,
// the traffic between them as edges, from the agent's /api/v1/graph.
//
// Every name shown comes from whoever runs containers: it is only ever set
// as text (textContent, setAttribute), never parsed as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 2000;
const CELL_W = 360;
const CELL_H = 300;

const LABEL_CHARS = 40;

const state = { graph: null, selected: null, updates: 0, busy: false };

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function html(name, text, attrs = {}) {
  const node = document.createElement(name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function groupOf(node) {
  // A network's gateway is the host as that network's containers see it.
  if (node.kind === "gateway" && node.network) return node.network;
  if (node.kind !== "container") return "outside the networks";
  const project = node.compose_project ? ` / ${node.compose_project}` : "";
  return `${node.network || "no network"}${project}`;
}

function filters() {
  return {
    network: document.getElementById("network").value,
    project: document.getElementById("project").value,
  };
}

function keeps(node, { network, project }) {
  if (node.kind !== "container") return true;
  return (!network || node.network === network) && (!project || node.compose_project === project);
}

/// The nodes and edges the filters keep: containers that match, and the
/// other ends only where a kept container talks to them.
function visible(graph) {
  const f = filters();
  const kept = new Set(graph.nodes.filter((n) => n.kind === "container" && keeps(n, f)).map((n) => n.id));
  const edges = graph.edges.filter((e) => kept.has(e.source) || kept.has(e.target));
  for (const e of edges) { kept.add(e.source); kept.add(e.target); }
  const nodes = graph.nodes.filter((n) => kept.has(n.id) && keeps(n, f));
  const shown = new Set(nodes.map((n) => n.id));
  return { nodes, edges: edges.filter((e) => shown.has(e.source) && shown.has(e.target)) };
}

/// Groups in a grid of cells, each group's nodes on a circle in its cell:
/// the same data always gives the same picture.
function layout(nodes) {
  const groups = new Map();
  for (const node of nodes) {
    const name = groupOf(node);
    if (!groups.has(name)) groups.set(name, []);
    groups.get(name).push(node);
  }
  const names = [...groups.keys()].sort();
  const columns = Math.max(1, Math.ceil(Math.sqrt(names.length)));
  const places = new Map();
  const frames = names.map((name, i) => {
    const x = (i % columns) * CELL_W;
    const y = Math.floor(i / columns) * CELL_H;
    const members = groups.get(name).sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id));
    const radius = members.length === 1 ? 0 : Math.min(CELL_W, CELL_H) / 2 - 60;
    members.forEach((node, k) => {
      const angle = (2 * Math.PI * k) / members.length - Math.PI / 2;
      places.set(node.id, {
        x: x + CELL_W / 2 + radius * Math.cos(angle),
        y: y + CELL_H / 2 + 10 + radius * Math.sin(angle),
      });
    });
    return { name, x, y };
  });
  const rows = Math.max(1, Math.ceil(names.length / columns));
  return { places, frames, width: columns * CELL_W, height: rows * CELL_H };
}

function edgePath(from, to) {
  // Bent to one side, so the two directions of a pair stay apart.
  const mx = (from.x + to.x) / 2, my = (from.y + to.y) / 2;
  const dx = to.x - from.x, dy = to.y - from.y;
  return `M${from.x},${from.y} Q${mx - dy * 0.15},${my + dx * 0.15} ${to.x},${to.y}`;
}

function render() {
  const graph = state.graph;
  if (!graph) return;
  const svg = document.getElementById("graph");
  const { nodes, edges } = visible(graph);
  const { places, frames, width, height } = layout(nodes);
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${Math.max(width, CELL_W)} ${Math.max(height, CELL_H)}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMin meet");
  for (const frame of frames) {
    svg.append(el("rect", { class: "group-frame", x: frame.x + 8, y: frame.y + 8, width: CELL_W - 16, height: CELL_H - 16, rx: 10 }));
    svg.append(el("text", { class: "group-label", x: frame.x + 18, y: frame.y + 26 }, frame.name));
  }
  const edgeLayer = el("g", { class: "edges" });
  svg.append(edgeLayer);
  for (const edge of edges) {
    const from = places.get(edge.source), to = places.get(edge.target);
    const classes = ["edge", edge.outcome || "unknown"];
    if (edge.cleartext) classes.push("cleartext");
    if (edge.alerts > 0) classes.push("alerted");
    const id = `${edge.source}>${edge.target}`;
    if (state.selected === id) classes.push("selected");
    const g = el("g", {
      class: classes.join(" "),
      "data-source": edge.source, "data-target": edge.target,
      "data-bytes": edge.bytes, "data-outcome": edge.outcome || "unknown",
      "data-cleartext": edge.cleartext, "data-alerts": edge.alerts,
    });
    const width = Math.min(12, 1 + 2 * Math.log10(1 + edge.bytes / 1000));
    g.append(el("path", { d: edgePath(from, to), "stroke-width": width.toFixed(1) }));
    g.append(el("title", {}, `${nameOf(edge.source)} → ${nameOf(edge.target)}: ${bytes(edge.bytes)}`));
    g.addEventListener("click", () => select(id));
    edgeLayer.append(g);
  }
  for (const node of nodes) {
    const at = places.get(node.id);
    const classes = ["node", node.kind === "container" ? "container" : "other"];
    if (node.alerts > 0) classes.push("alerted");
    if (state.selected === node.id) classes.push("selected");
    const g = el("g", {
      class: classes.join(" "), transform: `translate(${at.x},${at.y})`,
      "data-id": node.id, "data-kind": node.kind, "data-name": node.name || "",
      "data-network": node.network || "", "data-alerts": node.alerts,
    });
    g.append(el("circle", { r: node.kind === "container" ? 14 : 10 }));
    g.append(el("text", { y: 28, "text-anchor": "middle", class: "label" }, short(label(node))));
    if (node.alerts > 0) g.append(el("text", { x: 12, y: -12, class: "badge" }, String(node.alerts)));
    const about = [label(node), node.image, node.compose_project && `compose ${node.compose_project} / ${node.compose_service || ""}`];
    g.append(el("title", {}, about.filter(Boolean).join("\n")));
    g.addEventListener("click", () => select(node.id));
    svg.append(g);
  }
  const alerted = graph.nodes.filter((n) => n.alerts > 0).length;
  const cut = graph.truncated || {};
  const left = cut.edges ? ` (${cut.edges} quieter connections left out)` : "";
  document.getElementById("summary").textContent =
    `${nodes.length} ends, ${edges.length} connections${left}, ${graph.alerts.length} recent alerts naming ${alerted} ends, last ${graph.window_seconds} s`;
  document.body.dataset.state = "ready";
  document.body.dataset.updates = String(state.updates);
  showDetails();
}

function short(text) {
  return text.length > LABEL_CHARS ? `${text.slice(0, LABEL_CHARS - 1)}…` : text;
}

function label(node) {
  if (node.kind === "container") return node.name || node.id;
  return `${node.kind}${node.ip ? ` ${node.ip}` : ""}${node.network ? ` (${node.network})` : ""}`;
}

function nameOf(id) {
  const node = state.graph.nodes.find((n) => n.id === id);
  return node ? label(node) : id;
}

function select(id) {
  state.selected = state.selected === id ? null : id;
  render();
}

function table(headers, rows, kind = "facts") {
  const t = html("table", undefined, { class: kind });
  const head = html("tr");
  for (const h of headers) head.append(html("th", h));
  t.append(head);
  for (const row of rows) {
    const tr = html("tr");
    for (const cell of row) tr.append(html("td", String(cell)));
    t.append(tr);
  }
  return t;
}

function alertsOf(match) {
  const rows = state.graph.alerts.filter(match)
    .map((a) => [a.time.slice(11, 19), a.kind, a.severity, a.summary]);
  return rows.length ? table(["time (UTC)", "kind", "severity", "summary"], rows, "alerts") : html("p", "no recent alert", { class: "hint" });
}

/// The connections of `edges`, busiest first; the payload column is the
/// verdict on it (encrypted or not, the protocol), never its bytes.
function flowsTable(edges) {
  const rows = edges.flatMap((e) => e.flows.map((f) => [
    `${nameOf(e.source)} → ${nameOf(e.target)}`, f.protocol,
    f.src_port ? `${f.src_port}→${f.dst_port}` : "", bytes(f.bytes), f.packets, f.outcome || "",
    [f.encryption, f.app_protocol].filter((v) => v && v !== "unknown").join(" ") || "?",
  ]));
  return rows.length ? table(["ends", "proto", "ports", "bytes", "pkts", "outcome", "payload"], rows, "flows") : html("p", "no flow", { class: "hint" });
}

function showDetails() {
  const panel = document.getElementById("details");
  const graph = state.graph;
  const id = state.selected;
  const node = id && graph.nodes.find((n) => n.id === id);
  const edge = id && graph.edges.find((e) => `${e.source}>${e.target}` === id);
  if (node) {
    const touching = graph.edges.filter((e) => e.source === id || e.target === id);
    const facts = [["kind", node.kind], ["network", node.network || ""], ["ip", node.ip || ""]];
    if (node.image) facts.push(["image", node.image]);
    if (node.compose_project) facts.push(["compose", `${node.compose_project} / ${node.compose_service || ""}`]);
    const risky = Object.entries(node.posture || {}).filter(([, on]) => on).map(([name]) => name);
    if (node.posture) facts.push(["posture", risky.length ? risky.join(", ") : "nothing risky"]);
    panel.replaceChildren(html("h2", label(node)), table(["", ""], facts),
      html("h3", "alerts"), alertsOf((a) => a.source === id || a.destination === id),
      html("h3", "flows"), flowsTable(touching));
  } else if (edge) {
    const ports = edge.ports.length ? edge.ports.join(", ") : "none";
    panel.replaceChildren(html("h2", `${nameOf(edge.source)} → ${nameOf(edge.target)}`),
      table(["", ""], [["bytes", bytes(edge.bytes)], ["packets", edge.packets], ["protocols", edge.protocols.join(", ")],
        ["payload", (edge.app_protocols || []).join(", ") || "not judged"],
        ["ports", ports], ["outcome", edge.outcome || "unknown"],
        ["openings", Object.entries(edge.outcomes || {}).map(([k, n]) => `${k} ${n}`).join(", ") || "none seen"],
        ["cleartext seen", edge.cleartext ? "yes" : "no"]]),
      html("h3", "alerts"), alertsOf((a) => (a.source === edge.source && a.destination === edge.target)
        || (a.source === edge.target && a.destination === edge.source)),
      html("h3", "flows"), flowsTable([edge]));
  } else {
    if (id) state.selected = null;
    panel.replaceChildren(html("p", "Click a container or a connection for its flows and alerts.", { class: "hint" }));
  }
}

function fillSelect(selectId, values) {
  const select = document.getElementById(selectId);
  const current = select.value;
  const options = [html("option", "all", { value: "" })];
  for (const value of [...new Set(values)].filter(Boolean).sort()) options.push(html("option", value, { value }));
  select.replaceChildren(...options);
  select.value = [...select.options].some((o) => o.value === current) ? current : "";
}

/// Shows what went wrong over the last graph, which stays drawn; cleared
/// by the next update that works.
function showError(message) {
  const banner = document.getElementById("error");
  if (message) {
    banner.textContent = `Update failed, showing the last graph: ${message}`;
    banner.hidden = false;
    document.body.dataset.error = message;
  } else {
    banner.hidden = true;
    banner.textContent = "";
    delete document.body.dataset.error;
  }
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  const window = document.getElementById("window").value;
  try {
    const response = await fetch(`/api/v1/graph?window=${encodeURIComponent(window)}`, { credentials: "same-origin" });
    if (!response.ok) {
      const text = (await response.text()).slice(0, 300);
      throw new Error(`HTTP ${response.status}${text ? `: ${text}` : ""}`);
    }
    const graph = await response.json();
    if (!graph || !Array.isArray(graph.nodes) || !Array.isArray(graph.edges) || !Array.isArray(graph.alerts)) {
      throw new Error("the agent answered with something other than a graph");
    }
    state.graph = graph;
    state.updates += 1;
    const containers = state.graph.nodes.filter((n) => n.kind === "container");
    fillSelect("network", containers.map((n) => n.network));
    fillSelect("project", containers.map((n) => n.compose_project));
    render();
    showError(null);
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    showError(err.message);
  } finally {
    state.busy = false;
  }
}

// `#select=ID` opens with that node or edge (`SOURCE>TARGET`) selected:
// a link to one end of the map.
const wanted = new URLSearchParams(location.hash.slice(1)).get("select");
if (wanted) state.selected = wanted;

for (const id of ["network", "project"]) document.getElementById(id).addEventListener("change", render);
document.getElementById("window").addEventListener("change", refresh);
refresh();
setInterval(refresh, REFRESH_MS);
