"""The terminal chat (`localllm chat`): a Textual app that streams from the engine in-process
or from a running `localllm serve`.

Module map:
  app.py             ChatApp: layout, key bindings, actions; owns one Conversation at a time
  turn.py            one answer: stream deltas into a MessageView, time it, handle Esc and errors
  backend.py         what the app streams from: ChatBackend, Delta, ModelInfo, LoadStep
  engine_backend.py  AsyncLLM in this process (loads behind the UI, reports load steps)
  http_backend.py    OpenAI-compatible /v1/chat/completions over SSE (`--url`)
  conversation.py    the messages of one chat and what goes into the prompt
  settings.py        per-chat sampling settings -> SamplingParams
  store.py           chats in SQLite in the user data directory
  widgets/, screens/ the pieces on screen; styles in assets/chat.tcss
"""
