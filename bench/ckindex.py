"""Reads the chunk map of a ckptfs index (schema v1, docs/INDEX.md) with Python's sqlite3.

The bench needs it to fetch exactly the same chunk objects with curl that a mount would fetch,
from the same nodes. Read-only (`immutable=1`), like the daemon.
"""

import sqlite3
import urllib.parse


class Extent:
    __slots__ = ("offset", "size", "digest", "nodes")

    def __init__(self, offset, size, digest, nodes):
        self.offset = offset
        self.size = size
        self.digest = digest
        self.nodes = nodes

    def path_on_node(self):
        return f"/chunks/{self.digest[:2]}/{self.digest}"


class ChunkMap:
    """Files (path relative to the published root) -> extents in offset order; node urls."""

    def __init__(self, index_path):
        uri = "file:" + urllib.parse.quote(index_path) + "?immutable=1"
        db = sqlite3.connect(uri, uri=True)
        try:
            self.chunk_size = int(_one(db, "SELECT value FROM meta WHERE key='chunk_size'"))
            self.node_urls = {n: u for n, u in db.execute("SELECT name, url FROM nodes")}
            self.files = self._load_files(db)
        finally:
            db.close()

    @staticmethod
    def _load_files(db):
        entries = {i: (p, n, t) for i, p, n, t in
                   db.execute("SELECT id, parent, name, type FROM entries")}

        def path_of(i):
            parts = []
            while i != 1:
                parent, name, _ = entries[i]
                parts.append(name)
                i = parent
            return "/".join(reversed(parts))

        replicas = {}
        for chunk, node in db.execute(
                "SELECT r.chunk, n.name FROM replicas r JOIN nodes n ON n.id = r.node"):
            replicas.setdefault(chunk, []).append(node)
        files = {i: [] for i, (_p, _n, t) in entries.items() if t == 1}
        for file, offset, chunk, size, digest in db.execute(
                "SELECT e.file, e.offset, c.id, c.size, c.digest FROM extents e "
                "JOIN chunks c ON c.id = e.chunk ORDER BY e.file, e.offset"):
            files[file].append(Extent(offset, size, digest.hex(), sorted(replicas[chunk])))
        return {path_of(i): exts for i, exts in files.items()}

    def extents(self, rel_path):
        return self.files[rel_path]


def _one(db, sql):
    row = db.execute(sql).fetchone()
    if row is None:
        raise ValueError(f"index: no row for {sql}")
    return row[0]
