"""A real nginx process serving one ckptfs node on 127.0.0.1 (or ::1), for integration tests.

Each node owns a prefix directory:
    <dir>/nginx.conf   generated configuration
    <dir>/www/         document root; chunk objects live at www/chunks/<hh>/<hex> (the --store dir)
    <dir>/tmp/         nginx's temporary files (client bodies of PUTs and friends)
    <dir>/access.log   one line per request: "$request_method $uri $status $body_bytes_sent"
    <dir>/error.log    nginx's own diagnostics, shown when the node fails to start

nginx runs in the foreground with a single process (`daemon off; master_process off;`), so the
Popen handle is the server itself: SIGTERM stops it, SIGKILL is the fallback. The port is chosen
once and kept across stop()/start(), because the index records the node's URL.
"""

import collections
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time

NGINX = "/usr/sbin/nginx"

_LOG_LINE = re.compile(r"^(\S+) (\S+) (\d{3}) (\d+)$")
_CHUNK_URI = re.compile(r"^/chunks/([0-9a-f]{2})/([0-9a-f]{64})$")

_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    log_format ckptfs_it '$request_method $uri $status $body_bytes_sent';
    access_log {dir}/access.log ckptfs_it;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    keepalive_timeout 60s;

    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    server {{
        listen {listen}:{port}{ssl};
        {certificate}
        server_name localhost;
        {limit_rate}
        {authorization}
        root {dir}/www;
        client_max_body_size 0;

        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""


def _die_with_parent():
    # Runs in the child before exec: if the test process is killed outright, nginx goes too.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host="127.0.0.1"):
    """Returns a TCP port on `host` (127.0.0.1 or ::1) that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(port, timeout=0.5, host="127.0.0.1"):
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_nginx():
    """Raises a clear error when the nginx binary the tests need is missing."""
    if not os.access(NGINX, os.X_OK):
        raise RuntimeError(
            f"{NGINX} not found: the integration tests need a real nginx "
            "(apt-get install nginx-light, or run scripts/install-deps.sh)")


class NginxNode:
    """One nginx node. Not thread safe: drive it from the test's thread."""

    def __init__(self, name, directory, port=None, limit_rate=None, authorization=None,
                 tls=None, host="127.0.0.1"):
        """limit_rate (nginx syntax, "16m"): caps what each connection is sent per second, like a
        store that limits every connection, or a link with a long round trip.
        authorization ("Bearer TOKEN"): every request without exactly this Authorization header
        is answered 401, as a private store does.
        tls ((certificate file, key file), PEM): serves https on the port instead of http.
        host: the loopback address it listens on, 127.0.0.1 or ::1."""
        require_nginx()
        self.name = name
        self.dir = os.path.abspath(directory)
        self.host = host
        self.port = port or free_port(host)
        self.proc = None
        self.limit_rate = limit_rate
        self.authorization = authorization
        self.tls = tls
        for sub in ("www", "tmp"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self._write_config()
        open(self.access_log, "a").close()

    def _write_config(self):
        authorization = ""
        if self.authorization:
            assert '"' not in self.authorization and "\\" not in self.authorization
            authorization = (f'if ($http_authorization != "{self.authorization}") '
                             "{ return 401; }")
        certificate = ""
        if self.tls:
            certificate = f"ssl_certificate {self.tls[0]}; ssl_certificate_key {self.tls[1]};"
        with open(self.conf_path, "w") as f:
            f.write(_CONFIG.format(
                dir=self.dir, port=self.port, authorization=authorization,
                listen=f"[{self.host}]" if ":" in self.host else self.host,
                ssl=" ssl" if self.tls else "", certificate=certificate,
                limit_rate=f"limit_rate {self.limit_rate};" if self.limit_rate else ""))

    def require_authorization(self, authorization):
        """Restarts the node (same port, same files) wanting `authorization` from now on."""
        self.stop()
        self.authorization = authorization
        self._write_config()
        self.start()

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def store_dir(self):
        """The directory nginx serves at `url`; what `ckptfs publish --store` writes into."""
        return os.path.join(self.dir, "www")

    @property
    def conf_path(self):
        return os.path.join(self.dir, "nginx.conf")

    @property
    def access_log(self):
        return os.path.join(self.dir, "access.log")

    @property
    def error_log(self):
        return os.path.join(self.dir, "error.log")

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=10.0):
        """Starts nginx and returns once the port accepts connections."""
        if self.running:
            return
        with open(os.path.join(self.dir, "nginx.stderr"), "ab") as err:
            self.proc = subprocess.Popen(
                [NGINX, "-p", self.dir + "/", "-c", self.conf_path, "-e", self.error_log],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nginx node {self.name} exited with {self.proc.returncode}:\n"
                    f"{self._diagnostics()}")
            if port_accepts(self.port, host=self.host):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"nginx node {self.name} did not listen on {self.port} within {timeout}s:\n"
            f"{self._diagnostics()}")

    def freeze(self):
        """Stops nginx in its tracks (SIGSTOP), like a server that hangs: the kernel still accepts
        connections and requests on its port, but nothing answers them until thaw()."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self):
        """Lets a frozen nginx run again (SIGCONT)."""
        if self.running:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout=10.0):
        """Stops nginx (SIGTERM, then SIGKILL), frozen or not; afterwards the port refuses
        connections."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.thaw()  # A stopped process would leave SIGTERM pending.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.proc = None
        deadline = time.monotonic() + timeout
        while port_accepts(self.port, host=self.host):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.port} of node {self.name} still accepts after stop")
            time.sleep(0.02)

    def log_lines(self):
        """The access log as (method, uri, status, body_bytes_sent) tuples."""
        entries = []
        with open(self.access_log) as f:
            for line in f:
                m = _LOG_LINE.match(line.strip())
                if m:
                    entries.append((m.group(1), m.group(2), int(m.group(3)), int(m.group(4))))
        return entries

    def chunk_gets(self):
        """Successful GETs of whole chunk objects: a list of (hex digest, body bytes sent)."""
        return self._chunk_responses(200)

    def range_gets(self):
        """Successful Range GETs of chunk objects (some blocks): (hex digest, body bytes sent)."""
        return self._chunk_responses(206)

    def _chunk_responses(self, wanted_status):
        gets = []
        for method, uri, status, sent in self.log_lines():
            m = _CHUNK_URI.match(uri)
            if method == "GET" and status == wanted_status and m:
                gets.append((m.group(2), sent))
        return gets

    def clear_log(self):
        """Empties the access log. nginx appends (O_APPEND), so truncating in place is safe."""
        with open(self.access_log, "w"):
            pass

    def objects(self):
        """The chunk objects in the store: {hex digest: path}."""
        found = {}
        root = os.path.join(self.store_dir, "chunks")
        if not os.path.isdir(root):
            return found
        for hh in os.listdir(root):
            sub = os.path.join(root, hh)
            for name in os.listdir(sub):
                found[name] = os.path.join(sub, name)
        return found

    def object_path(self, hex_digest):
        return os.path.join(self.store_dir, "chunks", hex_digest[:2], hex_digest)

    def wipe_store(self):
        """Removes everything the node serves."""
        shutil.rmtree(self.store_dir, ignore_errors=True)
        os.makedirs(self.store_dir, exist_ok=True)

    def _diagnostics(self):
        parts = []
        for path in (self.error_log, os.path.join(self.dir, "nginx.stderr")):
            try:
                with open(path, errors="replace") as f:
                    parts.append(f"--- {path}\n" + f.read()[-4000:])
            except OSError:
                pass
        return "\n".join(parts)

    def __repr__(self):
        return f"NginxNode({self.name}, {self.url}, running={self.running})"


def settle_range_gets(nodes):
    """Range GETs per node. Call settle_chunk_gets first: this does not wait for the logs to
    go quiet."""
    return {node.name: node.range_gets() for node in nodes}


def settle_chunk_bytes(nodes):
    """Body bytes sent of each chunk object, whole and Range GETs together, once the logs are
    quiet: {hex digest: bytes}. A chunk fetched once, in one GET or as parallel parts (a lone
    fetch), shows exactly its size."""
    settle_chunk_gets(nodes)
    sent = collections.Counter()
    for node in nodes:
        for digest, n in node.chunk_gets() + node.range_gets():
            sent[digest] += n
    return sent


def settle_chunk_gets(nodes, quiet=0.7, limit=10.0):
    """Chunk GETs per node once the access logs stopped growing for `quiet` seconds.

    nginx logs a request when it completes, and background readahead may still be running when a
    read returns; waiting for a quiet period catches both.
    """
    def snapshot():
        return {node.name: (node.chunk_gets(), node.range_gets()) for node in nodes}

    last = snapshot()
    stable_since = time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = snapshot()
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            break
    return {name: whole for name, (whole, _) in last.items()}
