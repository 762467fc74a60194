"""`swarm identity new PATH` and `swarm identity show PATH`."""

from __future__ import annotations

import argparse
import sys

from security import Identity, SecurityError


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "new":
            if args.path.exists() and not args.force:
                print(f"swarm: {args.path} exists (use --force to replace it)", file=sys.stderr)
                return 1
            identity = Identity.generate()
            identity.save(args.path)
        else:
            identity = Identity.load(args.path)
    except (OSError, SecurityError) as error:
        print(f"swarm: {error}", file=sys.stderr)
        return 1
    print(identity.peer_id)
    return 0
