"""tuneforge's web UI (needs the `ui` extra: pip install 'tuneforge[ui]'); see docs/ui.md.

from tuneforge.ui import launch
launch(project_dir=".")          # http://127.0.0.1:7860 — `tuneforge ui` runs the same
"""

from tuneforge.ui.app import build_app, launch, serve

__all__ = ["build_app", "launch", "serve"]
