"""A real `gandeploy serve` process on loopback for tests: started with --port 0, spoken to over HTTP."""

import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

from conftest import ROOT


class Server:
    """`python -m gandeploy serve ... --port 0` in a subprocess; waits until /readyz says ready."""

    def __init__(self, export_dir, *options: str, launcher=(sys.executable, "-m", "gandeploy")):
        self.proc = subprocess.Popen([*launcher, "serve", str(export_dir), "--port", "0", *options],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait(lambda: next((m.group(0) for line in self.lines
                                            if (m := re.search(r"listening on (http://\S+)", line))), None))
        self.url = self.url.removeprefix("listening on ")
        self.address = urlsplit(self.url)
        self._wait(lambda: self.get("/readyz")[0] == 200 or None)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def _wait(self, probe, seconds=60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {''.join(self.lines)}")
            found = probe()
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"server not up after {seconds} s: {''.join(self.lines)}")

    def request(self, method, path, body=None):
        connection = http.client.HTTPConnection(self.address.hostname, self.address.port, timeout=30)
        data = body if body is None or isinstance(body, (bytes, str)) else json.dumps(body)
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = connection.getresponse()
        out = response.status, dict(response.getheaders()), response.read()
        connection.close()
        return out

    def get(self, path):
        return self.request("GET", path)

    def post(self, body):
        return self.request("POST", "/v1/generate", body)

    def metric(self, name, **labels) -> float:
        text = self.get("/metrics")[2].decode()
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = rf"^{re.escape(name)}{re.escape('{' + selector + '}') if labels else ''} (\S+)$"
        found = re.search(pattern, text, re.M)
        return float(found.group(1)) if found else 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
