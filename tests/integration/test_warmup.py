"""`ckptfs warmup`: staging a checkpoint's chunks in the cache directory before it is mounted."""

import os
import re

import ckptfs_cli
import source_tree
from nginx_node import settle_chunk_bytes, settle_chunk_gets

SUMMARY = re.compile(r"^warmed (\d+) chunks \(.*\) into (.*): (\d+) fetched(?: \(.*\))?, "
                     r"(\d+) already cached(?:, (\d+) failed)?$")


def _warmup(index, *args, options=None, timeout=300):
    cmd = [ckptfs_cli.ckptfs_bin(), "warmup", index, *args]
    if options:
        cmd += ["-o", ckptfs_cli.format_options(options)]
    return ckptfs_cli.run(cmd, timeout=timeout)


def _summary(result):
    lines = result.stdout.splitlines()
    assert lines, result.describe()
    m = SUMMARY.match(lines[0])
    assert m, result.describe()
    chunks, cache_dir, fetched, cached, failed = m.groups()
    return {"chunks": int(chunks), "cache_dir": cache_dir, "fetched": int(fetched),
            "cached": int(cached), "failed": int(failed or 0)}


def _one_error_line(result):
    assert result.returncode == 1, result.describe()
    lines = result.stderr_lines()
    assert len(lines) == 1 and lines[0].startswith("ckptfs: "), result.describe()
    return lines[0]


def test_a_warmed_checkpoint_mounts_and_reads_with_every_node_down(published, mount, test_dir):
    cache = os.path.join(test_dir, "cache")
    os.makedirs(cache, mode=0o700)
    with published.db() as db:
        chunks = db.chunks()
    result = _warmup(published.index, options={"cache_dir": cache})
    assert result.returncode == 0, result.describe()
    assert _summary(result) == {"chunks": len(chunks), "cache_dir": cache,
                                "fetched": len(chunks), "cached": 0, "failed": 0}
    # Each chunk crossed the network once, whole.
    sent = settle_chunk_bytes(published.nodes)
    assert sent == {digest: size for digest, (size, _) in chunks.items()}

    published.clear_logs()
    again = _warmup(published.index, options={"cache_dir": cache})
    assert again.returncode == 0, again.describe()
    assert _summary(again)["cached"] == len(chunks) and _summary(again)["fetched"] == 0
    assert not any(settle_chunk_gets(published.nodes).values())

    for node in published.nodes:
        node.stop()
    mnt = mount(published.index, cache_dir=cache, timeout=5)
    diff = ckptfs_cli.run(["diff", "-r", published.tree.root, mnt.mountpoint], timeout=300)
    assert diff.returncode == 0, diff.describe()


def test_warmup_of_some_paths_fetches_their_chunks_only(published, test_dir):
    with published.db() as db:
        wanted = {e.digest: e.size for e in db.extents(source_tree.ODD)}
        wanted.update({e.digest: e.size for e in db.extents(source_tree.DUP_A)})
    result = _warmup(published.index, source_tree.ODD, "./" + source_tree.DUP_A,
                     options={"cache_dir": os.path.join(test_dir, "cache")})
    assert result.returncode == 0, result.describe()
    assert _summary(result)["fetched"] == len(wanted)
    assert settle_chunk_bytes(published.nodes) == wanted


def test_a_running_mount_reads_what_a_warmup_fetched_beside_it(published, mount, test_dir):
    cache = os.path.join(test_dir, "cache")
    mnt = mount(published.index, cache_dir=cache, dir_readahead=0)
    result = _warmup(published.index, source_tree.BIG, options={"cache_dir": cache})
    assert result.returncode == 0, result.describe()
    published.clear_logs()
    assert source_tree.sha256_file(mnt.path(source_tree.BIG)) == published.tree.sha256[
        source_tree.BIG]
    assert not any(settle_chunk_gets(published.nodes).values())
    stats = ckptfs_cli.mount_stats(mnt.mountpoint)
    assert stats["store.fetches"] == 0, stats


def test_chunks_no_replica_can_give_are_listed_and_the_rest_is_cached(published, test_dir):
    """Two of the three nodes down: with R=2, the chunks whose replicas are both on them cannot
    be fetched; each is listed, the exit status is 1, and every other chunk is cached."""
    with published.db() as db:
        chunks = db.chunks()
    down = {"n1", "n2"}
    lost = {d for d, (_, nodes) in chunks.items() if set(nodes) <= down}
    assert lost and len(lost) < len(chunks), "the placement left no chunk on n1 and n2 only"
    for node in published.nodes:
        if node.name in down:
            node.stop()
    result = _warmup(published.index, "--jobs", "16",
                     options={"cache_dir": os.path.join(test_dir, "cache"), "timeout": 1},
                     timeout=600)
    assert result.returncode == 1, result.describe()
    assert _summary(result) == {"chunks": len(chunks), "cache_dir": os.path.join(test_dir, "cache"),
                                "fetched": len(chunks) - len(lost), "cached": 0,
                                "failed": len(lost)}
    failed = result.stdout.splitlines()[1:]
    assert len(failed) == min(10, len(lost)), result.describe()
    assert all(line.startswith("failed chunk ") and line[13:77] in lost for line in failed), failed
    errors = [l for l in result.stderr_lines() if not l.startswith("ckptfs: warning: node n")]
    assert len(errors) == 1, result.describe()
    line = errors[0]
    assert line == (f"ckptfs: {len(lost)} chunks could not be fetched; the next warmup or mount "
                    "asks for them again"), line


def test_bad_paths_and_a_cache_too_small_are_one_line_and_fetch_nothing(published, test_dir):
    cache = os.path.join(test_dir, "cache")
    line = _one_error_line(_warmup(published.index, source_tree.ODD, "no/such.bin",
                                   options={"cache_dir": cache}))
    assert line == "ckptfs: the checkpoint has no no/such.bin", line
    line = _one_error_line(_warmup(published.index, options={"cache_dir": cache,
                                                             "cache_size": "64M"}))
    assert "do not fit in the cache's 64.0 MiB (cache_size=)" in line, line
    line = _one_error_line(_warmup(published.index, options={"cache_dir": cache,
                                                             "no_such_option": 1}))
    assert "no_such_option" in line, line
    assert not any(settle_chunk_gets(published.nodes).values())
