"""``python -m benchmarks.peers.torchserve setup|start|stop|status|clean``."""

from __future__ import annotations

import argparse

from benchmarks.peers.torchserve import peer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.torchserve")
    parser.add_argument("action", choices=("setup", "start", "stop", "status", "clean"))
    args = parser.parse_args()
    if args.action == "setup":
        peer.setup()
    elif args.action == "start":
        ends = peer.start()
        print(f"grpc=127.0.0.1:{ends.grpc_port} management={ends.management_port} pid={ends.pid}")
    elif args.action == "stop":
        peer.stop()
    elif args.action == "status":
        pid = peer.running_pid()
        print(f"running, pid {pid}" if pid else "not running")
    else:
        peer.clean()


if __name__ == "__main__":
    main()
