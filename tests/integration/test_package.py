"""The Debian package built from the build tree under test: its control fields, its files, and
its mount helper mounting an index the way mount(8) runs it for an fstab entry.

The package is built with cpack from the build directory of $CKPTFS_BIN and unpacked with
dpkg-deb into the run's directory; nothing is installed on the machine.
"""

import gzip
import os
import pwd
import re
import shutil

import pytest

import ckptfs_cli
import source_tree


def _build_dir():
    """The build tree of the binary under test (<build>/cli/ckptfs), so that the sanitizer run
    packages its own build."""
    return os.path.dirname(os.path.dirname(os.path.abspath(ckptfs_cli.ckptfs_bin())))


def _control_fields(deb):
    """The control file's single-line fields, {name: value}, from one `dpkg-deb -f`."""
    result = ckptfs_cli.run(["dpkg-deb", "-f", deb], timeout=30)
    assert result.returncode == 0, result.describe()
    fields = {}
    for line in result.stdout.splitlines():
        if line and not line[0].isspace() and ":" in line:
            name, value = line.split(":", 1)
            fields[name] = value.strip()
    return fields


@pytest.fixture(scope="module")
def package(work_root):
    """(path of the .deb, directory it was unpacked into, its control fields)."""
    build = _build_dir()
    config = os.path.join(build, "CPackConfig.cmake")
    assert os.path.isfile(config), f"{config} missing: configure the build with CMake first"
    out = os.path.join(work_root, "package")
    result = ckptfs_cli.run(["cpack", "--config", config, "-G", "DEB", "-B", out], timeout=300)
    assert result.returncode == 0, result.describe()
    debs = [f for f in os.listdir(out) if f.endswith(".deb")]
    assert len(debs) == 1, f"expected one .deb in {out}, found {debs}"
    deb = os.path.join(out, debs[0])
    root = os.path.join(out, "root")
    result = ckptfs_cli.run(["dpkg-deb", "-x", deb, root], timeout=60)
    assert result.returncode == 0, result.describe()
    return deb, root, _control_fields(deb)


def test_package_is_named_and_versioned_like_the_binary(package):
    deb, root, control = package
    version = ckptfs_cli.run([os.path.join(root, "usr/bin/ckptfs"), "--version"], timeout=30)
    assert version.returncode == 0, version.describe()
    assert control["Package"] == "ckptfs"
    assert control["Version"] == version.stdout.strip()
    arch = ckptfs_cli.run(["dpkg", "--print-architecture"], timeout=30)
    assert arch.returncode == 0, arch.describe()
    assert control["Architecture"] == arch.stdout.strip()
    assert os.path.basename(deb) == f"ckptfs_{version.stdout.strip()}_{arch.stdout.strip()}.deb"


def test_package_depends_on_fuse3_and_every_library_it_links(package):
    _, _, control = package
    depends = {re.sub(r"\s*\(.*\)", "", d).strip() for d in control["Depends"].split(",")}
    assert {"fuse3", "libfuse3-3", "libcurl4", "libsqlite3-0", "libssl3", "libc6"} <= depends


def _gunzip_text(path):
    with gzip.open(path, "rt") as f:
        return f.read()


def test_package_holds_the_binary_the_mount_helper_and_their_man_pages(package):
    _, root, _ = package
    binary = os.path.join(root, "usr/bin/ckptfs")
    assert os.access(binary, os.X_OK)
    helper = os.path.join(root, "usr/sbin/mount.ckptfs")
    assert os.readlink(helper) == "../bin/ckptfs"
    man = _gunzip_text(os.path.join(root, "usr/share/man/man1/ckptfs.1.gz"))
    assert man.startswith(".TH CKPTFS 1"), man[:200]
    assert "mount.ckptfs" in man
    man8 = _gunzip_text(os.path.join(root, "usr/share/man/man8/mount.ckptfs.8.gz"))
    assert man8.startswith(".TH MOUNT.CKPTFS 8"), man8[:200]
    assert "fstab" in man8


def test_package_has_a_copyright_file_with_the_notice_of_the_code_compiled_in(package):
    _, root, _ = package
    with open(os.path.join(root, "usr/share/doc/ckptfs/copyright")) as f:
        copyright_text = f.read()
    assert "the ckptfs developers" in copyright_text
    # CLI11 is header-only, so its code is in the binary and its BSD licence asks for its notice.
    assert "University of Cincinnati" in copyright_text
    assert "Redistributions in binary form must reproduce" in copyright_text


def test_package_changelog_is_for_the_packaged_version(package):
    _, root, control = package
    changelog = _gunzip_text(os.path.join(root, "usr/share/doc/ckptfs/changelog.gz"))
    first = changelog.splitlines()[0]
    assert first.startswith(f"ckptfs ({control['Version']}) "), first


def test_packaged_binary_has_a_read_only_global_offset_table(package):
    _, root, _ = package
    binary = os.path.join(root, "usr/bin/ckptfs")
    dynamic = ckptfs_cli.run(["readelf", "-dW", binary], timeout=30)
    assert dynamic.returncode == 0, dynamic.describe()
    assert re.search(r"\(FLAGS\).*\bBIND_NOW\b|\(BIND_NOW\)", dynamic.stdout), dynamic.stdout
    segments = ckptfs_cli.run(["readelf", "-lW", binary], timeout=30)
    assert segments.returncode == 0, segments.describe()
    assert "GNU_RELRO" in segments.stdout


def _is_sanitizer_build():
    with open(os.path.join(_build_dir(), "CMakeCache.txt")) as cache:
        return "CKPTFS_SANITIZE:BOOL=ON" in cache.read().splitlines()


def test_lintian_finds_no_error_warning_or_info_tag_in_the_package(package):
    deb, _, _ = package
    # A sanitizer build leaves out _FORTIFY_SOURCE on purpose (its checked wrappers would hide
    # calls from the sanitizers; see CMakeLists.txt): that one info tag is expected of it alone.
    expected = {"hardening-no-fortify-functions"} if _is_sanitizer_build() else set()
    suppress = ["--suppress-tags", ",".join(sorted(expected))] if expected else []
    result = ckptfs_cli.run(
        ["lintian", "--display-info", "--fail-on", "error,warning,info", *suppress, deb],
        timeout=300)
    assert result.returncode == 0, result.describe()
    tags = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:", "I:")]
    assert not tags, tags


def test_packaged_mount_helper_mounts_an_index_as_mount8_runs_it(package, published, mount):
    _, root, _ = package
    mnt = mount(published.index, start=False, ro=True, _netdev=True, nofail=True)
    helper = os.path.join(root, "usr/sbin/mount.ckptfs")
    # mount(8) runs "/sbin/mount.TYPE SPEC DIR [-sfnv] -o OPTIONS" for an fstab entry.
    result = ckptfs_cli.run([helper, published.index, mnt.mountpoint, "-n", "-o",
                             ckptfs_cli.format_options(mnt.options)], timeout=60)
    assert result.returncode == 0, result.describe()
    assert ckptfs_cli.mount_fstype(mnt.mountpoint) == "fuse.ckptfs"
    assert mnt.pids(), "no mount.ckptfs daemon found for the mountpoint"
    for rel in ("private.key", "model.ckpt.index"):
        assert source_tree.sha256_file(mnt.path(rel)) == published.tree.sha256[rel]


def _helper_dir(package, parent):
    """A directory in `parent` holding only mount.ckptfs, a copy of the packaged binary (which
    lies in a directory only root may enter), to lay over /usr/sbin: mount(8) looks for helpers
    in /sbin alone."""
    _, root, _ = package
    extra = os.path.join(parent, "sbin")
    os.makedirs(extra)
    os.chmod(extra, 0o755)
    shutil.copy2(os.path.join(root, "usr/bin/ckptfs"), os.path.join(extra, "mount.ckptfs"))
    return extra


def _mount8_script(fstab, mountpoints):
    """A shell script that mounts each of `mountpoints` from the fstab file `fstab` with mount(8),
    reports what it sees, and unmounts them again, also when a step fails."""
    lines = ["set -u", "trap 'for m in " + " ".join(mountpoints) +
             "; do umount -l \"$m\" 2>/dev/null; done' EXIT"]
    for i, mnt in enumerate(mountpoints):
        lines += [
            f"mount -T {fstab} {mnt} || exit 10",
            # Mount options, then the type: the field after the "-" that ends the optional ones.
            f"echo \"mountinfo{i} $(awk '$5 == \"{mnt}\" {{for (i = 7; i < NF; i++) "
            f"if ($i == \"-\") {{print $6, $(i + 1); exit}}}}' /proc/self/mountinfo)\"",
            f"echo \"sha{i} $(sha256sum < {mnt}/private.key | cut -d' ' -f1)\"",
            f"if test -x {mnt}/run.sh; then echo exec{i} yes; else echo exec{i} no; fi",
            f"umount {mnt} || exit 11",
        ]
    return "\n".join(lines) + "\n"


def test_fstab_entries_with_defaults_mount_through_mount8_and_noexec_is_kept(package, published,
                                                                           test_dir):
    """mount(8) hands its helper "rw" for every entry that does not say "ro", so an entry with
    "defaults" must mount (read-only), and a generic flag such as noexec must reach the kernel.
    mount(8) looks for helpers only in /sbin: a private mount namespace lays the packaged helper
    over /usr/sbin there, so the machine's own /sbin is left alone."""
    extra = _helper_dir(package, test_dir)
    mountpoints = [os.path.join(test_dir, name) for name in ("plain", "noexec")]
    cache = os.path.join(test_dir, "cache")
    for path in mountpoints + [cache]:
        os.makedirs(path)
    fstab = os.path.join(test_dir, "fstab")
    with open(fstab, "w") as f:
        f.write("# an fstab of this test's own\n")
        for mnt, options in zip(mountpoints, ("defaults,_netdev", "defaults,noexec,nofail")):
            f.write(f"{published.index} {mnt} ckptfs {options},cache_dir={cache} 0 0\n")
    script = (f"mount -t overlay overlay -o lowerdir={extra}:/usr/sbin /usr/sbin || exit 9\n" +
              _mount8_script(fstab, mountpoints))
    result = ckptfs_cli.run_in_mount_namespace(script, mountpoints)
    assert result.returncode == 0, result.describe()
    seen = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    want_sha = published.tree.sha256["private.key"]
    for i, noexec in enumerate((False, True)):
        flags, fstype = seen[f"mountinfo{i}"].split()
        assert fstype == "fuse.ckptfs", result.describe()
        assert "ro" in flags.split(",") and "rw" not in flags.split(","), flags
        assert ("noexec" in flags.split(",")) == noexec, flags
        assert seen[f"sha{i}"] == want_sha, result.describe()
        assert seen[f"exec{i}"] == ("no" if noexec else "yes"), result.describe()


def test_a_user_mounts_and_unmounts_an_fstab_entry_marked_user(package, published, user_sandbox):
    """fstab's "user" lets any user mount an entry: mount(8), setuid root, checks the entry and
    runs the helper as that user, who then ends the mount with umount(8). The packaged helper
    must take what mount(8) hands it for such an entry ("rw,noexec,nosuid,nodev,user"). Done
    in a private mount namespace with its own /etc/fstab, helper and FUSE device node."""
    box = user_sandbox
    extra = _helper_dir(package, box["base"])
    fstab = os.path.join(box["base"], "fstab")
    with open(fstab, "w") as f:
        # mount(8) clears the helper's environment: without HOME the default cache directory
        # would be nobody's home in the password database, /nonexistent.
        cache = os.path.join(box["home"], "cache")
        f.write(f"{box['index']} {box['mnt']} ckptfs noauto,user,cache_dir={cache} 0 0\n")
    os.chmod(fstab, 0o644)
    mnt = box["mnt"]
    script = "\n".join([
        "set -u",
        f"trap 'umount -l {mnt} 2>/dev/null' EXIT",
        f"mount --bind {fstab} /etc/fstab || exit 9",
        f"mount -t overlay overlay -o lowerdir={extra}:/usr/sbin /usr/sbin || exit 9",
        f"mount --bind {box['fuse']} /dev/fuse || exit 9",
        f"{box['as_user']} mount {mnt} || exit 10",
        f"echo \"mountinfo $(awk '$5 == \"{mnt}\" {{print $6, $NF}}' /proc/self/mountinfo)\"",
        f"echo \"sha $({box['as_user']} sha256sum {mnt}/private.key | cut -d' ' -f1)\"",
        f"{box['as_user']} umount {mnt} || exit 11",
        f"echo \"after $(awk '$5 == \"{mnt}\"' /proc/self/mountinfo | wc -l)\"",
    ]) + "\n"
    result = ckptfs_cli.run_in_mount_namespace(script, [mnt])
    assert result.returncode == 0, result.describe()
    seen = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    flags, super_options = seen["mountinfo"].split()
    assert {"ro", "noexec", "nosuid", "nodev"} <= set(flags.split(",")), result.describe()
    assert f"user_id={pwd.getpwnam('nobody').pw_uid}" in super_options, result.describe()
    assert seen["sha"] == published.tree.sha256["private.key"], result.describe()
    assert seen["after"] == "0", "the user's umount left the mount: " + result.describe()
