"""Test helpers for falco-rules/: load rules files, expand macros, evaluate and compile filters."""

from __future__ import annotations

import fnmatch
import functools
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


@dataclass
class Definitions:
    """Macros (name -> condition) and lists (name -> items) known to a rules file."""

    macros: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)

    def merged(self, other: Definitions) -> Definitions:
        """Return these definitions with `other`'s added; a name defined twice is an error."""
        for kind in ("macros", "lists"):
            clash = set(getattr(self, kind)) & set(getattr(other, kind))
            if clash:
                raise ValueError(f"{kind} defined twice: {sorted(clash)}")
        return Definitions({**self.macros, **other.macros}, {**self.lists, **other.lists})


@dataclass
class RulesFile:
    """The items of a Falco rules file, split by kind."""

    rules: list[dict]
    definitions: Definitions
    other_items: list[dict]


def load_rules_file(path: Path) -> RulesFile:
    """Parse a Falco rules file (a YAML sequence of rule/macro/list items)."""
    items = yaml.safe_load(path.read_text())
    if not isinstance(items, list):
        raise ValueError(f"{path}: a Falco rules file is a YAML sequence")
    rules, other = [], []
    definitions = Definitions()
    for item in items:
        if "rule" in item:
            rules.append(item)
        elif "macro" in item:
            definitions.macros[item["macro"]] = item["condition"]
        elif "list" in item:
            definitions.lists[item["list"]] = [str(i) for i in item["items"]]
        else:
            other.append(item)
    return RulesFile(rules, definitions, other)


def load_default_macros(path: Path) -> Definitions:
    """Parse falco_default_macros.yaml (mappings `macros` and `lists`)."""
    data = yaml.safe_load(path.read_text())
    lists = {name: [str(i) for i in items] for name, items in data["lists"].items()}
    return Definitions(dict(data["macros"]), lists)


# ---------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<space>\s+)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<op>==|!=|<=|>=|=|<|>)
    |(?P<punct>[(),])
    |(?P<word>[^\s(),"'=<>!]+)
    """,
    re.VERBOSE,
)

BOOLEAN_WORDS = frozenset({"and", "or", "not"})
WORD_OPERATORS = frozenset(
    {
        "contains", "icontains", "bcontains", "startswith", "bstartswith", "endswith",
        "glob", "iglob", "in", "intersects", "pmatch", "exists", "regex",
    }
)
LIST_OPERATORS = frozenset({"in", "intersects", "pmatch"})


@dataclass(frozen=True)
class Token:
    kind: str  # string, op, punct, word
    text: str
    start: int
    end: int


def tokenize(text: str) -> list[Token]:
    """Split filter text into tokens, keeping their positions in `text`."""
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match:
            raise SyntaxError(f"unexpected character {text[pos]!r} at {pos} in {text!r}")
        if match.lastgroup != "space":
            tokens.append(Token(match.lastgroup, match.group(), match.start(), match.end()))
        pos = match.end()
    return tokens


def _is_operator(token: Token | None) -> bool:
    if token is None:
        return False
    return token.kind == "op" or (token.kind == "word" and token.text in WORD_OPERATORS)


# ---------------------------------------------------------------------------
# References and expansion
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A name in a condition that Falco would resolve: a macro, or a word in a value list."""

    kind: str  # "macro" or "list_item"
    token: Token


def scan_references(condition: str) -> list[Reference]:
    """Find macro references and value-list words, as Falco's parser sees them.

    A word in boolean position that is not followed by an operator is a macro.
    A word inside the parentheses of in/intersects/pmatch is a list item, which
    Falco replaces by a list's items when a list of that name exists. The value
    after any other operator is never a reference.
    """
    tokens = tokenize(condition)
    refs: list[Reference] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if token.kind != "word" or token.text in BOOLEAN_WORDS:
            i += 1
        elif _is_operator(nxt):
            i = _skip_comparison(tokens, i + 1, refs)
        else:
            refs.append(Reference("macro", token))
            i += 1
    return refs


def _skip_comparison(tokens: list[Token], op_index: int, refs: list[Reference]) -> int:
    """Step over an operator and its operand; record list items. Return the next index."""
    op = tokens[op_index].text
    if op == "exists":
        return op_index + 1
    if op not in LIST_OPERATORS:
        return op_index + 2
    i = op_index + 1
    if i >= len(tokens) or tokens[i].text != "(":
        raise SyntaxError(f"expected '(' after {op!r}")
    i += 1
    while i < len(tokens) and tokens[i].text != ")":
        if tokens[i].kind == "word":
            refs.append(Reference("list_item", tokens[i]))
        i += 1
    return i + 1


def expand_list(name: str, lists: Mapping[str, list[str]], seen: tuple = ()) -> list[str]:
    """Items of list `name`, with items that name other lists replaced by their items."""
    if name in seen:
        raise ValueError(f"list cycle: {' -> '.join(seen + (name,))}")
    items: list[str] = []
    for item in lists[name]:
        if item in lists:
            items.extend(expand_list(item, lists, seen + (name,)))
        else:
            items.append(item)
    return items


def expand(condition: str, defs: Definitions, seen: tuple = ()) -> str:
    """Return `condition` in plain filter syntax: macros and lists replaced, the rest untouched.

    A macro reference becomes `(<its expanded condition>)`; a list name inside
    in/intersects/pmatch becomes its items joined by ", ". Only whole tokens are
    replaced, so `container` does not touch `container.id`. Unknown names are
    left as they are, for the compiler (or `unresolved_macros`) to reject.
    """
    out, last = [], 0
    for ref in scan_references(condition):
        name = ref.token.text
        if ref.kind == "macro" and name in defs.macros:
            if name in seen:
                raise ValueError(f"macro cycle: {' -> '.join(seen + (name,))}")
            replacement = "(" + expand(defs.macros[name], defs, seen + (name,)) + ")"
        elif ref.kind == "list_item" and name in defs.lists:
            replacement = ", ".join(expand_list(name, defs.lists))
        else:
            continue
        out.append(condition[last:ref.token.start])
        out.append(replacement)
        last = ref.token.end
    out.append(condition[last:])
    return "".join(out)


def unresolved_macros(condition: str, defs: Definitions) -> set[str]:
    """Macro references in `condition` (and in the macros it uses) that are not defined."""
    missing: set[str] = set()
    for ref in scan_references(expand(condition, defs)):
        if ref.kind == "macro":
            missing.add(ref.token.text)
    return missing


def used_names(condition: str, defs: Definitions) -> set[str]:
    """Every macro and list name that `condition` uses, directly or through other macros."""
    used: set[str] = set()
    pending = [condition]
    while pending:
        for ref in scan_references(pending.pop()):
            name = ref.token.text
            if name in used:
                continue
            if ref.kind == "macro" and name in defs.macros:
                used.add(name)
                pending.append(defs.macros[name])
            elif ref.kind == "list_item" and name in defs.lists:
                used.add(name)
                used.update(n for n in _nested_lists(name, defs.lists))
    return used


def _nested_lists(name: str, lists: Mapping[str, list[str]]) -> Iterable[str]:
    for item in lists[name]:
        if item in lists:
            yield item
            yield from _nested_lists(item, lists)


# ---------------------------------------------------------------------------
# Evaluation of plain filter syntax
# ---------------------------------------------------------------------------


class FilterSyntaxError(SyntaxError):
    pass


class _Parser:
    """Recursive-descent parser for the filter subset our rules use.

    Like the libsinsp in Debian's sysdig, it refuses `and` and `or` mixed at one
    level without parentheses, so a condition that parses here has no
    precedence ambiguity.
    """

    def __init__(self, text: str):
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise FilterSyntaxError("unexpected end of filter")
        self.pos += 1
        return token

    def parse(self) -> tuple:
        node = self.expression()
        if self.peek() is not None:
            raise FilterSyntaxError(f"unexpected {self.peek().text!r}")
        return node

    def expression(self) -> tuple:
        terms, ops = [self.unary()], set()
        while (token := self.peek()) is not None and token.text in ("and", "or"):
            ops.add(self.take().text)
            terms.append(self.unary())
        if len(ops) > 1:
            raise FilterSyntaxError("'and' and 'or' mixed without parentheses")
        return (ops.pop(), terms) if ops else terms[0]

    def unary(self) -> tuple:
        token = self.take()
        if token.text == "not":
            return ("not", self.unary())
        if token.text == "(":
            node = self.expression()
            if self.take().text != ")":
                raise FilterSyntaxError("expected ')'")
            return node
        if token.kind != "word" or token.text in BOOLEAN_WORDS:
            raise FilterSyntaxError(f"unexpected {token.text!r}")
        return self.predicate(token.text)

    def predicate(self, field_name: str) -> tuple:
        op_token = self.peek()
        if not _is_operator(op_token):
            raise FilterSyntaxError(f"{field_name!r} is not followed by an operator (a macro?)")
        op = self.take().text
        if op == "exists":
            return ("cmp", field_name, op, None)
        if op in LIST_OPERATORS:
            return ("cmp", field_name, op, self.value_list())
        return ("cmp", field_name, op, self.value())

    def value(self) -> str:
        token = self.take()
        if token.kind == "string":
            return _unquote(token.text)
        if token.kind in ("word", "op"):
            return token.text
        raise FilterSyntaxError(f"expected a value, got {token.text!r}")

    def value_list(self) -> list[str]:
        if self.take().text != "(":
            raise FilterSyntaxError("expected '(' to open a value list")
        values = []
        while (token := self.peek()) is not None and token.text != ")":
            if token.text == ",":
                self.take()
                continue
            values.append(self.value())
        self.take()
        return values


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def parse_filter(text: str) -> tuple:
    """Parse plain filter text (no macros) into a small tuple tree."""
    return _Parser(text).parse()


def evaluate(node: tuple, fields: Mapping[str, object]) -> bool:
    """Evaluate a tree from `parse_filter` against field values.

    A field missing from `fields` raises KeyError: the caller must describe
    every field the condition reads.
    """
    kind = node[0]
    if kind == "and":
        return all(evaluate(child, fields) for child in node[1])
    if kind == "or":
        return any(evaluate(child, fields) for child in node[1])
    if kind == "not":
        return not evaluate(node[1], fields)
    _, name, op, operand = node
    if name not in fields:
        raise KeyError(f"no value for field {name}")
    return _compare(fields[name], op, operand)


def _compare(actual: object, op: str, operand) -> bool:
    if op == "exists":
        return actual is not None
    if isinstance(actual, int):
        return _compare_number(actual, op, operand)
    text = str(actual)
    string_ops = {
        "=": lambda: text == operand,
        "==": lambda: text == operand,
        "!=": lambda: text != operand,
        "contains": lambda: operand in text,
        "icontains": lambda: operand.lower() in text.lower(),
        "startswith": lambda: text.startswith(operand),
        "endswith": lambda: text.endswith(operand),
        "glob": lambda: fnmatch.fnmatchcase(text, operand),
        "iglob": lambda: fnmatch.fnmatchcase(text.lower(), operand.lower()),
        "in": lambda: text in operand,
        "pmatch": lambda: any(text == p or text.startswith(p.rstrip("/") + "/") for p in operand),
    }
    if op not in string_ops:
        raise FilterSyntaxError(f"operator {op!r} is not supported for strings here")
    return string_ops[op]()


def _compare_number(actual: int, op: str, operand) -> bool:
    if op == "in":
        return actual in [int(v) for v in operand]
    value = int(operand)
    number_ops = {
        "=": actual == value, "==": actual == value, "!=": actual != value,
        "<": actual < value, "<=": actual <= value, ">": actual > value, ">=": actual >= value,
    }
    if op not in number_ops:
        raise FilterSyntaxError(f"operator {op!r} is not supported for numbers here")
    return number_ops[op]


def operators_used(text: str) -> set[str]:
    """Comparison operators appearing in plain filter text."""
    return {t.text for t in tokenize(text) if _is_operator(t)}


# ---------------------------------------------------------------------------
# sysdig: a real libsinsp filter compiler, fed with tiny synthetic captures
# ---------------------------------------------------------------------------
# A capture file is a sequence of blocks: type (u32), total length (u32), body
# padded to 4 bytes, total length again. It starts with a section header block.
# Events are stored in "event v2" blocks: cpu id (u16), then the event header
# (timestamp u64, thread id u64, length u32, type u16, parameter count u32), the
# parameter lengths (u16 each) and the parameter bytes. Type numbers and the
# execve parameter layout are the ones of the libs release that Debian's sysdig
# 0.29 links against; `sysdig -r` reading the events back (tests check it) is
# what confirms them.

_SECTION_HEADER_BLOCK = 0x0A0D0D0A
_SECTION_MAGIC = 0x1A2B3C4D
_EVENT_BLOCK_V2 = 0x216
_GENERIC_ENTER = 0
_EXECVE_ENTER = 292
_EXECVE_EXIT = 293
CONTAINER_ID = "3a5c1f2e9b7d"


def _block(block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    total = 8 + len(body) + 4
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def _event(event_type: int, tid: int, ts: int, params: list[bytes]) -> bytes:
    lengths = b"".join(struct.pack("<H", len(p)) for p in params)
    data = b"".join(params)
    header = struct.pack("<QQIHI", ts, tid, 26 + len(lengths) + len(data), event_type, len(params))
    return _block(_EVENT_BLOCK_V2, struct.pack("<H", 0) + header + lengths + data)


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def _section_header() -> bytes:
    return _block(_SECTION_HEADER_BLOCK, struct.pack("<IHHq", _SECTION_MAGIC, 1, 2, -1))


@dataclass(frozen=True)
class Process:
    """A process start to record: argv as executed, in a container or on the host.

    `exepath` is the file execve ran when it is not argv[0]: a script started
    through its `#!` line (argv[0] is then the interpreter the kernel put there)
    or a program given another argv[0]. The kernel names the process (comm,
    Falco's proc.name) after that file.
    """

    argv: tuple[str, ...]
    tid: int
    in_container: bool = True
    tty: int = 0
    cwd: str = "/"
    exepath: str | None = None

    @property
    def path(self) -> str:
        return self.exepath or self.argv[0]

    @property
    def comm(self) -> str:
        return self.path.rsplit("/", 1)[-1][:15]

    def fields(self) -> dict[str, object]:
        """The Falco fields of the execve exit event, as libsinsp fills them."""
        args = " ".join(self.argv[1:])
        return {
            "evt.num": 2,  # any real event: numbering starts at 1
            "evt.type": "execve",
            "evt.dir": "<",
            "container.id": CONTAINER_ID if self.in_container else "host",
            "proc.name": self.comm,
            "proc.args": args,
            "proc.cmdline": f"{self.comm} {args}".rstrip(),
            "proc.exe": self.argv[0],
            "proc.exepath": self.path,
            "proc.tty": self.tty,
            "proc.cwd": self.cwd,
        }


def _execve_events(proc: Process, ts: int) -> bytes:
    cid = CONTAINER_ID + "0" * 52
    cgroups = _cstr(f"cpuset=/docker/{cid}") + _cstr(f"cpu=/docker/{cid}")
    if not proc.in_container:
        cgroups = _cstr("cpuset=/")
    i64, u64, u32, i32 = (functools.partial(struct.pack, f"<{c}") for c in "qQIi")
    params = [
        i64(0), _cstr(proc.argv[0]), b"".join(_cstr(a) for a in proc.argv[1:]),
        i64(proc.tid), i64(proc.tid), i64(1), _cstr(proc.cwd),
        u64(1024), u64(0), u64(0), u32(0), u32(0), u32(0),
        _cstr(proc.comm), cgroups, _cstr("PATH=/usr/bin:/bin"),
        i32(proc.tty), i64(proc.tid), i32(-1), u32(0),
    ]
    # libsinsp takes proc.exepath from the enter event's filename, proc.exe
    # from the exit event's exe (argv[0]) and proc.name from its comm.
    enter = _event(_EXECVE_ENTER, proc.tid, ts, [_cstr(proc.path)])
    return enter + _event(_EXECVE_EXIT, proc.tid, ts + 1, params)


def write_capture(path: Path, processes: Iterable[Process]) -> Path:
    """Write a capture holding one execve (enter and exit) per process."""
    data = _section_header()
    for n, proc in enumerate(processes):
        data += _execve_events(proc, ts=1_000 + 10 * n)
    path.write_bytes(data)
    return path


def write_minimal_capture(path: Path) -> Path:
    """Write a capture with a single generic event: enough for sysdig to open and read it."""
    params = [struct.pack("<H", 0), struct.pack("<H", 0)]
    path.write_bytes(_section_header() + _event(_GENERIC_ENTER, 1, 1, params))
    return path


def find_sysdig() -> str | None:
    return shutil.which("sysdig")


def run_sysdig(capture: Path, filter_text: str, output_format: str = "%evt.num") -> tuple[int, str]:
    """Run `sysdig -r capture -p output_format filter_text`; return (exit code, stdout+stderr)."""
    sysdig = find_sysdig()
    if sysdig is None:
        raise FileNotFoundError("sysdig is not installed")
    result = subprocess.run(
        [sysdig, "-r", str(capture), "-p", output_format, filter_text],
        capture_output=True, text=True, timeout=120, check=False,
    )
    return result.returncode, result.stdout + result.stderr
