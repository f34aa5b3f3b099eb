"""Errors of the model store and of downloads. Each is one line naming the repo or file and the
problem; all are LocalLLMError, so every front end prints them without a traceback."""

from __future__ import annotations

from localllm.errors import LocalLLMError


class StoreError(LocalLLMError):
    """A store entry or manifest that cannot be trusted, or a name that would leave the store."""

    def __init__(self, where: str, problem: str, hint: str = "") -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}" + (f"; {hint}" if hint else ""))


class HubAccessError(LocalLLMError):
    """The Hub refused us a repository: gated without access, private, or a bad token."""

    def __init__(self, repo: str, problem: str) -> None:
        self.repo = repo
        super().__init__(f"{repo}: {problem}")


class DownloadError(LocalLLMError):
    """The Hub could not be reached, answered wrongly, or sent a file that failed its check."""


class HubUnreachableError(DownloadError):
    """No answer from the Hub: offline mode, no network, a connection that broke."""


class OfflineError(HubUnreachableError):
    """Offline (HF_HUB_OFFLINE=1) and what was asked for is not in the store."""
