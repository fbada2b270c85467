// MountsAt over mountinfo text written as the kernel writes it.
#include "cli/mount_table.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "tests/support/status_testing.h"
#include "tests/support/temp_dir.h"

namespace ckptfs {
namespace {

using cli::MountEntry;
using cli::MountsAt;

constexpr char kMountinfo[] =
    "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "61 22 0:52 / /mnt/ckpt rw,nosuid,nodev,relatime shared:30 - fuse.ckptfs ckptfs:/srv/a.ckptfs "
    "ro,user_id=0,group_id=0,default_permissions\n"
    "62 61 0:53 / /mnt/ckpt rw,nosuid,nodev,relatime shared:31 master:7 - fuse.ckptfs "
    "ckptfs:/srv/b.ckptfs ro,user_id=0,group_id=0\n"
    "63 22 0:54 / /mnt/with\\040space\\134and\\011tab rw - tmpfs tmpfs rw\n"
    "not a mountinfo line\n"
    "64 22 0:55 / /mnt/no-separator rw tmpfs tmpfs rw\n";

TEST(MountsAt, ListsEveryMountAtThePathTopmostLast) {
  const std::vector<MountEntry> mounts = MountsAt(kMountinfo, "/mnt/ckpt");
  ASSERT_EQ(mounts.size(), 2u);
  EXPECT_EQ(mounts[0].device, "0:52");
  EXPECT_EQ(mounts[1].device, "0:53");
  EXPECT_EQ(mounts[1].fs_type, "fuse.ckptfs");  // Past two optional fields.
  EXPECT_EQ(mounts[1].mount_point, "/mnt/ckpt");
}

TEST(MountsAt, UndoesTheKernelsOctalEscapes) {
  const std::vector<MountEntry> mounts = MountsAt(kMountinfo, "/mnt/with space\\and\ttab");
  ASSERT_EQ(mounts.size(), 1u);
  EXPECT_EQ(mounts[0].fs_type, "tmpfs");
  EXPECT_TRUE(MountsAt(kMountinfo, "/mnt/with\\040space\\134and\\011tab").empty());
}

TEST(MountsAt, NothingForAPathNotMountedOrALineThatDoesNotParse) {
  EXPECT_TRUE(MountsAt(kMountinfo, "/mnt").empty());
  EXPECT_TRUE(MountsAt(kMountinfo, "/mnt/no-separator").empty());
  EXPECT_TRUE(MountsAt("", "/").empty());
  EXPECT_EQ(MountsAt(kMountinfo, "/").size(), 1u);
}

TEST(MountsAt, ABackslashThatIsNoEscapeIsKept) {
  const std::vector<MountEntry> mounts =
      MountsAt("70 22 0:60 / /a\\b\\12 rw - tmpfs tmpfs rw\n", "/a\\b\\12");
  ASSERT_EQ(mounts.size(), 1u);
}

TEST(MountPointsOfType, EachMountPointOfTheTypeOnceInOrder) {
  const std::string mountinfo =
      std::string(kMountinfo) +
      "65 22 0:56 / /mnt/other\\040ckpt rw - fuse.ckptfs ckptfs:/srv/c.ckptfs ro\n"
      "66 22 0:57 / /mnt/sshfs rw - fuse.sshfs host: rw\n";
  EXPECT_EQ(cli::MountPointsOfType(mountinfo, "fuse.ckptfs"),
            (std::vector<std::string>{"/mnt/ckpt", "/mnt/other ckpt"}));
  EXPECT_EQ(cli::MountPointsOfType(mountinfo, "tmpfs"),
            (std::vector<std::string>{"/mnt/with space\\and\ttab"}));
  EXPECT_TRUE(cli::MountPointsOfType(mountinfo, "nfs").empty());
  EXPECT_TRUE(cli::MountPointsOfType("", "fuse.ckptfs").empty());
}

// The temporary directory as realpath() gives it (TMPDIR may lie behind a symlink).
std::string RealPath(const std::string& path) {
  char resolved[PATH_MAX];
  return ::realpath(path.c_str(), resolved) != nullptr ? resolved : "";
}

TEST(ResolveMountpoint, ResolvesTheDirectoryButNotTheLastComponent) {
  testing::TempDir tmp;
  const std::string real = RealPath(tmp.path());
  ASSERT_EQ(::mkdir(tmp.Path("dir").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(tmp.Path("dir/target").c_str(), 0755), 0);
  ASSERT_EQ(::symlink("dir", tmp.Path("link").c_str()), 0);
  ASSERT_EQ(::symlink("target", tmp.Path("dir/mnt").c_str()), 0);

  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string through_link,
                              cli::ResolveMountpoint(tmp.Path("link/mnt")));
  EXPECT_EQ(through_link, real + "/dir/mnt") << "the last component is not followed";
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string trailing,
                              cli::ResolveMountpoint(tmp.Path("dir/target//")));
  EXPECT_EQ(trailing, real + "/dir/target");
  // A last component that does not exist is fine: only the directory must.
  CKPTFS_ASSERT_OK_AND_ASSIGN(std::string missing, cli::ResolveMountpoint(tmp.Path("dir/none")));
  EXPECT_EQ(missing, real + "/dir/none");
}

TEST(ResolveMountpoint, RelativePathsAndTheRoot) {
  testing::TempDir tmp;
  char cwd[PATH_MAX];
  ASSERT_NE(::getcwd(cwd, sizeof cwd), nullptr);
  ASSERT_EQ(::chdir(tmp.path().c_str()), 0);
  Result<std::string> relative = cli::ResolveMountpoint("mnt");
  Result<std::string> root = cli::ResolveMountpoint("/");
  Result<std::string> top = cli::ResolveMountpoint("/mnt");
  ASSERT_EQ(::chdir(cwd), 0);
  CKPTFS_ASSERT_OK(relative.status());
  EXPECT_EQ(*relative, RealPath(tmp.path()) + "/mnt");
  CKPTFS_ASSERT_OK(root.status());
  EXPECT_EQ(*root, "/");
  CKPTFS_ASSERT_OK(top.status());
  EXPECT_EQ(*top, "/mnt");
}

TEST(ResolveMountpoint, AMissingDirectoryIsAnErrorNamingTheMountpoint) {
  Result<std::string> resolved = cli::ResolveMountpoint("/no/such/dir/mnt");
  ASSERT_FALSE(resolved.ok());
  EXPECT_NE(resolved.status().message().find("mountpoint /no/such/dir/mnt"), std::string::npos)
      << resolved.status().ToString();
}

}  // namespace
}  // namespace ckptfs
