"""Launch the real page on a free port for end-to-end tests (gradio_client, Chromium)."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "screenshots"
LIBRARY_ACTIONS = ("library_list", "style_card", "atlas", "recommend", "upload", "edit_style",
                   "remove_style", "about")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_actions(service, actions=LIBRARY_ACTIONS) -> list[str]:
    """Service actions the page needs that this checkout does not have yet."""
    return [a for a in actions if not hasattr(service, a)]


@contextmanager
def served(service, outputs_dir: Path):
    """The page, launched in this process on a free port; yields its URL."""
    from app.web import serve

    demo = serve(service, "127.0.0.1", free_port(), outputs_dir, prevent_thread_lock=True,
                 quiet=True)
    try:
        yield demo.local_url.rstrip("/")
    finally:
        demo.close()
