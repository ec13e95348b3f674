"""Read an SDK v2 node's ``command`` as bash will run it, without running anything.

In: the command line as the user wrote it (``cd src && python train.py --out ${{outputs.model}}``).
Out: its Python invocations (:class:`PythonCall`: where the interpreter word and its own options
sit in the text, the script or ``-m`` module, its arguments, and the folder it runs in as far as
the line's ``cd`` words tell), the ``${{...}}`` placeholders it holds, and, for a target that runs
the line itself, the same line with every placeholder replaced by a value the shell reads back
unchanged, whatever quotes the placeholder sat in. Quotes, escapes, ``$(...)``, comments,
redirections and the operators that separate commands (``&& || ; | & ( )`` and newlines) are
understood as bash understands them; nothing is expanded.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

PLACEHOLDER = re.compile(r"\$\{\{\s*([\w.]+)\s*\}\}")
OPTIONAL_BLOCK = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)
_INTERPRETER = re.compile(r"^python(3(\.\d+)?)?$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
_PREFIXES = {"exec", "time", "nohup", "command"}
_OPTIONS_WITH_VALUE = {"-W", "-X", "--check-hash-based-pycs"}
_OPERATORS = ("&&", "||", ";;", ";", "|", "&", "(", ")", "\n")


@dataclass(frozen=True)
class Word:
    """One shell word: ``raw`` as written at ``start:end``, ``value`` with its quotes removed
    (placeholders kept as written)."""

    raw: str
    value: str
    start: int
    end: int


@dataclass(frozen=True)
class Placeholder:
    """A ``${{...}}`` in the line: what it names (``inputs.lr``), where, and the quote it sits in
    (``""`` outside quotes, ``"'"`` or ``'"'``)."""

    name: str
    start: int
    end: int
    quote: str


@dataclass(frozen=True)
class PythonCall:
    """One Python invocation of the line."""

    interpreter: tuple[int, int]  # the interpreter word and its own options (-u, -X dev)
    program: str  # the script path, or with ``module`` the module name, as the shell gives it
    module: bool
    arguments: tuple[Word, ...]  # what follows the script or module
    folder: str  # where it runs, relative to the line's starting folder ("." unless cd said)
    text: str  # the invocation as written, for messages

    def script_in(self, exists: Callable[[str], bool] = lambda _: False) -> str:
        """The script's path relative to the starting folder: the best guess for a module is
        ``pkg/train.py``, or ``pkg/train/__main__.py`` where ``exists`` says that is a file."""
        if not self.module:
            return posixpath.normpath(posixpath.join(self.folder, self.program))
        base = posixpath.normpath(posixpath.join(self.folder, *self.program.split(".")))
        package_main = f"{base}/__main__.py"
        return package_main if exists(package_main) and not exists(f"{base}.py") else f"{base}.py"


@dataclass
class CommandLine:
    """What :func:`read_line` finds in a line."""

    text: str
    calls: list[PythonCall] = field(default_factory=list)
    placeholders: list[Placeholder] = field(default_factory=list)


def _scan(text: str) -> tuple[list[list[Word] | str], list[Placeholder]]:
    """The line's words and operators in order (an operator as its text), and its placeholders."""
    items: list[list[Word] | str] = []
    placeholders: list[Placeholder] = []
    command: list[Word] = []
    raw_start: int | None = None
    value: list[str] = []
    skip_next = False  # the word after a redirection is its target, not an argument

    def end_word(at: int) -> None:
        nonlocal raw_start, value, skip_next
        if raw_start is not None:
            if skip_next:
                skip_next = False
            else:
                command.append(Word(text[raw_start:at], "".join(value), raw_start, at))
        raw_start, value = None, []

    def end_command(operator: str) -> None:
        nonlocal command
        if command:
            items.append(command)
        command = []
        items.append(operator)

    i, quote = 0, ""
    while i < len(text):
        found = PLACEHOLDER.match(text, i) if text.startswith("${{", i) else None
        if found:
            raw_start = i if raw_start is None else raw_start
            placeholders.append(Placeholder(found[1], i, found.end(), quote))
            value.append(found[0])
            i = found.end()
            continue
        char = text[i]
        if quote == "'":
            if char == "'":
                quote = ""
            else:
                value.append(char)
            i += 1
            continue
        if quote == '"':
            if char == "\\" and i + 1 < len(text) and text[i + 1] in '$`"\\\n':
                value.append(text[i + 1])
                i += 2
            elif char == '"':
                quote = ""
                i += 1
            elif text.startswith("$(", i):
                i = _skip_substitution(text, i, value)
            else:
                value.append(char)
                i += 1
            continue
        if char in "'\"":
            raw_start = i if raw_start is None else raw_start
            quote = char
            i += 1
        elif char == "\\":
            raw_start = i if raw_start is None else raw_start
            if i + 1 < len(text) and text[i + 1] != "\n":
                value.append(text[i + 1])
            i += 2
        elif char == "#" and raw_start is None:
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
        elif text.startswith("$(", i):
            raw_start = i if raw_start is None else raw_start
            i = _skip_substitution(text, i, value)
        elif char in "<>":
            if raw_start is not None and "".join(value).isdigit():  # 2>file: a descriptor
                raw_start, value = None, []
            end_word(i)
            while i < len(text) and text[i] in "<>&":
                i += 1
            skip_next = not (i < len(text) and text[i].isdigit() and text[i - 1] == "&")
            if not skip_next:  # 2>&1
                while i < len(text) and text[i].isdigit():
                    i += 1
        elif char.isspace() and char != "\n":
            end_word(i)
            i += 1
        else:
            operator = next((op for op in _OPERATORS if text.startswith(op, i)), None)
            if operator:
                end_word(i)
                end_command(operator)
                i += len(operator)
            else:
                raw_start = i if raw_start is None else raw_start
                value.append(char)
                i += 1
    end_word(len(text))
    if command:
        items.append(command)
    return items, placeholders


def _skip_substitution(text: str, i: int, value: list[str]) -> int:
    """Past a ``$(...)`` (nested ones too), kept whole in the word's value."""
    depth, j = 0, i
    while j < len(text):
        if text.startswith("$(", j):
            depth, j = depth + 1, j + 2
            continue
        if text[j] == ")":
            depth -= 1
            if depth == 0:
                j += 1
                break
        j += 1
    value.append(text[i:j])
    return j


def read_line(text: str) -> CommandLine:
    """The Python invocations and placeholders of ``text``.

    >>> line = read_line("cd src && python -u train.py --lr ${{inputs.lr}}")
    >>> call = line.calls[0]
    >>> call.program, call.folder, line.text[slice(*call.interpreter)]
    ('train.py', 'src', 'python -u')
    """
    items, placeholders = _scan(text)
    found = CommandLine(text, placeholders=placeholders)
    folders = ["."]  # a ( ... ) subshell's cd ends with it
    for item in items:
        if isinstance(item, str):
            if item == "(":
                folders.append(folders[-1])
            elif item == ")" and len(folders) > 1:
                folders.pop()
            continue
        words = list(item)
        while words and (_ASSIGNMENT.match(words[0].value) or words[0].value in _PREFIXES):
            words.pop(0)
        if words and words[0].value == "env":
            words.pop(0)
            while words and _ASSIGNMENT.match(words[0].value):
                words.pop(0)
        if not words:
            continue
        if words[0].value == "cd":
            target = words[1].value if len(words) > 1 else ""
            if target and "$" not in target and not target.startswith(("/", "~", "-")):
                folders[-1] = posixpath.normpath(posixpath.join(folders[-1], target))
            continue
        call = _python_call(text, words, folders[-1])
        if call is not None:
            found.calls.append(call)
    return found


def _python_call(text: str, words: list[Word], folder: str) -> PythonCall | None:
    if not _INTERPRETER.match(posixpath.basename(words[0].value)):
        return None
    end, index, module = words[0].end, 1, False
    while index < len(words) and words[index].value.startswith("-"):
        option = words[index].value
        if option in ("-c", "-") or option.startswith("-c"):
            return None  # code on the line or from stdin: no file to debug
        if option == "-m":
            module = True
            index += 1
            break
        if option.startswith("-m"):  # -mpkg.train
            return None
        index += 2 if option in _OPTIONS_WITH_VALUE else 1
        end = words[min(index, len(words)) - 1].end
    if index >= len(words):
        return None
    return PythonCall(
        interpreter=(words[0].start, end),
        program=words[index].value,
        module=module,
        arguments=tuple(words[index + 1:]),
        folder=folder,
        text=text[words[0].start:words[-1].end],
    )


def substitute(text: str, value_of: Callable[[str], str]) -> str:
    """``text`` with each placeholder replaced by ``value_of(PLACEHOLDER as written)``, quoted
    so that bash reads back exactly that value, in or out of quotes.

    >>> print(substitute('python a.py --x ${{inputs.x}} "${{inputs.x}}"', lambda name: "a b"))
    python a.py --x 'a b' ""'a b'""
    """
    pieces, last = [], 0
    for placeholder in _scan(text)[1]:
        quoted = shlex.quote(value_of(text[placeholder.start:placeholder.end]))
        if placeholder.quote == '"':  # close, the quoted value, reopen
            quoted = f'"{quoted}"'
        elif placeholder.quote == "'":
            quoted = f"'{quoted}'"
        pieces += [text[last:placeholder.start], quoted]
        last = placeholder.end
    return "".join([*pieces, text[last:]])


def resolve_optional(text: str, given: Callable[[str], bool]) -> str:
    """The line's ``$[[ ... ]]`` blocks as Azure ML resolves them before running it: a block
    whose every ``${{...}}`` is ``given`` (by the name it holds, ``inputs.lr``) is kept without
    its brackets, any other is dropped.

    >>> resolve_optional("python t.py $[[--lr ${{inputs.lr}}]]", lambda name: False)
    'python t.py '
    """
    return OPTIONAL_BLOCK.sub(
        lambda block: block[1] if all(given(n) for n in PLACEHOLDER.findall(block[1])) else "",
        text,
    )
