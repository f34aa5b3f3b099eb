"""The chat app's modal screens: help, settings, text entry, choices."""
