"""A trajectory's conversation: markdown and code highlighted, tool calls and results collapsible,
per-turn rewards, and the final reward with the reasons the env gave (answer extracted, tests).

Two forms: ``response_renderable`` is one Rich renderable (cheap to redraw; the rank screen swaps
pairs on every keypress), and ``Conversation`` is a scrollable widget whose messages can be
focused and copied to the clipboard (``c``) and whose tool blocks collapse.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group, RenderableType
from rich.markdown import Markdown
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Collapsible, Static

from ptgym.types import Trajectory

ROLE_STYLE = {
    "system": "bold magenta",
    "user": "bold cyan",
    "assistant": "bold green",
    "tool": "bold yellow",
}


def content_text(message: dict[str, Any]) -> str:
    """A message's content as text (OpenAI content parts are joined)."""
    content = message.get("content") or ""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", p)) if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def tool_call_title(call: dict[str, Any]) -> str:
    fn = call.get("function", call)
    return f"tool call: {fn.get('name', '?')}" + (f" ({call['id']})" if call.get("id") else "")


def tool_call_body(call: dict[str, Any]) -> Syntax:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return Syntax(args, "text", word_wrap=True)
    code = args.get("code") if isinstance(args, dict) and len(args) == 1 else None
    if isinstance(code, str):  # a python/bash tool: show the code itself, highlighted
        return Syntax(code, "python", word_wrap=True, theme="ansi_dark")
    return Syntax(json.dumps(args, indent=2), "json", word_wrap=True, theme="ansi_dark")


def message_title(message: dict[str, Any]) -> str:
    role = message.get("role", "?")
    if role == "tool":
        return f"tool result ({message.get('tool_call_id') or message.get('name') or '?'})"
    return role


def response_renderable(messages: list[dict[str, Any]]) -> RenderableType:
    """Messages as one renderable: role lines, markdown bodies, tool calls/results as panels."""
    parts: list[RenderableType] = []
    for m in messages:
        role = m.get("role", "?")
        parts.append(Text(message_title(m), style=ROLE_STYLE.get(role, "bold")))
        body = content_text(m)
        if role == "tool":
            parts.append(Panel(Text(body.rstrip()), border_style="yellow", expand=True))
        elif body.strip():
            parts.append(Markdown(body, code_theme="ansi_dark"))
        for call in m.get("tool_calls") or []:
            parts.append(Panel(tool_call_body(call), title=tool_call_title(call), expand=True))
    return Group(*parts)


def outcome_table(traj: Trajectory, advantages: list[float] | None = None) -> Table:
    """The final reward and why: end reason, error, per-turn rewards, env metrics."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("reward", f"{traj.reward:g}")
    end = traj.info.get("end", "terminated" if traj.terminated else "truncated")
    table.add_row("ended", f"{end} (terminated={traj.terminated}, truncated={traj.truncated})")
    if traj.error:
        table.add_row("error", Text(traj.error, style="bold red"))
    table.add_row("turn rewards", ", ".join(f"{r:g}" for r in traj.turn_rewards) or "-")
    if advantages:
        table.add_row("advantages", ", ".join(f"{a:+.3f}" for a in advantages))
    metrics = dict(traj.metrics)
    if "passed" in metrics and "total" in metrics:
        table.add_row("tests", f"{metrics.pop('passed')}/{metrics.pop('total')} passed")
    for key in ("answer", "extracted", "correct"):
        if key in metrics:
            table.add_row(key, str(metrics.pop(key)))
    for key, value in sorted(metrics.items()):
        table.add_row(key, str(value))
    return table


class MessageBlock(Static, can_focus=True):
    """One message (or tool block body); focusable so ``c`` copies it."""

    DEFAULT_CSS = """
    MessageBlock { padding: 0 1; margin: 0 0 1 0; border-left: outer $surface-lighten-2; }
    MessageBlock:focus { border-left: outer $accent; background: $boost; }
    MessageBlock.turn { color: $text-muted; border-left: none; margin: 0 0 1 0; }
    """

    def __init__(self, renderable: RenderableType, text: str, **kwargs: Any):
        super().__init__(renderable, **kwargs)
        self.text = text


class Conversation(VerticalScroll):
    """A trajectory's messages with per-turn rewards and the outcome; ``c`` copies a message."""

    BINDINGS = [Binding("c", "copy", "Copy message")]
    DEFAULT_CSS = """
    Conversation { height: 1fr; }
    Conversation Collapsible { margin: 0 0 1 0; }
    Conversation .outcome { border: round $primary; padding: 0 1; }
    """

    def __init__(self, traj: Trajectory | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._traj = traj
        self._advantages: list[float] | None = None

    def on_mount(self) -> None:
        if self._traj is not None:
            self.show(self._traj, self._advantages)

    def show(self, traj: Trajectory, advantages: list[float] | None = None) -> None:
        self._traj, self._advantages = traj, advantages
        self.remove_children()
        self.mount_all(list(self._blocks(traj, advantages)))

    def _blocks(self, traj: Trajectory, advantages: list[float] | None) -> Any:
        turn = 0
        for m in traj.messages:
            role = m.get("role", "?")
            body = content_text(m)
            if role == "tool":
                inner = MessageBlock(Text(body.rstrip()), body)
                yield Collapsible(inner, title=message_title(m), collapsed=True)
                continue
            label = Text(role, style=ROLE_STYLE.get(role, "bold"))
            markdown = Markdown(body or "_(empty)_", code_theme="ansi_dark")
            yield MessageBlock(Group(label, markdown), body)
            for call in m.get("tool_calls") or []:
                body = json.dumps(call.get("function", call), indent=2)
                inner = MessageBlock(tool_call_body(call), body)
                yield Collapsible(inner, title=tool_call_title(call), collapsed=True)
            if role == "assistant" and turn < len(traj.turns):
                yield MessageBlock(self._turn_line(traj, turn, advantages), "", classes="turn")
                turn += 1
        outcome = Static(outcome_table(traj, advantages), classes="outcome")
        outcome.border_title = "outcome"
        yield outcome

    @staticmethod
    def _turn_line(traj: Trajectory, k: int, advantages: list[float] | None) -> Text:
        t = traj.turns[k]
        line = Text(f"turn {k + 1}: reward {t.reward:g}", style="bold")
        if advantages and k < len(advantages):
            line.append(f" · advantage {advantages[k]:+.3f}")
        line.append(f" · {len(t.completion_ids)} tokens · {t.finish_reason}")
        return line

    def action_copy(self) -> None:
        focused = self.screen.focused
        if isinstance(focused, MessageBlock) and focused.text:
            self.app.copy_to_clipboard(focused.text)
            self.notify(f"copied {len(focused.text)} characters")
        else:
            self.notify("focus a message first (tab), then press c", severity="warning")
