"""``ftp-serve``: the CPU server (:mod:`ftp_serving.server`) in the foreground.

    ftp-serve --base-model FOLDER --base-name NAME --adapters ROOT [--host 127.0.0.1] [--port 8100]
              [--api-key-env NAME] [--max-loras 8] [--max-batch 64] [--threads N]

The API key is read from the environment variable ``--api-key-env`` names, never from the
command line (where ``ps`` would show it); a host other than loopback needs one.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ftp-serve", description="Serve the base model and its LoRA adapters.")
    parser.add_argument("--base-model", required=True, help="the base model's folder")
    parser.add_argument("--base-name", required=True, help="the model name the base is served under")
    parser.add_argument("--adapters", required=True, help="the adapters root: a folder or an fsspec URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--api-key-env", metavar="NAME", help="the environment variable holding the API key")
    parser.add_argument("--max-loras", type=int, default=8, help="adapters resident at once")
    parser.add_argument("--max-batch", type=int, default=64, help="requests decoded together")
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads")
    parser.add_argument("--cache-dir", default=None, help="where adapters of a remote root are copied")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            sys.exit(f"ftp-serve: the environment variable {args.api_key_env} is unset or empty.")
    if not is_loopback(args.host) and not api_key:
        sys.exit(f"ftp-serve: serving on {args.host}, beyond this machine, needs an API key (--api-key-env).")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from ftp_serving.generation import Engine
    from ftp_serving.server import create_app

    engine = Engine(
        args.base_model,
        args.base_name,
        args.adapters,
        max_loras=args.max_loras,
        max_batch=args.max_batch,
        threads=args.threads,
        cache_dir=args.cache_dir,
    )
    try:
        uvicorn.run(create_app(engine, api_key=api_key), host=args.host, port=args.port, log_level="info")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
