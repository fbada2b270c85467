"""nginx nodes on 127.0.0.1 for the bench: the three ckptfs chunk nodes and the plain-tree node.

Each node owns a directory with its generated nginx.conf, access.log and error.log. nginx runs in
the foreground (`daemon off`) with a master and `worker_processes auto`, so the Popen handle is
the master; SIGTERM stops it and its workers, whose pids are remembered so that none outlives the
bench even if the master is killed. Access logs record `$body_bytes_sent`, which is how the bench
counts the bytes each system pulled from the network.
"""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from common import MiB, MeasureFailed, children_of, terminate_pid, wait_pid_gone
from source import write_random

NGINX = "/usr/sbin/nginx"

_CONFIG = """\
daemon off;
worker_processes auto;{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    log_format bench '$request_method $uri $status $body_bytes_sent "$http_range"';
    access_log {dir}/access.log bench;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 100000;

    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    server {{
        listen 127.0.0.1:{port};{tls}
        server_name localhost;{limit}
        root {root};
        location / {{
            autoindex on;{put}
        }}
    }}
}}
"""

# What `ckptfs publish` without --store needs: WebDAV PUT into the root, any body size, by
# workers that may write there (the bench runs as root and makes the root).
_PUT = """
            dav_methods PUT DELETE;
            create_full_put_path on;
            client_max_body_size 0;"""

_LOG_LINE = re.compile(r'^(\S+) (\S+) (\d{3}) (\d+) "(.*)"$')


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class NginxNode:
    """One nginx serving `root` on 127.0.0.1:port. Drive it from the main thread only."""

    def __init__(self, name, directory, root, accept_put=False, tls=None):
        """tls ((certificate file, key file), PEM): also serves the root over https, on
        tls_port."""
        self.name = name
        self.dir = os.path.abspath(directory)
        self.root = os.path.abspath(root)
        self.port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.proc = None
        self.worker_pids = []
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        os.makedirs(self.root, exist_ok=True)
        self.accept_put = accept_put
        self._write_config(None)
        open(self.access_log, "w").close()

    def _write_config(self, limit_rate):
        with open(self.conf_path, "w") as f:
            tls = ""
            if self.tls:
                tls = (f"\n        listen 127.0.0.1:{self.tls_port} ssl;"
                       f"\n        ssl_certificate {self.tls[0]};"
                       f"\n        ssl_certificate_key {self.tls[1]};")
            f.write(_CONFIG.format(dir=self.dir, port=self.port, root=self.root, tls=tls,
                                   put=_PUT if self.accept_put else "",
                                   user="\nuser root;" if self.accept_put else "",
                                   limit=f"\n        limit_rate {limit_rate};" if limit_rate
                                   else ""))

    def set_limit_rate(self, limit_rate):
        """Caps what each new connection is sent per second (nginx syntax, "1m"; None: no cap),
        like a node with a failing disk or a congested link: rewrites the config and reloads
        nginx, whose new workers take the connections made from then on."""
        self._write_config(limit_rate)
        old = set(children_of(self.proc.pid))
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            workers = set(children_of(self.proc.pid))
            if workers and not workers & old:
                self.worker_pids = sorted(set(self.worker_pids) | workers)
                return
            time.sleep(0.05)
        raise MeasureFailed(f"nginx {self.name} did not reload its configuration")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def https_url(self):
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def conf_path(self):
        return os.path.join(self.dir, "nginx.conf")

    @property
    def access_log(self):
        return os.path.join(self.dir, "access.log")

    def start(self, timeout=15.0):
        stderr = open(os.path.join(self.dir, "nginx.stderr"), "ab")
        self.proc = subprocess.Popen(
            [NGINX, "-p", self.dir + "/", "-c", self.conf_path, "-e",
             os.path.join(self.dir, "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True)
        stderr.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MeasureFailed(f"nginx {self.name} exited {self.proc.returncode}; see "
                                    f"{self.dir}/error.log and nginx.stderr")
            if _accepts(self.port):
                self.worker_pids = children_of(self.proc.pid)
                return
            time.sleep(0.05)
        self.stop()
        raise MeasureFailed(f"nginx {self.name} did not listen on port {self.port}")

    def stop(self):
        if self.proc is None:
            return
        self.worker_pids = sorted(set(self.worker_pids + children_of(self.proc.pid)))
        terminate_pid(self.proc.pid, timeout=10)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for pid in self.worker_pids:  # Normally gone with the master; never left behind.
            if not wait_pid_gone(pid, 2):
                terminate_pid(pid, timeout=2)
        self.proc = None

    def clear_log(self):
        """Empties the access log; nginx appends with O_APPEND, so truncating in place is safe."""
        open(self.access_log, "w").close()

    def log_entries(self):
        """(method, uri, status, body_bytes_sent, range) per logged request."""
        out = []
        with open(self.access_log, errors="replace") as f:
            for line in f:
                m = _LOG_LINE.match(line.rstrip("\n"))
                if m:
                    out.append((m.group(1), m.group(2), int(m.group(3)), int(m.group(4)),
                                m.group(5)))
        return out


def clear_logs(nodes):
    for node in nodes:
        node.clear_log()


def settle_logs(nodes, quiet=0.6, limit=20.0):
    """Waits until no node's access log has grown for `quiet` seconds (at most `limit`).

    nginx logs a request when it completes and readers may still be fetching in the background
    when a read returns, so bytes are counted only once the logs are quiet.
    """
    def sizes():
        return tuple(os.path.getsize(n.access_log) for n in nodes)

    last, since = sizes(), time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sizes()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def traffic(nodes):
    """(GET requests, body bytes sent) summed over the nodes' access logs."""
    gets = sent = 0
    for node in nodes:
        for method, _uri, _status, nbytes, _range in node.log_entries():
            if method == "GET":
                gets += 1
                sent += nbytes
    return gets, sent


def publish_argv(binary, src, index, nodes, chunk_size, replicas=2):
    """`ckptfs publish` of `src` into `index`, each node's objects written into its root."""
    argv = [binary, "publish", src, "-o", index, "--replicas", str(replicas),
            "--chunk-size", chunk_size]
    for n in nodes:
        argv += ["--node", f"{n.name}={n.url}", "--store", f"{n.name}={n.root}"]
    return argv


def scratch_with_nodes(workdir, cleanup, size_mib, accept_put=False):
    """Makes `workdir` afresh with src/big.bin of `size_mib` MiB of random bytes, and starts three
    nginx nodes n0, n1, n2 serving workdir/nI/www; `cleanup` stops them and removes `workdir`.
    Returns (the src directory, the nodes)."""
    shutil.rmtree(workdir, ignore_errors=True)
    cleanup.push("scratch", lambda: shutil.rmtree(workdir, ignore_errors=True))
    src = os.path.join(workdir, "src")
    os.makedirs(src)
    with open(os.path.join(src, "big.bin"), "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
    nodes = []
    for i in range(3):
        node = NginxNode(f"n{i}", os.path.join(workdir, f"n{i}"),
                         os.path.join(workdir, f"n{i}", "www"), accept_put=accept_put)
        node.start()
        cleanup.push(f"nginx {node.name}", node.stop)
        nodes.append(node)
    return src, nodes


def scratch_dir(prefix):
    """A new directory under /var/tmp that nginx's workers (an unprivileged user) can serve from."""
    work = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    os.chmod(work, 0o755)
    return work


def publish_one_file(work, binary, rel_path, size, seed, nodes, tls=None):
    """Writes work/src/rel_path (`size` random bytes from `seed`), starts three nginx nodes n0..n2
    serving work/nodeI/www (each appended to `nodes` once started, for the caller to stop, also
    on failure), and publishes work/src to them (R=2, 4 MiB chunks, --store). Returns the index
    path, work/model.ckptfs."""
    write_random(os.path.join(work, "src", rel_path), size, random.Random(seed))
    for i in range(3):
        node = NginxNode(f"n{i}", os.path.join(work, f"node{i}"),
                         os.path.join(work, f"node{i}", "www"), tls=tls)
        node.start()
        nodes.append(node)
    index = os.path.join(work, "model.ckptfs")
    subprocess.run(publish_argv(binary, os.path.join(work, "src"), index, nodes, "4M"),
                   check=True, stdout=subprocess.DEVNULL)
    return index
