"""``fedvid deploy certs``: CA, SuperLink TLS certificate and SuperNode key pairs (docs/deployment.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.federation.security import CredentialsError, Layout, load_ca, make_credentials


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedvid deploy", description="Secure deployment tools (docs/deployment.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    certs = sub.add_parser(
        "certs",
        help="CA, SuperLink TLS certificate and SuperNode key pairs",
        description="Make a CA, a SuperLink TLS certificate for --host names/IPs, and one SuperNode "
        "authentication key pair per --supernode, under OUT (private keys 0600).",
    )
    certs.add_argument("out", type=Path, help="output directory")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        help="a host name or IP SuperNodes use to reach the SuperLink (repeatable)",
    )
    certs.add_argument(
        "--supernode",
        action="append",
        default=[],
        metavar="NAME",
        help="a SuperNode (institution) to make a key pair for (repeatable)",
    )
    certs.add_argument("--ca-cert", type=Path, help="sign with this existing CA certificate (PEM) instead of a new CA")
    certs.add_argument("--ca-key", type=Path, help="the existing CA's unencrypted PEM private key")
    certs.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    certs.add_argument("--overwrite", action="store_true", help="replace existing files (key rotation)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.ca_cert is None) != (args.ca_key is None):
        raise SystemExit("fedvid deploy certs: give both --ca-cert and --ca-key, or neither (a new CA is made)")
    try:
        ca = load_ca(args.ca_cert, args.ca_key) if args.ca_cert else None
        written = make_credentials(args.out, args.host, args.supernode, ca=ca, days=args.days, overwrite=args.overwrite)
    except CredentialsError as e:
        raise SystemExit(f"fedvid deploy certs: {e}") from None
    for path, mode in sorted(written.items()):
        print(f"{mode:04o}  {path}")
    layout = Layout(args.out)
    if args.supernode:
        print("\nRegister each SuperNode's key on the SuperLink (flwr configured for it), e.g.:")
        for node in args.supernode:
            print(f"  flwr supernode register {layout.registered_key(node)} --name {node}")
    return 0
