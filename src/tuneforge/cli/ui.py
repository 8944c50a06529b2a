"""The `tuneforge ui` verb: start the web UI (tuneforge.ui, on gradio) over a project folder.

    tuneforge ui                                           # http://127.0.0.1:7860, this folder as the project
    tuneforge ui --listen 0.0.0.0 --auth me:secret --project ~/llm-work --max_upload_mb 200

Listening beyond this machine without --auth is refused here, before anything heavy is imported (launch()
checks it again for callers of the Python API).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneforge.cli.flags import add_setting_flags, add_verb, run_config_from
from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError, TuneforgeError

LOCAL_ADDRESSES = ("127.0.0.1", "localhost")


def check_listen(listen: str, auth: str | None) -> None:
    """Refuse a non-local address without a 'user:password', and a malformed one."""
    if auth is None:
        if listen not in LOCAL_ADDRESSES:
            raise ConfigError(
                f"--listen {listen} makes the web UI reachable from other machines; add "
                "--auth user:password, or leave --listen at 127.0.0.1"
            )
        return
    user, colon, password = auth.partition(":")
    if not colon or not user or not password:
        raise ConfigError("--auth must be user:password, e.g. --auth me:a-long-password")


def cmd_ui(args: argparse.Namespace) -> int:
    check_listen(args.listen, args.auth)
    if args.port < 1 or args.port > 65_535:
        raise ConfigError(f"--port must be between 1 and 65535; got {args.port}")
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max_upload_mb must be above 0; got {args.max_upload_mb}")
    config = run_config_from(args)
    try:
        from tuneforge.ui import launch
    except ImportError as error:
        if (error.name or "").split(".")[0] == "gradio":
            raise TuneforgeError("the web UI needs: pip install 'tuneforge[ui]'") from None
        raise
    project = Path(args.project).expanduser()
    if not project.exists():  # a new project, or a mistyped path: either way, say where it goes
        print(
            f"new project folder: {project.resolve()} (datasets/, models/, loras/ and runs/ are made in it)"
        )
    launch(
        host=args.listen,
        port=args.port,
        auth=args.auth,
        project_dir=args.project,
        trust_remote_code=config.trust_remote_code,
        max_upload_mb=args.max_upload_mb,
    )
    return 0


def add_ui_commands(subparsers) -> None:
    """Register `ui` on the main parser's sub-parsers."""
    ui = add_verb(
        subparsers, "ui", help="Start the web UI: data, training, comparison and generation in a browser."
    )
    ui.add_argument(
        "--listen",
        default="127.0.0.1",
        help="Address to serve on; anything but 127.0.0.1 or localhost needs --auth (default: 127.0.0.1).",
    )
    ui.add_argument("--port", type=int, default=7860, help="Port to serve on (default: 7860).")
    ui.add_argument(
        "--auth", default=None, metavar="USER:PASSWORD", help="Ask for this user name and password."
    )
    ui.add_argument(
        "--project",
        default=".",
        help="Project folder whose data and runs the UI reads and writes (default: the current folder).",
    )
    ui.add_argument(
        "--max-upload-mb",
        "--max_upload_mb",
        dest="max_upload_mb",
        type=int,
        default=50,
        help="Largest data file the UI accepts, in MB (default: 50).",
    )
    add_setting_flags(ui, RunConfig, ["trust_remote_code"])
