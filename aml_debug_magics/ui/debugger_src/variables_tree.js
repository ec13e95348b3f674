// Variables as a tree whose children load only when a node is opened.
// In: scopes and variables from the state snapshot, and `ask(message)`, which sends a request to
// the kernel and resolves with its reply. Out: DOM nodes; "variables" requests when a node opens,
// "full_value" requests when the user asks for a shortened value in full (the reply holds at
// most a few million characters of it, and the whole value's length).
// Open nodes are remembered by their path of names, so they open again after the next stop.

export class VariablesTree {
  constructor(ask) {
    this.ask = ask;
    this.openPaths = new Set();
  }

  // scopes: [{name, variables_reference, expensive, variables}]
  renderScopes(container, scopes) {
    container.replaceChildren();
    scopes.forEach((scope, index) => {
      const path = scope.name;
      const preloaded = scope.variables && scope.variables.length ? scope.variables : null;
      const open = this.openPaths.has(path) || (index === 0 && !this.openPaths.has(`!${path}`));
      container.append(
        this.node({
          label: scope.name,
          path,
          reference: scope.variables_reference,
          preloaded,
          open,
          scope: true,
        }),
      );
    });
  }

  // variable: {name, value, type, variables_reference, shortened}; parentReference names the
  // container the kernel reads the full value from (0: an evaluation's result, whose full value
  // comes from evaluating its expression, the variable's name, again in the frame frameId)
  variableNode(variable, path, parentReference, frameId = null) {
    return this.node({
      label: variable.name,
      path,
      reference: variable.variables_reference,
      variable,
      parentReference,
      frameId,
      open: variable.variables_reference > 0 && this.openPaths.has(path),
    });
  }

  node({ label, path, reference, variable, parentReference, frameId, preloaded, open, scope }) {
    const item = document.createElement("div");
    item.className = scope ? "aml-dbg-var aml-dbg-scope" : "aml-dbg-var";
    item.dataset.path = path;
    const row = document.createElement("div");
    row.className = "aml-dbg-var-row";
    const twisty = document.createElement("span");
    twisty.className = "aml-dbg-twisty";
    const expandable = reference > 0;
    twisty.textContent = expandable ? "\u25B8" : "";
    const name = document.createElement("span");
    name.className = "aml-dbg-var-name";
    name.textContent = label;
    row.append(twisty, name);
    if (variable) {
      const value = document.createElement("span");
      value.className = "aml-dbg-var-value";
      value.textContent = variable.value;
      value.title = variable.type;
      if (variable.value) row.append(document.createTextNode(" = "));
      row.append(value);
      if (variable.type) {
        const type = document.createElement("span");
        type.className = "aml-dbg-var-type";
        type.textContent = variable.type;
        row.append(type);
      }
      if (variable.shortened) {
        const more = document.createElement("button");
        more.className = "aml-dbg-full-value";
        more.textContent = "full value";
        more.title = "Load the whole value from the debuggee";
        more.addEventListener("click", async (event) => {
          event.stopPropagation();
          more.disabled = true;
          const reply = await this.ask({
            action: "full_value",
            variables_reference: parentReference,
            name: variable.name,
            frame_id: frameId,
          });
          more.remove();
          if (reply.error) {
            value.replaceWith(this.note(reply.error, true));
            return;
          }
          value.textContent = reply.value;
          value.classList.add("aml-dbg-var-full");
          if (reply.length > reply.value.length) {
            const part = `(the first ${reply.value.length.toLocaleString("en-US")} of ` +
              `${reply.length.toLocaleString("en-US")} characters)`;
            value.after(this.note(part));
          }
        });
        row.append(more);
      }
    }
    const children = document.createElement("div");
    children.className = "aml-dbg-var-children";
    item.append(row, children);
    if (!expandable) return item;

    let loaded = false;
    const setOpen = async (wanted) => {
      item.classList.toggle("aml-dbg-open", wanted);
      twisty.textContent = wanted ? "\u25BE" : "\u25B8";
      if (wanted) {
        this.openPaths.add(path);
        this.openPaths.delete(`!${path}`);
      } else {
        this.openPaths.delete(path);
        if (scope) this.openPaths.add(`!${path}`);
      }
      if (!wanted || loaded) return;
      loaded = true;
      let variables = preloaded;
      if (!variables) {
        children.replaceChildren(this.note("loading\u2026"));
        const reply = await this.ask({ action: "variables", variables_reference: reference });
        if (reply.error) {
          children.replaceChildren(this.note(reply.error, true));
          return;
        }
        variables = reply.variables || [];
      }
      children.replaceChildren(
        ...(variables.length
          ? variables.map((child) => this.variableNode(child, `${path}/${child.name}`, reference))
          : [this.note("(empty)")]),
      );
    };
    row.addEventListener("click", () => setOpen(!item.classList.contains("aml-dbg-open")));
    if (open) setOpen(true);
    return item;
  }

  note(text, failed) {
    const note = document.createElement("div");
    note.className = failed ? "aml-dbg-note aml-dbg-error" : "aml-dbg-note";
    note.textContent = text;
    return note;
  }
}
