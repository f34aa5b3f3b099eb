"""Tool calls streamed the way OpenAI streams them: a first delta with the call's id and name,
then its arguments in fragments as the model writes them.

ToolCallStreamer (tool_calls.py) finds where the calls begin; this module scans the call
objects as they grow (`{"name": ..., "arguments": {...}}` in the model's format) and sends the
raw text of the arguments object, so the fragments join into exactly the JSON that the model
wrote and that the final parse reads. A call is opened once its name is complete and is a known
tool and its arguments object has begun (a model that writes the arguments first gets them all
at once when the name arrives). Anything it cannot follow safely (arguments given as a string,
an unknown tool, JSON it cannot scan) stops the incremental path, and the remaining calls go out
whole when the output ends, as before.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from localllm.server.tool_calls import HERMES_MARKER, PYTHON_TAG, ToolCall, ToolCallStreamer, ToolFormat

_ARGUMENT_KEYS = ("arguments", "parameters")
_WHITESPACE = " \t\r\n"


@dataclass
class CallScan:
    """What is known so far of one call object that starts at a '{'."""

    name: str | None = None  # once the "name" string is complete
    args_start: int | None = None  # index of the arguments value's first character
    args_end: int | None = None  # index after the arguments value, once it is complete
    args_is_object: bool = False
    end: int | None = None  # index after the object's closing brace
    broken: bool = False  # not JSON the scan can follow


class CallScanner:
    """Scans one (possibly unfinished) JSON call object that starts at text[start] == '{' for
    its top-level "name" string and the span of its arguments value, nested values skipped by
    depth. `advance` goes on from where the last call stopped, so a long call costs one pass."""

    def __init__(self, start: int) -> None:
        self.scan = CallScan()
        self._i = start + 1
        self._state = "key"  # at depth 1: key | colon | value | after (a value ended: ',' or '}')
        self._depth, self._in_string, self._escaped = 1, False, False
        self._token_start, self._key = 0, None

    def advance(self, text: str) -> CallScan:
        scan = self.scan
        if scan.broken or scan.end is not None:
            return scan
        while self._i < len(text):
            i, self._i = self._i, self._i + 1
            if not self._step(text, i):
                break
        return scan

    def _step(self, text: str, i: int) -> bool:
        """One character; False once the object has ended or cannot be followed."""
        scan, c = self.scan, text[i]
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif c == "\\":
                self._escaped = True
            elif c == '"':
                self._in_string = False
                if self._depth == 1:
                    try:
                        token = json.loads(text[self._token_start : i + 1])
                    except json.JSONDecodeError:
                        scan.broken = True
                        return False
                    self._string_done(token)
            return True
        if c == '"':
            self._in_string, self._token_start = True, i
            if self._depth == 1 and self._state == "value" and self._key in _ARGUMENT_KEYS and scan.args_start is None:
                scan.args_start = i  # a string: not streamed (see the module's note)
            elif self._depth == 1 and self._state not in ("key", "value"):
                scan.broken = True
        elif c in "{[":
            if self._depth == 1:
                if self._state != "value":
                    scan.broken = True
                elif self._key in _ARGUMENT_KEYS and scan.args_start is None:
                    scan.args_start, scan.args_is_object = i, c == "{"
            self._depth += 1
        elif c in "}]":
            self._depth -= 1
            if self._depth == 1:
                if scan.args_start is not None and scan.args_end is None and self._key in _ARGUMENT_KEYS:
                    scan.args_end = i + 1
                self._state = "after"
            elif self._depth == 0:
                if c == "}" and self._state in ("key", "after"):
                    scan.end = i + 1
                else:
                    scan.broken = True
                return False
        elif self._depth > 1 or c in _WHITESPACE:
            pass
        elif c == ":" and self._state == "colon":
            self._state = "value"
        elif c == "," and self._state == "after":
            self._state = "key"
        elif self._state in ("value", "after") and c not in ":,":
            self._state = "after"  # a number, true, false or null
        else:
            scan.broken = True
        return not scan.broken

    def _string_done(self, token) -> None:
        if self._state == "key":
            self._key, self._state = token, "colon"
        else:
            if self._key == "name" and self.scan.name is None:
                self.scan.name = token
            self._state = "after"


def scan_call(text: str, start: int) -> CallScan:
    """What the call object at text[start] == '{' says so far (CallScanner, in one go)."""
    return CallScanner(start).advance(text)


@dataclass
class _OpenCall:
    id: str
    name: str
    sent: int  # text[args_start:sent] has been sent


def _skip(text: str, i: int, chars: str) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


class ToolCallDeltas:
    """Feeds a ToolCallStreamer and turns its calls into OpenAI `delta.tool_calls` entries."""

    def __init__(self, streamer: ToolCallStreamer) -> None:
        self.streamer = streamer
        self.opened: list[_OpenCall] = []
        self.scanners: list[CallScanner] = []  # one per call object found, in text order
        self.stopped = False  # incremental streaming gave up; the rest goes out whole at the end

    def feed(self, delta: str) -> tuple[str, list[dict]]:
        """(content, tool-call deltas) for the next piece of model output."""
        content = self.streamer.feed(delta)
        return content, self._advance()

    def finish(self) -> tuple[str, list[dict], bool]:
        """(content still owed, the last tool-call deltas, whether the output parsed as calls).
        Calls already opened stay sent even when the whole does not parse (cut short by
        max_tokens, as OpenAI's are); their text is then not repeated as content."""
        deltas = self._advance()
        rest, calls = self.streamer.finish()
        if not self.opened:
            return rest, [self._whole(j, c) for j, c in enumerate(calls)], bool(calls)
        # NOTE: calls are in text order, so the first len(opened) are the ones already sent.
        deltas += [self._whole(j, c) for j, c in enumerate(calls) if j >= len(self.opened)]
        return "", deltas, bool(calls)

    @staticmethod
    def _whole(index: int, call: ToolCall) -> dict:
        return {"index": index, "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json}}

    def _object_start(self, pos: int, first: bool) -> int | None:
        """Index of the next call object's '{' from pos; None while unknown; -1 when what follows
        is not a call object this path can follow."""
        s = self.streamer
        text, plan = s.text, s.plan
        if plan.forced is not None:
            if not first:
                return None
            i = _skip(text, 0, _WHITESPACE)
        elif plan.format is ToolFormat.HERMES:
            marker = text.find(HERMES_MARKER, pos)
            if marker < 0:
                return None
            i = _skip(text, marker + len(HERMES_MARKER), _WHITESPACE)
        else:
            i = pos
            if first and text.startswith(PYTHON_TAG, i):
                i += len(PYTHON_TAG)
            i = _skip(text, i, _WHITESPACE + ";")
        if i >= len(text):
            return None
        return i if text[i] == "{" else -1

    def _advance(self) -> list[dict]:
        s = self.streamer
        if self.stopped or not (s.in_call or s.plan.forced is not None):
            return []
        text, out = s.text, []
        while True:
            if not self.scanners or self.scanners[-1].scan.end is not None:
                first = not self.scanners
                start = self._object_start(s.call_start if first else self.scanners[-1].scan.end, first)
                if start is None:
                    break
                if start < 0:
                    self.stopped = True
                    break
                self.scanners.append(CallScanner(start))
            j = len(self.scanners) - 1
            scan = self.scanners[j].advance(text)
            if scan.broken:
                self.stopped = True
                break
            if j == len(self.opened) and not self._open(scan, j, out):
                break
            call = self.opened[j]
            upto = scan.args_end if scan.args_end is not None else len(text)
            if upto > call.sent:
                out.append({"index": j, "function": {"arguments": text[call.sent : upto]}})
                call.sent = upto
            if scan.end is None:
                break
        return out

    def _open(self, scan: CallScan, index: int, out: list[dict]) -> bool:
        """Open call `index` if its name is known and its arguments object has begun."""
        plan = self.streamer.plan
        if scan.name is None or scan.args_start is None:
            # Not yet; a call that ended without either is left to the final parse.
            self.stopped = scan.end is not None
            return False
        if scan.name not in plan.names or (plan.forced and scan.name != plan.forced) or not scan.args_is_object:
            self.stopped = True
            return False
        call = _OpenCall(f"call_{uuid.uuid4().hex[:24]}", scan.name, scan.args_start)
        self.opened.append(call)
        out.append({"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}})
        return True
