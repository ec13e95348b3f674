// A button that copies the attach configuration and reports back whether it worked.
// The Clipboard API needs a secure context (https, or http on localhost/127.0.0.1); elsewhere
// only a selected textarea and execCommand("copy") can reach the clipboard.

function copyWithTextarea(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.top = "0";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.focus();
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch (error) {
    copied = false;
  } finally {
    area.remove();
  }
  return copied;
}

async function copy(text) {
  if (window.isSecureContext && navigator.clipboard && navigator.clipboard.writeText) {
    try {
      await navigator.clipboard.writeText(text);
      return "copied";
    } catch (error) {
      // permission denied (e.g. a VS Code webview): try the textarea below
    }
  }
  return copyWithTextarea(text) ? "copied (fallback)" : "failed";
}

function render({ model, el }) {
  const button = document.createElement("button");
  button.className = "jupyter-widgets jupyter-button widget-button aml-debug-copy";
  const sync = () => {
    button.textContent = model.get("label");
    button.disabled = !model.get("text");
  };
  sync();
  model.on("change:label", sync);
  model.on("change:text", sync);
  button.addEventListener("click", async () => {
    const result = await copy(model.get("text"));
    model.set("result", result);
    model.set("clicks", model.get("clicks") + 1);
    model.save_changes();
  });
  el.appendChild(button);
}

export default { render };
