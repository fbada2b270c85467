"""Nodes and index URLs over https, with certificates of a private certificate authority: every
command checks them against the CAs of `--ca-file FILE` / `-o ca_file=FILE` (the system's
otherwise), and nothing is read from a server it cannot verify."""

import os
import subprocess

import pytest

import ckptfs_cli
import source_tree


def _openssl(*args, cwd):
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr}"


def _make_ca(directory, name):
    """A self-signed CA; returns (certificate, key) paths."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.pem", cwd=directory)
    return os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key")


def _make_server_certificate(directory, ca):
    """A certificate for 127.0.0.1 signed by `ca`; returns (certificate, key) paths."""
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", "/CN=127.0.0.1", "-keyout", "node.key", "-out", "node.csr", cwd=directory)
    with open(os.path.join(directory, "node.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", "node.csr", "-CA", ca[0], "-CAkey", ca[1],
             "-CAcreateserial", "-days", "2", "-extfile", "node.ext", "-out", "node.pem",
             cwd=directory)
    return os.path.join(directory, "node.pem"), os.path.join(directory, "node.key")


@pytest.fixture
def pki(test_dir):
    """{"ca": our CA's certificate, "other_ca": another CA's, "node": (certificate, key)}."""
    directory = os.path.join(test_dir, "pki")
    os.makedirs(directory)
    ca = _make_ca(directory, "ckptfs-test-ca")
    other = _make_ca(directory, "other-ca")
    return {"ca": ca[0], "other_ca": other[0], "node": _make_server_certificate(directory, ca)}


@pytest.fixture
def tls_cluster(nginx_node, pki):
    return [nginx_node(name, tls=pki["node"]) for name in ("n1", "n2", "n3")]


def _tree(test_dir):
    return source_tree.write_two_files(os.path.join(test_dir, "src"), 51)


def test_publish_mount_and_check_over_https_with_a_private_ca(tls_cluster, pki, test_dir, mount):
    src = _tree(test_dir)
    index_url = f"{tls_cluster[0].url}/indexes/model.ckptfs"
    assert index_url.startswith("https://")
    args = ckptfs_cli.publish_args(src, index_url, tls_cluster, store=False, chunk_size="1M")
    published = ckptfs_cli.run(args + ["--ca-file", pki["ca"]], timeout=300)
    assert published.returncode == 0, published.describe()

    mnt = mount(index_url, ca_file=pki["ca"])
    diff = ckptfs_cli.run(["diff", "-r", src, mnt.mountpoint], timeout=120)
    assert diff.returncode == 0, diff.describe()

    checked = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "check", "--verify", index_url,
                              "--ca-file", pki["ca"]])
    assert checked.returncode == 0, checked.describe()
    assert "checked 9 chunks, 18 replicas (GET and SHA-256): 18 ok" in checked.stdout, (
        checked.describe())


@pytest.mark.parametrize("trusting", ["system", "other_ca"])
def test_a_server_whose_certificate_cannot_be_verified_is_refused(
        tls_cluster, pki, test_dir, trusting):
    src = _tree(test_dir)
    index = os.path.join(test_dir, "model.ckptfs")
    ckptfs_cli.publish(src, index, tls_cluster, chunk_size="1M")  # --store: no request sent.
    index_url = f"{tls_cluster[0].url}/model.ckptfs"
    os.replace(index, os.path.join(tls_cluster[0].store_dir, "model.ckptfs"))
    trust = [] if trusting == "system" else ["--ca-file", pki["other_ca"]]
    mount_options = {} if trusting == "system" else {"ca_file": pki["other_ca"]}

    again = ckptfs_cli.run(ckptfs_cli.publish_args(src, os.path.join(test_dir, "again.ckptfs"),
                                                   tls_cluster, store=False) + trust)
    assert again.returncode == 1, again.describe()
    assert len(again.stderr_lines()) == 1 and "SSL certificate problem" in again.stderr, (
        again.describe())

    mountpoint = os.path.join(test_dir, "mnt")
    os.makedirs(mountpoint)
    started = ckptfs_cli.run(ckptfs_cli.mount_args(index_url, mountpoint, mount_options))
    assert started.returncode == 1, started.describe()
    assert index_url in started.stderr and "SSL certificate problem" in started.stderr, (
        started.describe())
    assert not ckptfs_cli.is_mounted(mountpoint)

    checked = ckptfs_cli.run([ckptfs_cli.ckptfs_bin(), "check", index_url] + trust)
    assert checked.returncode == 1, checked.describe()
    assert "SSL certificate problem" in checked.stderr, checked.describe()


def test_a_ca_file_that_holds_no_certificate_stops_the_command_with_one_line(
        tls_cluster, pki, test_dir):
    src = _tree(test_dir)
    not_pem = os.path.join(test_dir, "not-a-ca.pem")
    with open(not_pem, "w") as f:
        f.write("just text\n")
    mountpoint = os.path.join(test_dir, "mnt")
    os.makedirs(mountpoint)
    index_url = f"{tls_cluster[0].url}/model.ckptfs"
    for path, says in ((not_pem, f"{not_pem} holds no PEM certificate"),
                       (not_pem + ".missing", f"{not_pem}.missing: No such file")):
        started = ckptfs_cli.run(ckptfs_cli.mount_args(index_url, mountpoint, {"ca_file": path}))
        assert started.returncode == 1, started.describe()
        assert len(started.stderr_lines()) == 1, started.describe()
        assert started.stderr.startswith("ckptfs: ca_file: "), started.describe()
        assert says in started.stderr, started.describe()
        published = ckptfs_cli.run(ckptfs_cli.publish_args(
            src, os.path.join(test_dir, "x.ckptfs"), tls_cluster, store=False) +
            ["--ca-file", path])
        assert published.returncode == 1, published.describe()
        assert published.stderr.startswith("ckptfs: --ca-file: ") and says in published.stderr, (
            published.describe())
        assert tls_cluster[0].log_lines() == [], "a request was sent"
