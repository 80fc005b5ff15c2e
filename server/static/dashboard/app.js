// The dashboard: flows, their graphs, live runs, approvals, usage, executions and chat, all
// through the public GraphQL API (api.js). Plain DOM, no framework, no build step.

import { Api, ApiError } from "./api.js";
import { drawFlow, layout } from "./graph.js";

const $ = (id) => document.getElementById(id);

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

const Q = {
  me: "query DashboardMe { me { email role tenant { name slug } } }",
  flows: "query DashboardFlows { flows(first: 100) { edges { node { id name version } } } }",
  flow: `query DashboardFlow($id: ID!) { flow(id: $id) {
    id name description version nodes { id kind name config } edges { source target branch } } }`,
  execute: `mutation DashboardRun($id: ID!, $inputs: JSON!) {
    executeFlow(id: $id, inputs: $inputs) { id status createdAt flow { id name } } }`,
  execution: `query DashboardExecution($id: ID!) { execution(id: $id) {
    id status error flowVersion createdAt
    flow { id name description version nodes { id kind name config } edges { source target branch } }
    crew { id name }
    nodeRuns { nodeId status error usage { totalTokens costUsd } }
    pendingApprovals { nodeId prompt inputSchema expiresAt }
    usage { llmCalls promptTokens completionTokens totalTokens costUsd } } }`,
  details: `query DashboardRunDetails($id: ID!) { execution(id: $id) {
    id status error
    nodeRuns { nodeId status error usage { totalTokens costUsd } }
    pendingApprovals { nodeId prompt inputSchema expiresAt }
    usage { llmCalls promptTokens completionTokens totalTokens costUsd } } }`,
  events: `subscription DashboardEvents($id: ID!, $after: Int) {
    executionEvents(executionId: $id, afterSequence: $after) { sequence type nodeId data } }`,
  cancel: "mutation DashboardCancel($id: ID!) { cancelExecution(id: $id) { id status } }",
  resolve: `mutation DashboardResolve($e: ID!, $n: String!, $ok: Boolean!, $input: JSON, $comment: String) {
    resolveApproval(executionId: $e, nodeId: $n, approved: $ok, input: $input, comment: $comment) { id status } }`,
  executions: `query DashboardExecutions { executions(first: 25) {
    edges { node { id status createdAt flow { id name } crew { id name } } } } }`,
  updates: "subscription DashboardUpdates { executionUpdates { id status createdAt flow { id name } crew { id name } } }",
  chatTargets: `query DashboardChatTargets {
    llmProviders(first: 100) { edges { node { id name model } } }
    agents(first: 100) { edges { node { id name } } }
    chatSessions(first: 100) { edges { node { id title createdAt } } } }`,
  createChat: `mutation DashboardNewChat($input: ChatSessionInput!) {
    createChatSession(input: $input) { id title createdAt } }`,
  chatMessages: `query DashboardChat($id: ID!) { chatSession(id: $id) {
    id messages(last: 50) { edges { node { id role content status error } } } } }`,
  send: `mutation DashboardSend($id: ID!, $content: String!) {
    sendChatMessage(sessionId: $id, content: $content) { id role content status } }`,
  stop: "mutation DashboardStop($id: ID!) { cancelChatReply(sessionId: $id) { id status } }",
  chatTokens: `subscription DashboardChatTokens($id: ID!) {
    chatTokens(sessionId: $id) { messageId index delta done error } }`,
};

const ACTIVE = new Set(["PENDING", "RUNNING", "WAITING"]);
const TERMINAL_EVENTS = new Set(["EXECUTION_COMPLETED", "EXECUTION_FAILED", "EXECUTION_CANCELLED"]);

const api = new Api({ onSignedOut: (why) => showSignIn(why) });
const state = {
  flows: [],
  flowId: null,
  run: null, // {id, status, lastSeq, graph, tokens: Map, stop}
  executions: new Map(),
  stopUpdates: null,
  chat: null, // {id, stop, replies: Map}
};

// ---------------------------------------------------------------- notices

let noticeTimer = null;
function notify(message, kind = "error") {
  const n = $("notice");
  n.textContent = message;
  n.className = `notice ${kind}`;
  n.hidden = false;
  clearTimeout(noticeTimer);
  if (kind !== "error") noticeTimer = setTimeout(() => (n.hidden = true), 4000);
}
function clearNotice() {
  $("notice").hidden = true;
}
function describe(err) {
  if (err instanceof ApiError) return `${err.message} (${err.code})`;
  return String(err && err.message ? err.message : err);
}

// Runs an action from a button: errors become a notice; the button is busy meanwhile.
async function act(button, fn) {
  if (button) button.disabled = true;
  try {
    await fn();
  } catch (err) {
    notify(describe(err));
  } finally {
    if (button) button.disabled = false;
  }
}

// ---------------------------------------------------------------- sign-in

function showSignIn(why) {
  delete document.body.dataset.ready;
  stopEverything();
  resetViews();
  $("app-view").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in-view").hidden = false;
  if (why) notify(why);
  $("email").focus();
}

async function showApp() {
  $("sign-in-view").hidden = true;
  $("app-view").hidden = false;
  $("sign-out").hidden = false;
  const { me } = await api.request(Q.me);
  const who = $("who");
  who.textContent = `${me.email} · ${me.tenant.name} (${me.role.toLowerCase()})`;
  who.hidden = false;
  await Promise.all([loadFlows(), loadExecutions(), loadChatTargets()]);
  watchExecutions();
  document.body.dataset.ready = "true"; // everything loaded (tests wait for it)
}

$("sign-in-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act($("sign-in-button"), async () => {
    clearNotice();
    await api.login($("email").value.trim(), $("password").value, $("tenant").value.trim());
    $("password").value = "";
    await showApp();
  });
});

$("sign-out").addEventListener("click", () =>
  act($("sign-out"), async () => {
    stopEverything();
    await api.logout();
    showSignIn();
  }),
);

// Nothing of the previous user stays on screen for the next one.
function resetViews() {
  state.flowId = null;
  state.executions.clear();
  for (const id of ["flow-list", "execution-list", "graph", "node-activity", "run-usage", "approvals", "chat-log", "chat-target", "chat-session"]) {
    $(id).replaceChildren();
  }
  $("flow-title").textContent = "Choose a flow";
  $("flow-description").textContent = "";
  $("run-form").hidden = true;
  $("run-view").hidden = true;
  $("who").textContent = "";
  setChatEnabled(false);
}

function stopEverything() {
  state.run?.stop?.();
  state.run = null;
  state.stopUpdates?.();
  state.stopUpdates = null;
  state.chat?.stop?.();
  state.chat = null;
}

// ---------------------------------------------------------------- flows

async function loadFlows() {
  const data = await api.request(Q.flows);
  state.flows = data.flows.edges.map((e) => e.node);
  const list = $("flow-list");
  list.replaceChildren(
    ...state.flows.map((f) =>
      h(
        "li",
        {},
        h("button", {
          type: "button",
          class: "item",
          "aria-pressed": String(f.id === state.flowId),
          dataset: { flowId: f.id },
          text: `${f.name} (v${f.version})`,
          onclick: (ev) => act(ev.currentTarget, () => selectFlow(f.id)),
        }),
      ),
    ),
  );
  if (!state.flows.length) list.append(h("li", { class: "hint", text: "No flows yet." }));
}
$("reload-flows").addEventListener("click", (ev) => act(ev.currentTarget, loadFlows));

function markFlow(id) {
  state.flowId = id;
  for (const b of $("flow-list").querySelectorAll("button[data-flow-id]")) {
    b.setAttribute("aria-pressed", String(b.dataset.flowId === id));
  }
}

function exampleInputs(flow) {
  const out = {};
  for (const n of flow.nodes) {
    if (n.kind !== "INPUT") continue;
    const props = n.config?.schema?.properties || {};
    for (const [k, s] of Object.entries(props)) {
      const t = Array.isArray(s.type) ? s.type[0] : s.type;
      out[k] = s.default ?? { number: 0, integer: 0, boolean: false, array: [], object: {} }[t] ?? "";
    }
  }
  return JSON.stringify(out, null, 2);
}

async function selectFlow(id) {
  $("run-form").hidden = true; // not the previous flow's form while this one loads
  const { flow } = await api.request(Q.flow, { id });
  if (!flow) throw new ApiError("That flow no longer exists.", "NOT_FOUND");
  state.run?.stop?.();
  state.run = null;
  markFlow(id);
  showFlow(flow);
  $("run-view").hidden = true;
  $("run-form").hidden = false;
  $("run-inputs").value = exampleInputs(flow);
  $("cancel-button").disabled = true;
}

function showFlow(flow) {
  $("flow-title").textContent = flow.name;
  $("flow-description").textContent = flow.description || "";
  const graph = drawFlow($("graph"), flow, { onSelect: focusNode });
  buildActivity(flow);
  return graph;
}

// Nodes in the graph's reading order: column by column, top to bottom.
function readingOrder(flow) {
  const { pos } = layout(flow.nodes, flow.edges);
  return [...flow.nodes].sort((a, b) => pos.get(a.id).x - pos.get(b.id).x || pos.get(a.id).y - pos.get(b.id).y);
}

function buildActivity(flow) {
  const list = $("node-activity");
  list.replaceChildren(
    ...readingOrder(flow).map((n) =>
      h(
        "li",
        { class: "node-item state-PENDING", id: `node-${n.id}`, tabindex: -1, dataset: { nodeId: n.id } },
        h(
          "div",
          { class: "node-head" },
          h("span", { class: "node-name", text: n.name || n.id }),
          h("span", { class: "node-kind", text: n.kind }),
          h("span", { class: "node-state", text: "PENDING" }),
        ),
        h("pre", { class: "tokens", dataset: { tokensFor: n.id } }),
        h("p", { class: "node-note" }),
      ),
    ),
  );
}

function activity(nodeId) {
  return $("node-activity").querySelector(`li[data-node-id="${CSS.escape(nodeId)}"]`);
}

function focusNode(nodeId) {
  state.run?.graph?.setSelected(nodeId);
  const li = activity(nodeId);
  if (li && !$("run-view").hidden) {
    li.scrollIntoView({ block: "nearest" });
    li.focus();
  }
}

// ---------------------------------------------------------------- runs

$("run-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act($("run-button"), async () => {
    let inputs;
    try {
      inputs = JSON.parse($("run-inputs").value || "{}");
    } catch {
      throw new ApiError("Inputs must be a JSON object.", "BAD_USER_INPUT");
    }
    if (!inputs || typeof inputs !== "object" || Array.isArray(inputs)) {
      throw new ApiError("Inputs must be a JSON object.", "BAD_USER_INPUT");
    }
    clearNotice();
    const { executeFlow } = await api.request(Q.execute, { id: state.flowId, inputs });
    trackExecution(executeFlow);
    await openExecution(executeFlow.id);
  });
});

$("cancel-button").addEventListener("click", () =>
  act(null, async () => {
    const run = state.run;
    if (!run) return;
    $("cancel-button").disabled = true;
    try {
      const { cancelExecution } = await api.request(Q.cancel, { id: run.id });
      trackExecution(cancelExecution);
      notify("Cancel requested.", "info");
    } finally {
      if (state.run === run) $("cancel-button").disabled = !ACTIVE.has(run.status);
    }
  }),
);

async function openExecution(id) {
  const { execution } = await api.request(Q.execution, { id });
  if (!execution) throw new ApiError("That execution no longer exists.", "NOT_FOUND");
  state.run?.stop?.();
  const flow = execution.flow || crewFlow(execution);
  const graph = showFlow(flow);
  markFlow(execution.flow ? flow.id : null);
  $("run-form").hidden = !execution.flow; // a crew test run is started elsewhere
  $("run-view").hidden = false;
  $("run-title").textContent = `Run ${execution.id.slice(0, 8)} · v${execution.flowVersion ?? "?"}`;
  const run = { id, status: execution.status, lastSeq: 0, graph, tokens: new Map(), stop: null };
  state.run = run;
  setRunStatus(execution.status, execution.error);
  showDetails(execution);
  run.stop = api.subscribe(
    Q.events,
    { id, after: 0 },
    {
      onData: (d) => state.run === run && applyEvent(run, d.executionEvents),
      onError: (err) => state.run === run && notify(describe(err)),
    },
  );
}

// `testCrew` runs have no flow: they run INPUT -> CREW -> OUTPUT (domain crew_graph).
function crewFlow(execution) {
  const name = execution.crew ? execution.crew.name : "crew";
  return {
    id: null,
    name: `Crew test run: ${name}`,
    description: null,
    nodes: [
      { id: "input", kind: "INPUT", name: "input", config: {} },
      { id: "crew", kind: "CREW", name, config: {} },
      { id: "output", kind: "OUTPUT", name: "output", config: {} },
    ],
    edges: [
      { source: "input", target: "crew", branch: null },
      { source: "crew", target: "output", branch: null },
    ],
  };
}

function setRunStatus(status, error) {
  if (!state.run) return;
  state.run.status = status;
  $("run-status").textContent = status;
  $("run-status").className = `status-${status}`;
  $("run-error").textContent = error ? ` — ${error}` : "";
  $("cancel-button").disabled = !ACTIVE.has(status);
}

function setNode(run, nodeId, value, note) {
  run.graph.setState(nodeId, value);
  const li = activity(nodeId);
  if (!li) return;
  li.className = `node-item state-${value}`;
  li.querySelector(".node-state").textContent = value;
  if (note !== undefined) li.querySelector(".node-note").textContent = note;
}

function brief(value) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text && text.length > 300 ? `${text.slice(0, 299)}…` : text || "";
}

function applyEvent(run, ev) {
  if (ev.sequence <= run.lastSeq) return; // a resubscription replays what we have
  run.lastSeq = ev.sequence;
  const d = ev.data || {};
  switch (ev.type) {
    case "EXECUTION_STARTED":
    case "EXECUTION_RESUMED":
      setRunStatus("RUNNING");
      for (const id of d.nodeIds || []) setNode(run, id, "RUNNING");
      break;
    case "NODE_STARTED":
      setNode(run, ev.nodeId, "RUNNING", "");
      break;
    case "TOKEN": {
      const text = (run.tokens.get(ev.nodeId) || "") + (d.delta || "");
      run.tokens.set(ev.nodeId, text);
      const pre = activity(ev.nodeId)?.querySelector(".tokens");
      if (pre) pre.textContent = text;
      run.graph.setPreview(ev.nodeId, text);
      break;
    }
    case "LOG":
      if (ev.nodeId) {
        const li = activity(ev.nodeId);
        if (li) li.querySelector(".node-note").textContent = d.message || "";
      }
      break;
    case "NODE_COMPLETED":
      setNode(run, ev.nodeId, "COMPLETED", `output: ${brief(d.output)}`);
      refreshSoon(run);
      break;
    case "NODE_FAILED":
      setNode(run, ev.nodeId, "FAILED", `error: ${d.error || "failed"}`);
      break;
    case "NODE_SKIPPED":
      setNode(run, ev.nodeId, "SKIPPED", d.reason || "");
      break;
    case "NODE_WAITING":
      setNode(run, ev.nodeId, "WAITING", d.prompt || "");
      break;
    case "EXECUTION_WAITING":
      setRunStatus("WAITING");
      refreshSoon(run, 0);
      break;
    case "EXECUTION_COMPLETED":
      setRunStatus("COMPLETED");
      break;
    case "EXECUTION_FAILED":
      setRunStatus("FAILED", d.error);
      break;
    case "EXECUTION_CANCELLED":
      for (const id of d.cancelledNodes || []) setNode(run, id, "CANCELLED");
      setRunStatus("CANCELLED");
      break;
    default:
      break;
  }
  if (TERMINAL_EVENTS.has(ev.type)) refreshSoon(run, 0);
}

// Usage, approvals and node results are read again once things settle (not per token).
function refreshSoon(run, delay = 300) {
  clearTimeout(run.refreshTimer);
  run.refreshTimer = setTimeout(async () => {
    if (state.run !== run) return;
    try {
      const { execution } = await api.request(Q.details, { id: run.id });
      if (execution && state.run === run) {
        setRunStatus(execution.status, execution.error);
        showDetails(execution);
        trackExecution({ ...state.executions.get(run.id)?.data, id: run.id, status: execution.status });
      }
    } catch (err) {
      notify(describe(err));
    }
  }, delay);
}

function money(v) {
  return v === null || v === undefined ? "no price" : `$${v.toFixed(6)}`;
}

function showDetails(execution) {
  const u = execution.usage;
  $("run-usage").replaceChildren(
    ...[
      ["LLM calls", u.llmCalls],
      ["Prompt tokens", u.promptTokens],
      ["Completion tokens", u.completionTokens],
      ["Total tokens", u.totalTokens],
      ["Cost", u.llmCalls ? money(u.costUsd) : "—"],
    ].map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: String(v), dataset: { usage: k } }))),
  );
  for (const r of execution.nodeRuns) {
    const li = activity(r.nodeId);
    if (!li) continue;
    if (state.run && li.querySelector(".node-state").textContent === "PENDING" && r.status !== "PENDING") {
      setNode(state.run, r.nodeId, r.status);
    }
    let usage = li.querySelector(".node-usage");
    if (r.usage) {
      usage ||= li.querySelector(".node-head").appendChild(h("span", { class: "node-usage" }));
      usage.textContent = `${r.usage.totalTokens} tokens · ${money(r.usage.costUsd)}`;
    }
  }
  renderApprovals(execution);
}

function renderApprovals(execution) {
  const box = $("approvals");
  box.replaceChildren(
    ...execution.pendingApprovals.map((a) => {
      const answerId = `approval-input-${a.nodeId}`;
      const commentId = `approval-comment-${a.nodeId}`;
      const answer = a.inputSchema
        ? [
            h("label", { for: answerId, text: "Answer (JSON)" }),
            h("textarea", { id: answerId, rows: 3, spellcheck: "false" }),
          ]
        : [];
      const decide = (approved) => (ev) =>
        act(ev.currentTarget, async () => {
          let input = null;
          if (a.inputSchema) {
            try {
              input = JSON.parse($(answerId).value || "null");
            } catch {
              throw new ApiError("The answer must be JSON.", "BAD_USER_INPUT");
            }
          }
          const comment = $(commentId).value.trim() || null;
          await api.request(Q.resolve, { e: execution.id, n: a.nodeId, ok: approved, input, comment });
          notify(approved ? "Approved." : "Rejected.", "info");
          box.querySelector(`[data-approval="${CSS.escape(a.nodeId)}"]`)?.remove();
        });
      return h(
        "fieldset",
        { class: "approval", dataset: { approval: a.nodeId } },
        h("legend", { text: `Approval needed: ${a.nodeId}` }),
        h("p", { class: "prompt", text: a.prompt }),
        a.expiresAt ? h("p", { class: "hint", text: `Answered automatically at ${new Date(a.expiresAt).toLocaleString()}` }) : null,
        ...answer,
        h("label", { for: commentId, text: "Comment (optional)" }),
        h("input", { id: commentId, type: "text" }),
        h(
          "div",
          { class: "row" },
          h("button", { type: "button", class: "approve", onclick: decide(true), text: "Approve" }),
          h("button", { type: "button", class: "reject", onclick: decide(false), text: "Reject" }),
        ),
      );
    }),
  );
}

// ---------------------------------------------------------------- executions (live)

async function loadExecutions() {
  const data = await api.request(Q.executions);
  state.executions.clear();
  $("execution-list").replaceChildren();
  for (const e of data.executions.edges.map((x) => x.node).reverse()) trackExecution(e);
}

function watchExecutions() {
  state.stopUpdates?.();
  state.stopUpdates = api.subscribe(Q.updates, {}, {
    onData: (d) => {
      const e = d.executionUpdates;
      trackExecution(e);
      // A change the event stream does not show (say a resumed run going back to PENDING).
      if (state.run && state.run.id === e.id && e.status !== state.run.status) refreshSoon(state.run);
    },
    onError: (err) => notify(describe(err)),
  });
}

// Adds or updates one row of the executions list (newest on top, at most 30).
function trackExecution(e) {
  const known = state.executions.get(e.id);
  const data = { ...(known?.data || {}), ...e };
  const label = `${data.flow?.name || (data.crew ? `crew ${data.crew.name}` : "run")} · ${data.status}`;
  const when = data.createdAt ? new Date(data.createdAt).toLocaleTimeString() : "";
  if (known) {
    known.data = data;
    known.button.querySelector(".label").textContent = label;
    known.button.querySelector(".when").textContent = when;
    known.button.className = `item exec status-${data.status}`;
    known.button.dataset.status = data.status;
    return;
  }
  const button = h(
    "button",
    {
      type: "button",
      class: `item exec status-${data.status}`,
      dataset: { executionId: e.id, status: data.status },
      onclick: (ev) => act(ev.currentTarget, () => openExecution(e.id)),
    },
    h("span", { class: "label", text: label }),
    h("span", { class: "when", text: when }),
  );
  const li = h("li", {}, button);
  const list = $("execution-list");
  list.prepend(li);
  state.executions.set(e.id, { data, button, li });
  while (list.children.length > 30) {
    const last = list.lastElementChild;
    state.executions.delete(last.querySelector("button").dataset.executionId);
    last.remove();
  }
}

// ---------------------------------------------------------------- chat

async function loadChatTargets() {
  const data = await api.request(Q.chatTargets);
  const target = $("chat-target");
  const providers = data.llmProviders.edges.map((e) => e.node);
  const agents = data.agents.edges.map((e) => e.node);
  target.replaceChildren(
    h("optgroup", { label: "Models" }, ...providers.map((p) => h("option", { value: `p:${p.id}`, text: `${p.name} (${p.model})` }))),
    h("optgroup", { label: "Agents" }, ...agents.map((a) => h("option", { value: `a:${a.id}`, text: a.name }))),
  );
  const sessions = data.chatSessions.edges.map((e) => e.node).reverse();
  $("chat-session").replaceChildren(
    h("option", { value: "", text: sessions.length ? "Choose a session" : "No sessions yet" }),
    ...sessions.map(sessionOption),
  );
  setChatEnabled(false);
}

function sessionOption(s) {
  const when = new Date(s.createdAt).toLocaleString();
  return h("option", { value: s.id, text: `${s.title || "Chat"} · ${when}` });
}

function setChatEnabled(on) {
  $("chat-input").disabled = !on;
  $("chat-send").disabled = !on;
  if (!on) $("chat-stop").disabled = true;
}

$("chat-new").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act($("chat-new-button"), async () => {
    const value = $("chat-target").value;
    if (!value) throw new ApiError("Choose a model or an agent first.", "BAD_USER_INPUT");
    const [kind, id] = [value.slice(0, 1), value.slice(2)];
    const option = $("chat-target").selectedOptions[0];
    const input = { title: `Chat with ${option.textContent}`.slice(0, 200) };
    input[kind === "p" ? "llmProviderId" : "agentId"] = id;
    const { createChatSession } = await api.request(Q.createChat, { input });
    const opt = sessionOption(createChatSession);
    $("chat-session").append(opt);
    $("chat-session").value = createChatSession.id;
    await openChat(createChatSession.id);
    $("chat-input").focus();
  });
});

$("chat-session").addEventListener("change", (ev) => {
  const id = ev.currentTarget.value;
  act(null, () => (id ? openChat(id) : closeChat()));
});

function closeChat() {
  state.chat?.stop?.();
  state.chat = null;
  $("chat-log").replaceChildren();
  setChatEnabled(false);
}

async function openChat(id) {
  closeChat();
  // Subscribe first: a reply that starts meanwhile still arrives whole (the API replays it).
  const chat = { id, stop: null, replies: new Map() };
  state.chat = chat;
  chat.stop = api.subscribe(Q.chatTokens, { id }, {
    onData: (d) => state.chat === chat && onChatToken(chat, d.chatTokens),
    onError: (err) => notify(describe(err)),
  });
  const { chatSession } = await api.request(Q.chatMessages, { id });
  if (state.chat !== chat) return;
  for (const m of chatSession.messages.edges.map((e) => e.node)) {
    if (!chat.replies.has(m.id)) addMessage(chat, m);
  }
  setChatEnabled(true);
}

function addMessage(chat, m) {
  const body = h("p", { class: "content", text: m.content });
  const meta = h("span", { class: "meta", text: `${m.role.toLowerCase()}${m.status !== "COMPLETED" ? ` · ${m.status.toLowerCase()}` : ""}` });
  const li = h("li", { class: `msg role-${m.role}`, dataset: { messageId: m.id, status: m.status } }, meta, body);
  if (m.error) li.append(h("p", { class: "error-text", text: m.error }));
  $("chat-log").append(li);
  li.scrollIntoView({ block: "nearest" });
  if (m.role === "ASSISTANT") chat.replies.set(m.id, { li, next: m.status === "STREAMING" ? null : Infinity });
  return li;
}

function onChatToken(chat, t) {
  let reply = chat.replies.get(t.messageId);
  if (!reply) {
    addMessage(chat, { id: t.messageId, role: "ASSISTANT", content: "", status: "STREAMING" });
    reply = chat.replies.get(t.messageId);
    reply.next = 0;
  }
  if (reply.next === Infinity) return; // already complete from history
  if (reply.next === null) {
    // Known from history while streaming: the replay restarts it from token 0.
    reply.li.querySelector(".content").textContent = "";
    reply.next = 0;
  }
  if (t.index !== reply.next) return; // each index once
  reply.next += 1;
  const content = reply.li.querySelector(".content");
  content.textContent += t.delta;
  $("chat-stop").disabled = t.done;
  if (t.done) {
    const status = t.error ? "FAILED" : "COMPLETED";
    reply.li.dataset.status = status;
    reply.li.querySelector(".meta").textContent = `assistant${t.error ? " · failed" : ""}`;
    if (t.error) reply.li.append(h("p", { class: "error-text", text: t.error }));
    reply.next = Infinity;
  }
  content.closest("li").scrollIntoView({ block: "nearest" });
}

$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const chat = state.chat;
  if (!chat) return;
  act($("chat-send"), async () => {
    const content = $("chat-input").value.trim();
    if (!content) return;
    const { sendChatMessage } = await api.request(Q.send, { id: chat.id, content });
    $("chat-input").value = "";
    addMessage(chat, sendChatMessage);
    $("chat-stop").disabled = false;
  });
});

$("chat-input").addEventListener("keydown", (ev) => {
  // Enter sends, Shift+Enter starts a new line.
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $("chat-form").requestSubmit();
  }
});

$("chat-stop").addEventListener("click", () =>
  act(null, async () => {
    if (!state.chat) return;
    $("chat-stop").disabled = true;
    await api.request(Q.stop, { id: state.chat.id });
  }),
);

// ---------------------------------------------------------------- start

if (api.signedIn) {
  showApp().catch((err) => {
    if (err.code === "UNAUTHENTICATED") showSignIn("Your session ended; sign in again.");
    else notify(describe(err));
  });
} else {
  showSignIn();
}
