// The in-notebook debugger view: the anywidget front end of DebuggerView.
// In: the `title` and `state` traits (one snapshot per stop: status, processes, stack, the
// selected frame's source, scopes, breakpoints, exception settings) and replies to requests
// ({reply: request_id, ...}).
// Out: custom messages to the kernel: stepping actions, breakpoint toggles, frame and process
// selection, variables / full value / evaluate requests, the raised-exceptions setting.
// A state with `read_only` (a failure's snapshot, read from a log) shows its frames, source
// and locals with that line as its status, and offers no stepping, breakpoints or evaluation.

import styles from "./view.css";
import { SourceView } from "./source_view.js";
import { VariablesTree } from "./variables_tree.js";

const STEPS = [
  { action: "continue", label: "Continue", key: "F5", icon: "\u25B6" },
  { action: "next", label: "Step over", key: "F10", icon: "\u21B7" },
  { action: "stepIn", label: "Step into", key: "F11", icon: "\u2193" },
  { action: "stepOut", label: "Step out", key: "Shift+F11", icon: "\u2191" },
  { action: "pause", label: "Pause", key: "F6", icon: "\u2225" },
  { action: "stop", label: "Stop debugging (the script runs on)", key: "Shift+F5", icon: "\u25A0" },
];

// which buttons work in which status
const ENABLED = {
  continue: (status) => status === "stopped",
  next: (status) => status === "stopped",
  stepIn: (status) => status === "stopped",
  stepOut: (status) => status === "stopped",
  pause: (status) => status === "running",
  stop: (status) => status === "running" || status === "stopped" || status === "connecting",
};

function keyName(event) {
  return (event.shiftKey ? "Shift+" : "") + event.key;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render({ model, el }) {
  const pending = new Map();
  let requestCount = 0;
  const requestPrefix = Math.random().toString(36).slice(2, 8);
  const ask = (message) =>
    new Promise((resolve) => {
      const request_id = `${requestPrefix}-${++requestCount}`;
      pending.set(request_id, resolve);
      model.send({ ...message, request_id });
    });
  const onCustom = (message) => {
    if (!message || message.reply === undefined) return;
    const resolve = pending.get(message.reply);
    if (!resolve) return;
    pending.delete(message.reply);
    resolve(message);
  };
  model.on("msg:custom", onCustom);

  const root = element("div", "aml-dbg");
  root.tabIndex = 0;
  el.append(element("style", "", styles), root);

  const title = element("div", "aml-dbg-title");
  const toolbar = element("div", "aml-dbg-toolbar");
  const buttons = {};
  for (const step of STEPS) {
    const button = element("button", `aml-dbg-button aml-dbg-${step.action}`, step.icon);
    button.title = `${step.label} (${step.key})`;
    button.setAttribute("aria-label", step.label);
    button.dataset.action = step.action;
    button.addEventListener("click", () => model.send({ action: step.action }));
    buttons[step.action] = button;
    toolbar.append(button);
  }
  const processes = element("select", "aml-dbg-processes");
  processes.title = "Process";
  processes.addEventListener("change", () =>
    model.send({ action: "select_process", id: processes.value }),
  );
  const raisedLabel = element("label", "aml-dbg-raised");
  const raised = element("input");
  raised.type = "checkbox";
  raised.addEventListener("change", () =>
    model.send({ action: "exceptions", raised: raised.checked }),
  );
  raisedLabel.append(raised, document.createTextNode(" stop on raised exceptions"));
  const status = element("span", "aml-dbg-status");
  toolbar.append(processes, raisedLabel, status);

  const exception = element("div", "aml-dbg-exception");
  const body = element("div", "aml-dbg-body");
  const sourcePane = element("div", "aml-dbg-source");
  const sourcePath = element("div", "aml-dbg-path");
  const editorHost = element("div", "aml-dbg-editor");
  sourcePane.append(sourcePath, editorHost);
  const side = element("div", "aml-dbg-side");
  const stack = element("div", "aml-dbg-stack");
  const variables = element("div", "aml-dbg-variables");
  const evaluate = element("div", "aml-dbg-evaluate");
  const evaluateHeading = element("div", "aml-dbg-heading", "Evaluate");
  side.append(
    element("div", "aml-dbg-heading", "Call stack"),
    stack,
    element("div", "aml-dbg-heading", "Variables"),
    variables,
    evaluateHeading,
    evaluate,
  );
  body.append(sourcePane, side);
  root.append(title, toolbar, exception, body);

  const source = new SourceView(editorHost, (line) => {
    const path = source.path;
    const readOnly = (model.get("state") || {}).read_only;
    if (path && !readOnly) model.send({ action: "toggle_breakpoint", path, line });
  });
  const tree = new VariablesTree(ask);

  const expression = element("input", "aml-dbg-expression");
  expression.placeholder = "expression, then Enter (runs in the selected frame)";
  const result = element("div", "aml-dbg-result");
  evaluate.append(expression, result);
  expression.addEventListener("keydown", async (event) => {
    if (event.key !== "Enter" || !expression.value.trim()) return;
    event.preventDefault();
    const text = expression.value;
    result.replaceChildren(tree.note("evaluating\u2026"));
    const frameId = model.get("state").frame_id ?? null;
    const reply = await ask({ action: "evaluate", expression: text, frame_id: frameId });
    if (reply.error || !reply.result) {
      result.replaceChildren(tree.note(reply.error || "no result", true));
    } else {
      const evaluated = { ...reply.result, name: text };
      result.replaceChildren(tree.variableNode(evaluated, `=${text}`, 0, frameId));
    }
  });

  // wherever the focus is in the view: a button, the source text, the evaluate box
  root.addEventListener("keydown", (event) => {
    const step = STEPS.find((candidate) => candidate.key === keyName(event));
    if (!step) return;
    // F5 reloads the page and F11 goes full screen unless the view takes them
    event.preventDefault();
    event.stopPropagation();
    if (!buttons[step.action].disabled) model.send({ action: step.action });
  });

  function showStack(state) {
    stack.replaceChildren();
    for (const frame of state.frames || []) {
      const row = element("div", "aml-dbg-frame");
      row.dataset.frameId = String(frame.id);
      if (frame.id === state.frame_id) row.classList.add("aml-dbg-selected");
      if (!frame.local) row.classList.add("aml-dbg-remote");
      const file = (frame.path || "").split(/[\\/]/).pop();
      row.append(
        element("span", "aml-dbg-frame-name", frame.name),
        element("span", "aml-dbg-frame-place", `${file}:${frame.line}`),
      );
      row.title = frame.local ? frame.path : `${frame.path} (source from the debuggee)`;
      row.addEventListener("click", () => model.send({ action: "select_frame", frame_id: frame.id }));
      stack.append(row);
    }
  }

  function showException(state) {
    const raisedException = state.stopped && state.stopped.exception;
    exception.replaceChildren();
    exception.hidden = !raisedException;
    if (!raisedException) return;
    exception.append(
      element("div", "aml-dbg-exception-title", `${raisedException.id}: ${raisedException.description}`),
    );
    if (raisedException.details) {
      exception.append(element("pre", "aml-dbg-exception-details", raisedException.details));
    }
  }

  function showProcesses(state) {
    const list = state.processes || [];
    processes.hidden = list.length < 2;
    processes.replaceChildren(
      ...list.map((process) => {
        const option = element("option", "", process.name);
        option.value = process.id;
        return option;
      }),
    );
    processes.value = state.process || "";
  }

  function showTitle() {
    title.textContent = model.get("title") || "";
    title.hidden = !title.textContent;
  }

  function showState() {
    const state = model.get("state") || {};
    const current = state.status || "connecting";
    root.dataset.status = current;
    const stop = current === "stopped" && state.stopped;
    const why = stop && (stop.description || stop.reason);
    const readOnly = state.read_only || "";
    root.classList.toggle("aml-dbg-read-only", Boolean(readOnly));
    const blocked = current === "unsupported" && state.message;
    status.textContent = blocked || readOnly || state.message || (why ? `stopped: ${why}` : current);
    for (const step of STEPS) {
      buttons[step.action].hidden = Boolean(readOnly);
      buttons[step.action].disabled = Boolean(readOnly) || !ENABLED[step.action](current);
    }
    raisedLabel.hidden = Boolean(readOnly);
    evaluateHeading.hidden = evaluate.hidden = Boolean(readOnly);
    raised.checked = Boolean(state.exceptions && state.exceptions.raised);
    raised.disabled = current === "ended" || current === "unsupported" || current === "error";
    showProcesses(state);
    showException(state);
    showStack(state);
    const frames = state.frames || [];
    const top = frames.length > 0 && frames[0].id === state.frame_id;
    const shown = state.source;
    sourcePath.textContent = shown ? shown.path : "";
    source.show(shown, shown ? (state.breakpoints || {})[shown.path] : [], top);
    tree.renderScopes(variables, state.scopes || []);
    if (current !== "stopped") result.replaceChildren();
  }

  model.on("change:state", showState);
  model.on("change:title", showTitle);
  showTitle();
  showState();

  return () => {
    model.off("change:state", showState);
    model.off("change:title", showTitle);
    model.off("msg:custom", onCustom);
    source.destroy();
  };
}

export default { render };
