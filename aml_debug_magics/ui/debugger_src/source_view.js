// The source of the selected frame in a read-only CodeMirror 6 editor.
// In: the frame's path, text and line, and the breakpoint lines the kernel reports for that path.
// Out: a click in the gutter (breakpoint column or line number) calls onToggle(line).
// The text takes the focus when clicked (and the gutter gives it to the text), so the view's
// keys (F10...) keep working while the user reads or selects the source.
// The line mark carries data-line so a page (and the browser tests) can read where it is.

import { RangeSet, StateEffect, StateField, EditorState } from "@codemirror/state";
import {
  Decoration,
  EditorView,
  GutterMarker,
  gutter,
  lineNumbers,
} from "@codemirror/view";
import { defaultHighlightStyle, syntaxHighlighting } from "@codemirror/language";
import { python } from "@codemirror/lang-python";

const setBreakpoints = StateEffect.define();
const setMark = StateEffect.define();

class BreakpointMarker extends GutterMarker {
  toDOM() {
    const dot = document.createElement("span");
    dot.className = "aml-dbg-breakpoint";
    dot.textContent = "\u25CF";
    return dot;
  }
}
const breakpointMarker = new BreakpointMarker();

class ArrowMarker extends GutterMarker {
  toDOM() {
    const arrow = document.createElement("span");
    arrow.className = "aml-dbg-arrow";
    arrow.textContent = "\u25B6";
    return arrow;
  }
}
const arrowMarker = new ArrowMarker();

function lineStart(state, line) {
  return state.doc.line(Math.min(Math.max(line, 1), state.doc.lines)).from;
}

const breakpointField = StateField.define({
  create: () => RangeSet.empty,
  update(set, transaction) {
    set = set.map(transaction.changes);
    for (const effect of transaction.effects) {
      if (effect.is(setBreakpoints)) {
        const lines = [...new Set(effect.value)].filter(
          (line) => line >= 1 && line <= transaction.state.doc.lines,
        );
        lines.sort((a, b) => a - b);
        set = RangeSet.of(lines.map((line) => breakpointMarker.range(lineStart(transaction.state, line))));
      }
    }
    return set;
  },
});

// {line, top}: top is true for the frame that is executing, false for a caller's line
const markField = StateField.define({
  create: () => null,
  update(mark, transaction) {
    for (const effect of transaction.effects) {
      if (effect.is(setMark)) mark = effect.value;
    }
    return mark;
  },
  provide: (field) => [
    EditorView.decorations.from(field, (mark) => {
      if (!mark) return Decoration.none;
      return Decoration.set([
        Decoration.line({
          attributes: {
            class: mark.top ? "aml-dbg-line aml-dbg-line-top" : "aml-dbg-line aml-dbg-line-caller",
            "data-line": String(mark.line),
          },
        }).range(mark.from),
      ]);
    }),
  ],
});

function breakpointLines(state) {
  const lines = [];
  const cursor = state.field(breakpointField).iter();
  for (; cursor.value; cursor.next()) lines.push(state.doc.lineAt(cursor.from).number);
  return lines;
}

export class SourceView {
  constructor(parent, onToggle) {
    this.path = null;
    this.onToggle = onToggle;
    const toggleAt = (view, block) => {
      const line = view.state.doc.lineAt(block.from).number;
      const lines = breakpointLines(view.state);
      const next = lines.includes(line) ? lines.filter((l) => l !== line) : [...lines, line];
      view.dispatch({ effects: setBreakpoints.of(next) });  // shown at once, the kernel confirms
      view.focus();  // the gutter's click is handled here, so the browser moves no focus
      this.onToggle(line);
      return true;
    };
    const handlers = { mousedown: toggleAt };
    this.view = new EditorView({
      parent,
      state: EditorState.create({
        doc: "",
        extensions: [
          breakpointField,
          markField,
          gutter({
            class: "aml-dbg-breakpoints",
            markers: (view) => view.state.field(breakpointField),
            initialSpacer: () => breakpointMarker,
            domEventHandlers: handlers,
          }),
          gutter({
            class: "aml-dbg-arrows",
            lineMarker: (view, block) => {
              const mark = view.state.field(markField);
              return mark && mark.top && mark.from === block.from ? arrowMarker : null;
            },
            lineMarkerChange: (update) =>
              update.startState.field(markField) !== update.state.field(markField),
            initialSpacer: () => arrowMarker,
          }),
          lineNumbers({ domEventHandlers: handlers }),
          python(),
          syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
          EditorState.readOnly.of(true),
          EditorView.editable.of(false),
          // not editable leaves the text unfocusable: a click would then blur the view
          EditorView.contentAttributes.of({ tabindex: "0" }),
        ],
      }),
    });
  }

  // source: {path, text, line} | null; breakpoints: [line]; top: the line is the executing one
  show(source, breakpoints, top) {
    const view = this.view;
    if (!source) {
      this.path = null;
      view.dispatch({
        changes: { from: 0, to: view.state.doc.length, insert: "" },
        effects: [setMark.of(null), setBreakpoints.of([])],
      });
      return;
    }
    const changes =
      source.path !== this.path || source.text !== view.state.doc.toString()
        ? { from: 0, to: view.state.doc.length, insert: source.text }
        : undefined;
    this.path = source.path;
    view.dispatch({ changes });
    const line = Math.min(Math.max(source.line || 1, 1), view.state.doc.lines);
    const from = view.state.doc.line(line).from;
    view.dispatch({
      effects: [
        setBreakpoints.of(breakpoints || []),
        setMark.of(source.line ? { line, from, top } : null),
        EditorView.scrollIntoView(from, { y: "center" }),
      ],
    });
  }

  destroy() {
    this.view.destroy();
  }
}
