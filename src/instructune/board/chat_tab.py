"""The Chat tab: the base model and a tuned run answer the same message side by side, streamed.

Each side is a `chat.ChatSession` (the same prompts and decoding as `instructune chat`) over models
the board keeps loaded; the two answers are generated at once, each in its own thread, and the page
shows both as they grow. Each browser session keeps its own two histories. Leaves out: generation.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from instructune.board.state import Board, guarded
from instructune.generation.chat import ChatSession
from instructune.errors import InstructuneError

_REFRESH_S = 0.15


def _text(content: Any) -> str:
    """A chat widget's message content as text (it may hold a list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_text(part) for part in content)
    return "" if content is None else str(content)


def plain_history(messages: list | None) -> list[dict[str, str]]:
    """The widget's messages as the {"role", "content"} turns a ChatSession keeps.

    Example:
        >>> plain_history([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        [{'role': 'user', 'content': 'hi'}]
    """
    return [{"role": m["role"], "content": _text(m.get("content"))} for m in messages or []
            if isinstance(m, dict) and m.get("role") in ("user", "assistant")]


def stream_replies(sessions: dict[str, ChatSession], message: str):
    """Run every session's reply at once; yield {name: answer so far} until all are done.

    Raises:
        The first error a session raised, once every thread has ended.
    """
    answers = {name: "" for name in sessions}
    errors: list[BaseException] = []

    def run(name: str, session: ChatSession) -> None:
        def add(text: str) -> None:
            answers[name] += text
        try:
            answers[name] = session.reply(message, stream=add)
        except BaseException as error:  # re-raised in the page's thread below
            errors.append(error)

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in sessions.items()]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        yield dict(answers)
        time.sleep(_REFRESH_S)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    yield dict(answers)


def build(board: Board) -> dict[str, Any]:
    """The tab's widgets and events; returns the widgets other tabs update (keyed by name)."""
    import gradio as gr

    with gr.Row():
        base = gr.Textbox("", label="Base model folder (empty: the default model)", elem_id="chat-base", scale=2)
        run = gr.Dropdown(board.runs(finished=True), label="Tuned run", allow_custom_value=True,
                          elem_id="chat-run", scale=2)
        refresh = gr.Button("Refresh runs", size="sm", scale=1)
        max_new = gr.Slider(8, 512, value=128, step=8, label="Longest answer (tokens)", elem_id="chat-max-new", scale=2)
    with gr.Row():
        base_chat = gr.Chatbot(label="Base", elem_id="chat-base-out", height=360)
        tuned_chat = gr.Chatbot(label="Tuned", elem_id="chat-tuned-out", height=360)
    with gr.Row():
        message = gr.Textbox(label="Message", placeholder="Where is my order #48213?", elem_id="chat-message", scale=5)
        send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
        clear = gr.Button("Clear", elem_id="chat-clear", scale=1)
    status = gr.Textbox(label="Status", elem_id="chat-status", interactive=False)

    @guarded(status)
    def on_send(text, base_text, run_choice, max_tokens, base_messages, tuned_messages):
        text = (text or "").strip()
        if not text:
            raise InstructuneError("chat: empty message; type something to send")
        histories = {"base": plain_history(base_messages)}
        models = {"base": board.load_model(board.model_path(base_text))}
        if run_choice:
            histories["tuned"] = plain_history(tuned_messages)
            models["tuned"] = board.load_model(*board.run_model(run_choice))
        sessions = {}
        for name, (model, tokenizer) in models.items():
            sessions[name] = ChatSession(model, tokenizer, max_new_tokens=int(max_tokens))
            sessions[name].history = list(histories[name])
        widgets = {"base": base_chat, "tuned": tuned_chat}
        yield {message: "", status: "answering..."}
        for answers in stream_replies(sessions, text):
            yield {widgets[name]: histories[name] + [{"role": "user", "content": text},
                                                      {"role": "assistant", "content": answer}]
                   for name, answer in answers.items()}
        yield {status: "done", **{widgets[name]: session.history for name, session in sessions.items()}}

    refresh.click(lambda: gr.update(choices=board.runs(finished=True)), None, [run])
    inputs = [message, base, run, max_new, base_chat, tuned_chat]
    outputs = [message, status, base_chat, tuned_chat]
    send.click(on_send, inputs, outputs)
    message.submit(on_send, inputs, outputs)
    clear.click(lambda: ([], [], ""), None, [base_chat, tuned_chat, status])
    return {"run": run, "base": base}
