"""The chat app's widgets: messages, prompt box, status line, load panel, chat list."""
