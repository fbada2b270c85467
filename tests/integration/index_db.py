"""Read-only queries on a ckptfs index (SQLite), so tests can find chunks and their replicas.

Uses only the columns the schema (docs/INDEX.md, v2) documents: entries(id, parent, name, type,
...), chunks(id, digest BLOB, size), blocks(chunk, digests BLOB), extents(file, offset, chunk),
replicas(chunk, node), nodes(id, name, url), meta(key, value).
"""

import collections
import sqlite3

ROOT_ID = 1

Extent = collections.namedtuple("Extent", "offset size digest nodes")


class IndexDb:
    def __init__(self, path):
        self.path = path
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def meta(self):
        return dict(self.db.execute("SELECT key, value FROM meta"))

    def node_names(self):
        """{node id: node name}."""
        return dict(self.db.execute("SELECT id, name FROM nodes"))

    def entry_id(self, relpath):
        """The entries.id of a path relative to the root ("" is the root)."""
        current = ROOT_ID
        for name in [p for p in relpath.split("/") if p]:
            row = self.db.execute("SELECT id FROM entries WHERE parent = ? AND name = ?",
                                  (current, name)).fetchone()
            if row is None:
                raise KeyError(f"{relpath}: no entry {name!r} under {current}")
            current = row[0]
        return current

    def extents(self, relpath):
        """The file's extents in order, each with its digest (hex) and replica node names."""
        names = self.node_names()
        file_id = self.entry_id(relpath)
        rows = self.db.execute(
            "SELECT e.offset, c.size, c.digest, c.id FROM extents e JOIN chunks c ON c.id = e.chunk"
            " WHERE e.file = ? ORDER BY e.offset", (file_id,)).fetchall()
        result = []
        for offset, size, digest, chunk_id in rows:
            nodes = sorted(names[n] for (n,) in self.db.execute(
                "SELECT node FROM replicas WHERE chunk = ?", (chunk_id,)))
            result.append(Extent(offset, size, bytes(digest).hex(), tuple(nodes)))
        return result

    def chunks(self):
        """Every unique chunk: {hex digest: (size, tuple of replica node names)}."""
        names = self.node_names()
        replicas = collections.defaultdict(list)
        for chunk, node in self.db.execute("SELECT chunk, node FROM replicas"):
            replicas[chunk].append(names[node])
        return {
            bytes(digest).hex(): (size, tuple(sorted(replicas[cid])))
            for cid, digest, size in self.db.execute("SELECT id, digest, size FROM chunks")
        }

    def block_size(self):
        """meta block_size (v2); None for a v1 index."""
        value = self.meta().get("block_size")
        return None if value is None else int(value)

    def blocks(self):
        """{hex chunk digest: [hex digest of each block]} from the blocks table (32 bytes each).
        Every chunk must have a blocks row, and every blocks row a chunk."""
        result = {}
        rows = self.db.execute("SELECT c.digest, b.digests FROM chunks c"
                               " LEFT JOIN blocks b ON b.chunk = c.id").fetchall()
        for digest, blob in rows:
            assert blob is not None, f"chunk {bytes(digest).hex()} has no blocks row"
            blob = bytes(blob)
            assert len(blob) % 32 == 0, f"blocks of {bytes(digest).hex()}: {len(blob)} bytes"
            result[bytes(digest).hex()] = [blob[i:i + 32].hex() for i in range(0, len(blob), 32)]
        stray = self.db.execute(
            "SELECT count(*) FROM blocks WHERE chunk NOT IN (SELECT id FROM chunks)").fetchone()[0]
        assert stray == 0, f"{stray} blocks rows without a chunk"
        return result

    def chunk_columns(self):
        """Column names of the chunks table, in order."""
        return [row[1] for row in self.db.execute("PRAGMA table_info(chunks)")]

    def extent_count(self):
        return self.db.execute("SELECT count(*) FROM extents").fetchone()[0]
