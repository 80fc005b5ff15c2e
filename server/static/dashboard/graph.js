// A flow drawn as SVG, left to right: each node's column is its depth (the longest path
// from an entry node), so every edge points rightwards. Within a column nodes are ordered
// by the mean row of their predecessors, which keeps most edges short and uncrossed.

const SVG = "http://www.w3.org/2000/svg";
const W = 140;
const H = 56;
const COL = W + 50;
const ROW = H + 44; // room under each node for its token preview
const PAD = 16;
const PREVIEW = 20; // the token preview line under a node

// Each kind has its own outline (and colour, in CSS), so kinds differ without colour too.
const SHAPES = {
  INPUT: "pill",
  OUTPUT: "pill",
  AGENT: "rounded",
  CREW: "double",
  TOOL: "square",
  LLM: "rounded",
  CONDITION: "hexagon",
  APPROVAL: "octagon",
};

export function layout(nodes, edges) {
  const ids = nodes.map((n) => n.id);
  const preds = new Map(ids.map((id) => [id, []]));
  const succs = new Map(ids.map((id) => [id, []]));
  for (const e of edges) {
    if (!preds.has(e.target) || !succs.has(e.source)) continue;
    preds.get(e.target).push(e.source);
    succs.get(e.source).push(e.target);
  }
  // Kahn's order; a node left over (a cycle, which the API refuses anyway) goes last.
  const indegree = new Map(ids.map((id) => [id, preds.get(id).length]));
  const order = ids.filter((id) => indegree.get(id) === 0);
  for (let i = 0; i < order.length; i++) {
    for (const next of succs.get(order[i])) {
      indegree.set(next, indegree.get(next) - 1);
      if (indegree.get(next) === 0) order.push(next);
    }
  }
  for (const id of ids) if (!order.includes(id)) order.push(id);

  const depth = new Map();
  for (const id of order) {
    const ds = preds.get(id).map((p) => (depth.has(p) ? depth.get(p) + 1 : 0));
    depth.set(id, ds.length ? Math.max(...ds) : 0);
  }
  const columns = [];
  for (const id of order) (columns[depth.get(id)] ||= []).push(id);
  const row = new Map();
  columns.forEach((col, c) => {
    if (c > 0) {
      const mean = (id) => {
        const ps = preds.get(id).filter((p) => row.has(p));
        return ps.length ? ps.reduce((s, p) => s + row.get(p), 0) / ps.length : 0;
      };
      col.sort((a, b) => mean(a) - mean(b));
    }
    col.forEach((id, r) => row.set(id, r));
  });
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const pos = new Map();
  columns.forEach((col, c) => {
    const offset = ((tallest - col.length) * ROW) / 2; // centre short columns
    col.forEach((id, r) => pos.set(id, { x: PAD + c * COL, y: PAD + offset + r * ROW }));
  });
  return {
    pos,
    width: PAD * 2 + Math.max(1, columns.length) * COL - (COL - W),
    height: PAD * 2 + tallest * ROW - (ROW - H) + PREVIEW, // the last row's preview too
  };
}

function el(name, attrs = {}, parent = null) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function outline(kind, g) {
  const shape = SHAPES[kind] || "rounded";
  const cls = "outline";
  if (shape === "hexagon") {
    const points = [
      [12, 0], [W - 12, 0], [W, H / 2], [W - 12, H], [12, H], [0, H / 2],
    ];
    return el("polygon", { class: cls, points: points.map((p) => p.join(",")).join(" ") }, g);
  }
  if (shape === "octagon") {
    const k = 10;
    const points = [
      [k, 0], [W - k, 0], [W, k], [W, H - k], [W - k, H], [k, H], [0, H - k], [0, k],
    ];
    return el("polygon", { class: cls, points: points.map((p) => p.join(",")).join(" ") }, g);
  }
  const rx = { pill: H / 2, rounded: 10, square: 2, double: 4 }[shape];
  const rect = el("rect", { class: cls, width: W, height: H, rx }, g);
  if (shape === "double") {
    el("rect", { class: "inner", x: 4, y: 4, width: W - 8, height: H - 8, rx: 2 }, g);
  }
  return rect;
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

// Draws the flow into `svg`; returns {setState(nodeId, state), setPreview(nodeId, text)}.
export function drawFlow(svg, flow, { onSelect } = {}) {
  svg.replaceChildren();
  const { pos, width, height } = layout(flow.nodes, flow.edges);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  // Fit the frame, shrinking to at most 65 % (text stays legible); wider graphs scroll.
  svg.style.width = "100%";
  svg.style.maxWidth = `${width}px`;
  svg.style.minWidth = `${Math.round(width * 0.65)}px`;
  const defs = el("defs", {}, svg);
  const marker = el(
    "marker",
    { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
    defs,
  );
  el("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }, marker);

  const edgeLayer = el("g", { class: "edges" }, svg);
  for (const e of flow.edges) {
    const a = pos.get(e.source);
    const b = pos.get(e.target);
    if (!a || !b) continue;
    const x1 = a.x + W;
    const y1 = a.y + H / 2;
    const x2 = b.x;
    const y2 = b.y + H / 2;
    const mid = (x1 + x2) / 2;
    el(
      "path",
      {
        class: "edge",
        d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
        "marker-end": "url(#arrow)",
        "data-source": e.source,
        "data-target": e.target,
      },
      edgeLayer,
    );
    if (e.branch) {
      const label = el("text", { class: "branch", x: mid, y: (y1 + y2) / 2 - 4 }, edgeLayer);
      label.textContent = e.branch;
    }
  }

  const nodes = new Map();
  const nodeLayer = el("g", { class: "nodes" }, svg);
  for (const n of flow.nodes) {
    const p = pos.get(n.id);
    const g = el(
      "g",
      {
        class: `node kind-${n.kind} state-PENDING`,
        transform: `translate(${p.x},${p.y})`,
        tabindex: 0,
        role: "button",
        "data-node-id": n.id,
        "data-kind": n.kind,
        "data-state": "PENDING",
      },
      nodeLayer,
    );
    const title = el("title", {}, g);
    outline(n.kind, g);
    const kind = el("text", { class: "kind", x: 12, y: 16 }, g);
    kind.textContent = n.kind;
    const name = el("text", { class: "name", x: 12, y: 34 }, g);
    name.textContent = clip(n.name || n.id, 17);
    const state = el("text", { class: "state", x: 12, y: 49 }, g);
    const preview = el("text", { class: "preview", x: 0, y: H + 16 }, g);
    const entry = { g, title, state, preview, node: n };
    nodes.set(n.id, entry);
    const select = () => onSelect?.(n.id);
    g.addEventListener("click", select);
    g.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        select();
      }
    });
    setState(n.id, "PENDING");
  }

  function setState(id, value) {
    const entry = nodes.get(id);
    if (!entry) return;
    entry.g.classList.remove(`state-${entry.g.dataset.state}`);
    entry.g.classList.add(`state-${value}`);
    entry.g.dataset.state = value;
    entry.state.textContent = value;
    const label = `${entry.node.name || entry.node.id} (${entry.node.kind}): ${value}`;
    entry.title.textContent = label;
    entry.g.setAttribute("aria-label", label);
  }

  function setPreview(id, text) {
    const entry = nodes.get(id);
    if (!entry) return;
    const flat = text.replace(/\s+/g, " ").trim();
    entry.preview.textContent = flat.length > 22 ? `…${flat.slice(-21)}` : flat;
  }

  function setSelected(id) {
    for (const [nid, entry] of nodes) entry.g.classList.toggle("selected", nid === id);
  }

  return { setState, setPreview, setSelected, ids: [...nodes.keys()] };
}
