"""`saekit hub pull REF OUT` and `saekit hub push FOLDER REPO_ID`: SAEs from and to the Hugging Face Hub.

The token is huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``), never a command-line argument,
which would stay in the shell's history and show in the process list; the endpoint is ``HF_ENDPOINT``'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    hub = sub.add_parser("hub", help="download SAEs from, or publish them to, the Hugging Face Hub")
    commands = hub.add_subparsers(dest="hub_command", required=True)
    pull = commands.add_parser("pull", help="download an SAE or suite and write it as a saekit folder")
    pull.add_argument("ref", help="hf://owner/repo[/folder][@revision] or saelens://RELEASE/SAE_ID")
    pull.add_argument("out", help="output folder: one SAE folder, or a suite folder when REF holds several SAEs")
    pull.set_defaults(func=run_pull)
    push = commands.add_parser("push", help="publish an SAE folder or suite with a generated model card")
    push.add_argument("folder", help="an SAE folder or suite folder saved by saekit")
    push.add_argument("repo_id", help="owner/name of the model repository (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", default=None, help="branch to commit to (default: the default branch)")
    push.set_defaults(func=run_push)


def run_pull(args: argparse.Namespace) -> int:
    from saekit.cli.convert import write_converted
    from saekit.io.hub import download, parse_ref

    write_converted(download(parse_ref(args.ref)), Path(args.out))
    return 0


def run_push(args: argparse.Namespace) -> int:
    from saekit.io.publish import push_to_hub

    published = push_to_hub(args.folder, args.repo_id, private=args.private, revision=args.revision)
    print(f"{len(published.files)} files published to {args.repo_id}: {published.url}")
    return 0
