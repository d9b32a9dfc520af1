"""Prometheus' HTTP API as the dashboard e2e test uses it: readiness, instant queries, series.

A failed query raises with Prometheus' own explanation (the reply body), so a
bad PromQL expression in the dashboard says what is wrong with it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from tests.serve_process import ChildProcess


def http_json(url: str, timeout: float = 5) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as e:  # Prometheus explains a bad query in the body
        raise AssertionError(f"{e}: {e.read().decode(errors='replace')} for {url}") from e


@dataclass
class Prometheus:
    url: str
    process: ChildProcess

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:  # not listening yet
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = http_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert reply["status"] == "success", reply
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def series(self, match: str) -> list[dict[str, str]]:
        reply = http_json(f"{self.url}/api/v1/series?" + urllib.parse.urlencode({"match[]": match}))
        assert reply["status"] == "success", reply
        found: list[dict[str, str]] = reply["data"]
        return found
